"""LRScheduler: warm-ups, named schedules sized from the fit, accumulation, groups, torch factories, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner, save_checkpoint
from fitorch.callbacks import LRScheduler
from fitorch.callbacks.lr_scheduler import SCHEDULES

BASE = 0.1


class StepRates(Callback):
    """The rate of every real optimizer step, read just before the step uses it."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.batch_rates: list[float] = []

    def on_train_batch_begin(self, batch, logs):
        self.batch_rates.append(self.learner.optimizer.param_groups[0]["lr"])

    def on_before_optimizer_step(self, optimizer):
        self.rates.append(optimizer.param_groups[0]["lr"])


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epoch:
            self.learner.stop_training = True


def fit(schedule, *, n=40, batch_size=4, epochs=3, accum=None, optimizer="sgd", extra=(), learner=None, **kwargs):
    x, y = make_classification(n=n)
    rates = StepRates()
    learner = learner or Learner(loss="cross_entropy", optimizer=optimizer, lr=BASE, grad_accum_steps=accum, verbose=0)
    history = learner.fit(
        make_mlp(), (x, y), epochs=epochs, batch_size=batch_size, callbacks=[schedule, *extra, rates], **kwargs
    )
    return rates, history, learner


def cosine(t, span):
    return 0.5 * (1 + math.cos(math.pi * t / (span - 1)))


@pytest.mark.parametrize(
    ("mode", "warm"),
    [
        ("linear", lambda s: s / 10),
        ("exponential", lambda s: 0.01 ** (1 - s / 10)),
        ("constant", lambda s: 0.1),
    ],
)
def test_step_warmup_then_cosine_to_zero_at_the_last_step(mode, warm):
    recorder, _, _ = fit(LRScheduler("cosine", interval="step", warmup=10, warmup_mode=mode))  # 10 batches x 3 epochs
    rates = recorder.rates
    expected = [BASE * warm(s) for s in range(10)] + [BASE * cosine(t, 20) for t in range(20)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[10] == pytest.approx(BASE) and rates[-1] == pytest.approx(0.0, abs=1e-15)
    if mode == "linear":
        assert all(b - a == pytest.approx(BASE / 10) for a, b in zip(rates[:11], rates[1:11]))


def test_with_accumulation_the_schedule_advances_once_per_real_step():
    # 9 micro-batches per epoch, 2 per step: ceil(9 / 2) = 5 steps per epoch (the last one short), 15 in all.
    recorder, _, _ = fit(LRScheduler("cosine", interval="step", warmup=3), n=36, accum=2)
    expected = [BASE * s / 3 for s in range(3)] + [BASE * cosine(t, 12) for t in range(12)]
    assert recorder.rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Both micro-batches of a window see the window's rate; the short last window has one.
    per_batch = [rate for rate in expected[:5] for _ in (0, 1)][:9]
    assert recorder.batch_rates[:9] == pytest.approx(per_batch, rel=1e-12, abs=1e-15)


def test_epoch_interval_logs_the_rate_used_during_each_epoch():
    rates, history, _ = fit(LRScheduler("cosine", warmup=1), epochs=4)
    assert history.history["lr"] == pytest.approx([0.0, BASE, BASE / 2, 0.0], abs=1e-15)
    per_epoch = [rates.rates[i * 10 : (i + 1) * 10] for i in range(4)]
    for logged, used in zip(history.history["lr"], per_epoch):
        assert used == pytest.approx([logged] * 10, abs=1e-15)


def test_step_interval_logs_the_rate_of_the_next_step():
    rates, history, _ = fit(LRScheduler("linear", interval="step"), epochs=2)
    assert history.history["lr"][0] == pytest.approx(rates.rates[10])


def test_a_function_schedule_keeps_the_ratio_of_parameter_groups():
    def two_groups(model):
        return torch.optim.SGD(
            [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters()}], lr=0.01
        )

    _, history, _ = fit(LRScheduler(lambda epoch: 0.5**epoch), optimizer=two_groups)
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert history.history["lr_1"] == pytest.approx([0.01, 0.005, 0.0025])


@pytest.mark.parametrize("warmup", [0, 2])
def test_a_torch_scheduler_factory_steps_per_epoch_after_warmup(warmup):
    schedule = LRScheduler(
        lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), warmup=warmup, warmup_mode="constant"
    )
    _, history, _ = fit(schedule, n=8, epochs=6)
    torch_rates = [BASE, BASE, BASE / 2, BASE / 2, BASE / 4, BASE / 4]
    assert history.history["lr"] == pytest.approx([BASE * 0.1] * warmup + torch_rates[: 6 - warmup])


def test_a_torch_scheduler_factory_per_step():
    schedule = LRScheduler(lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.9), interval="step")
    rates, _, _ = fit(schedule, epochs=2)
    assert rates.rates == pytest.approx([BASE * 0.9**s for s in range(20)])


def test_onecycle_matches_torch():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    reference = lr_scheduler.OneCycleLR(optimizer, max_lr=BASE, total_steps=30, cycle_momentum=False)
    expected = []
    for _ in range(30):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    rates, _, _ = fit(LRScheduler("onecycle", interval="step"))
    assert rates.rates == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("linear", {}, [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("linear", {"end_factor": 0.2}, [1.0, 0.8, 0.6, 0.4, 0.2]),
        ("cosine", {"min_factor": 0.2}, [1.0, 0.2 + 0.8 * cosine(1, 5), 0.6, 0.2 + 0.8 * cosine(3, 5), 0.2]),
        ("exponential", {}, [0.01 ** (t / 4) for t in range(5)]),
        ("step", {}, [1.0, 1.0, 0.1, 0.1, 0.01]),
        ("multistep", {"milestones": [1, 3]}, [1.0, 0.1, 0.1, 0.01, 0.01]),
        ("constant", {}, [1.0] * 5),
    ],
)
def test_named_schedules_span_the_fit(name, options, expected):
    factor = SCHEDULES[name](5, **options)
    assert [factor(t) for t in range(5)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_resume_from_a_checkpoint_continues_the_schedule(interval, tmp_path):
    path = tmp_path / "checkpoint"
    straight, _, _ = fit(LRScheduler("cosine", interval=interval, warmup=3), epochs=4)

    class SaveThenStop(Callback):  # a run that checkpoints epoch 1, then dies
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                save_checkpoint(self.learner, path)
                self.learner.stop_training = True

    first = LRScheduler("cosine", interval=interval, warmup=3)
    head, _, _ = fit(first, epochs=4, extra=[SaveThenStop()])
    total = 40 if interval == "step" else 4
    assert json.loads(json.dumps(first.state_dict())) == {"base_lrs": [BASE], "start": 0, "total": total}
    tail, _, _ = fit(LRScheduler("cosine", interval=interval, warmup=3), epochs=4, resume=path)
    assert head.rates + tail.rates == pytest.approx(straight.rates, abs=1e-15)


def test_resume_replays_a_torch_scheduler():
    factory = lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    straight, _, _ = fit(LRScheduler(factory), n=8, epochs=6)
    first = LRScheduler(factory)
    head, _, learner = fit(first, n=8, epochs=6, extra=[StopAfter(3)])
    second = LRScheduler(factory)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail, _, _ = fit(second, n=8, epochs=6, initial_epoch=4, learner=learner)
    assert head.rates + tail.rates == pytest.approx(straight.rates)


def test_a_second_fit_starts_again_from_the_base_rate():
    schedule = LRScheduler("linear")
    _, first, learner = fit(schedule, n=8)
    x, y = make_classification(n=8)
    model = make_mlp()
    learner.fit(model, (x, y), epochs=2, callbacks=[schedule])
    second = learner.fit(model, (x, y), epochs=2, callbacks=[schedule])  # same model: same optimizer
    assert first.history["lr"] == pytest.approx([BASE, BASE / 2, 0.0])
    assert second.history["lr"] == pytest.approx([BASE, 0.0])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("cosinus",), {}, ValueError, "unknown schedule 'cosinus'; known: cosine, onecycle"),
        (("cosine",), {"interval": "week"}, ValueError, "interval must be one of 'epoch', 'step', got 'week'"),
        (("cosine",), {"warmup": -1}, ValueError, "warmup must be an int >= 0"),
        (("cosine",), {"warmup_mode": "cubic"}, ValueError, "warmup_mode must be one of 'linear', 'exponential'"),
        (("cosine",), {"warmup_mode": "exponential", "warmup_start": 0.0}, ValueError, "cannot start at 0"),
        (("cosine",), {"min_factor": 2}, ValueError, "min_factor must be a number in"),
        (("cosine",), {"gamma": 0.5}, TypeError, "unknown option"),
        (("step",), {"step_size": 0}, ValueError, "step_size must be a positive int, got 0"),
        ((lambda t: 1.0,), {"gamma": 0.5}, TypeError, "apply to named schedules only"),
        ((lambda t: -1.0,), {}, ValueError, "at t=0 it returned -1.0"),
        ((3,), {}, TypeError, "schedule must be a name or a callable, got 3"),
    ],
)
def test_bad_arguments_fail_at_construction(args, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        LRScheduler(*args, **kwargs)


def test_fit_time_errors_are_clear():
    with pytest.raises(ValueError, match=r"warmup=30 steps covers the whole fit \(30 steps\)"):
        fit(LRScheduler("cosine", interval="step", warmup=30))
    with pytest.raises(TypeError, match="neither a function"):
        fit(LRScheduler(lambda opt: opt.param_groups))
