"""LRScheduler: warm-ups, named schedules sized from the fit, end points, accumulation, groups, torch factories,
composition with other rate changes, verbose, resume (the crash-and-rerun matrix is in test_schedule_resume.py)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch.optim import lr_scheduler

from conftest import Script, make_classification, make_mlp
from fitorch import Callback, Learner, save_checkpoint
from fitorch.callbacks import LearningRateScheduler, LRScheduler, ModelCheckpoint, ReduceLROnPlateau
from fitorch.callbacks.schedules import SCHEDULES

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


def fit(
    schedule, *, n=40, batch_size=4, epochs=3, accum=None, optimizer="sgd", before=(), extra=(), learner=None, **kwargs
):
    x, y = make_classification(n=n)
    rates = StepRates()
    learner = learner or Learner(loss="cross_entropy", optimizer=optimizer, lr=BASE, grad_accum_steps=accum, verbose=0)
    history = learner.fit(
        make_mlp(), (x, y), epochs=epochs, batch_size=batch_size, callbacks=[*before, schedule, *extra, rates], **kwargs
    )
    return rates, history, learner


def cosine(t, span):
    """torch's CosineAnnealingLR(T_max=span) factor: the end value comes one step after the last."""
    return 0.5 * (1 + math.cos(math.pi * t / span))


@pytest.mark.parametrize(
    ("mode", "warm"),
    [
        ("linear", lambda s: (s + 1) / 11),  # equal steps from 0 (never trained) to 1 (the first step after)
        ("exponential", lambda s: 0.01 ** (1 - s / 10)),
        ("constant", lambda s: 0.1),
    ],
)
def test_step_warmup_then_cosine_ending_above_zero(mode, warm):
    recorder, history, learner = fit(LRScheduler("cosine", interval="step", warmup=10, warmup_mode=mode))  # 30 steps
    rates = recorder.rates
    # After the last step no step follows: its rate stays in the optimizer and the logs, not the end value 0.
    assert history.history["lr"][-1] == learner.optimizer.param_groups[0]["lr"] == rates[-1]
    expected = [BASE * warm(s) for s in range(10)] + [BASE * cosine(t, 20) for t in range(20)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[10] == pytest.approx(BASE) and rates[-1] == pytest.approx(BASE * cosine(19, 20)) and rates[-1] > 0
    if mode == "linear":
        assert all(b - a == pytest.approx(BASE / 11) for a, b in zip(rates[:11], rates[1:11]))


def test_with_accumulation_the_schedule_advances_once_per_real_step():
    # 9 micro-batches per epoch, 2 per step: ceil(9 / 2) = 5 steps per epoch (the last one short), 15 in all.
    recorder, _, _ = fit(LRScheduler("cosine", interval="step", warmup=3), n=36, accum=2)
    expected = [BASE * (s + 1) / 4 for s in range(3)] + [BASE * cosine(t, 12) for t in range(12)]
    assert recorder.rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Both micro-batches of a window see the window's rate; the short last window has one.
    per_batch = [rate for rate in expected[:5] for _ in (0, 1)][:9]
    assert recorder.batch_rates[:9] == pytest.approx(per_batch, rel=1e-12, abs=1e-15)


def test_epoch_interval_logs_the_rate_used_during_each_epoch():
    rates, history, _ = fit(LRScheduler("cosine", warmup=1), epochs=4)
    assert history.history["lr"] == pytest.approx([BASE / 2, BASE, BASE * 0.75, BASE * 0.25], abs=1e-15)
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
        ("linear", {}, [1.0, 0.8, 0.6, 0.4, 0.2]),
        ("linear", {"end_factor": 0.2}, [1.0, 0.84, 0.68, 0.52, 0.36]),
        ("cosine", {"min_factor": 0.2}, [0.2 + 0.8 * cosine(t, 5) for t in range(5)]),
        ("exponential", {}, [0.01 ** (t / 5) for t in range(5)]),
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
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {**state, "base_lrs": [BASE], "start": 0, "start_epoch": 0, "scales": [1.0]}
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
    assert first.history["lr"] == pytest.approx([BASE, BASE * 2 / 3, BASE / 3])
    assert second.history["lr"] == pytest.approx([BASE, BASE / 2])


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
        ((lambda t: -1.0,), {}, ValueError, "the factor a function schedule returned at t=0 must be a number >= 0"),
        ((3,), {}, TypeError, "schedule must be a schedule name, a function t -> factor, or a factory"),
        ((lambda epoch, lr: lr,), {}, TypeError, "use fitorch.callbacks.LearningRateScheduler"),
        (("cosine",), {"verbose": 2}, ValueError, "verbose must be one of 0, 1, False, True, got 2"),
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


# ---------------------------------------------------------------------------- no rate of 0 unless asked


def torch_epoch_rates(make, epochs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    scheduler, rates = make(optimizer), []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("cosine", lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=5)),
        ("linear", lambda opt: lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=5)),
    ],
)
def test_per_epoch_cosine_and_linear_end_as_torch_does_above_zero(name, reference):
    _, history, _ = fit(LRScheduler(name), n=8, epochs=5)
    assert history.history["lr"] == pytest.approx(torch_epoch_rates(reference, 5), rel=1e-12)
    assert min(history.history["lr"]) > 0  # was [0.1, 0.0854, 0.05, 0.0146, 0.0]


@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.parametrize("warmup_mode", ["linear", "exponential", "constant"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_no_epoch_or_step_trains_at_zero_unless_asked(name, warmup_mode, interval):
    schedule = LRScheduler(name, interval=interval, warmup=1, warmup_mode=warmup_mode)
    rates, _, _ = fit(schedule, n=16, epochs=4)
    assert min(rates.rates) > 0
    asked, _, _ = fit(LRScheduler(name, interval=interval, warmup=1, warmup_start=0.0), n=16, epochs=4)
    assert asked.rates[0] == 0.0  # warmup_start=0 asks for it


# ---------------------------------------------------------------------------- composition


PLATEAU_LOSSES = [1.0] * 6  # never improves after the first epoch: a reduction at the end of every later one


@pytest.mark.parametrize(
    ("schedule", "own_rates"),
    [
        (lambda: LRScheduler("constant"), [BASE] * 6),
        (lambda: LRScheduler("cosine"), [BASE * cosine(t, 6) for t in range(6)]),
        (lambda: LRScheduler(lambda t: 0.9**t), [BASE * 0.9**t for t in range(6)]),
        (
            lambda: LRScheduler(lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)),
            [BASE, BASE, BASE / 2, BASE / 2, BASE / 4, BASE / 4],
        ),
        (
            lambda: LRScheduler(lambda opt: lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))),  # not chainable
            [BASE / (1 + t) for t in range(6)],
        ),
    ],
)
def test_a_plateau_reduction_scales_the_rest_of_the_schedule(schedule, own_rates):
    plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    _, history, _ = fit(schedule(), n=8, epochs=6, extra=[Script("val_loss", PLATEAU_LOSSES), plateau])
    # Reductions at the ends of epochs 1, 2, 3, 4 (patience 1, no cooldown): x0.5 each, from epoch 2 on.
    scale = [1, 1, 0.5, 0.25, 0.125, 0.0625]
    assert history.history["lr"] == pytest.approx([rate * s for rate, s in zip(own_rates, scale)], rel=1e-12)


def test_a_change_made_by_a_callback_of_yours_is_kept_as_a_scale_too():
    class HalveAtEpoch2(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                for group in self.learner.optimizer.param_groups:
                    group["lr"] /= 2

    _, history, _ = fit(LRScheduler(lambda t: 0.9**t), n=8, epochs=4, extra=[HalveAtEpoch2()])
    assert history.history["lr"] == pytest.approx([BASE, BASE * 0.9, BASE * 0.81 / 2, BASE * 0.729 / 2])


# ---------------------------------------------------------------------------- a longer fit on resume


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_resuming_with_a_larger_epochs_follows_the_longer_fits_schedule(interval, tmp_path):
    """The rate at an epoch depends on the epoch and the fit's `epochs` only, however the fit got there."""
    _, longer, _ = fit(LRScheduler("cosine", interval=interval, warmup=2), n=16, epochs=8)
    fit(
        LRScheduler("cosine", interval=interval, warmup=2),
        n=16,
        epochs=4,
        extra=[ModelCheckpoint(tmp_path / "e{epoch}")],
    )
    resumed, extended, _ = fit(
        LRScheduler("cosine", interval=interval, warmup=2), n=16, epochs=8, resume=tmp_path / "e4"
    )
    assert extended.history["lr"][4:] == pytest.approx(longer.history["lr"][4:], rel=1e-12)
    assert min(resumed.rates) > 0  # the added epochs do not train at the shorter schedule's end value


# ---------------------------------------------------------------------------- verbose, torch's plateau


def test_verbose_logs_the_rate_set_at_every_epoch(caplog):
    with caplog.at_level(logging.INFO, logger="fitorch"):
        fit(LRScheduler(lambda t: 0.5**t, verbose=1), n=8, epochs=2)
    lines = [record.getMessage() for record in caplog.records if "LRScheduler setting" in record.getMessage()]
    assert lines == [
        "Epoch 1: LRScheduler setting learning rate to 0.1.",
        "Epoch 2: LRScheduler setting learning rate to 0.05.",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fitorch"):
        fit(LRScheduler(lambda t: 0.5**t), n=8, epochs=2)
    assert "LRScheduler setting" not in caplog.text


def test_a_factory_of_torchs_reduce_lr_on_plateau_steps_at_epoch_ends_with_the_monitor(tmp_path):
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    torch_plateau, expected = lr_scheduler.ReduceLROnPlateau(reference, patience=1, factor=0.5), []
    for value in values:
        expected.append(reference.param_groups[0]["lr"])
        torch_plateau.step(value)
    factory = lambda opt: lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    _, history, _ = fit(LRScheduler(factory, monitor="val_f1"), n=8, epochs=8, before=[Script("val_f1", values)])
    assert history.history["lr"] == expected
    # Its counters survive a resume: a run checkpointed after epoch 3 continues with the same rates.
    first = LRScheduler(factory, monitor="val_f1")
    fit(first, n=8, epochs=4, before=[Script("val_f1", values)], extra=[ModelCheckpoint(tmp_path / "e{epoch}")])
    state = json.loads(json.dumps(first.state_dict()))
    assert state["plateau"] == {
        "best": 0.9,
        "num_bad_epochs": 0,
        "cooldown_counter": 0,
        "last_epoch": 4,
    }  # reduced at 3
    _, resumed, _ = fit(
        LRScheduler(factory, monitor="val_f1"), n=8, epochs=8, before=[Script("val_f1", values)], resume=tmp_path / "e4"
    )
    assert resumed.history["lr"] == expected
    with pytest.raises(ValueError, match="torch's ReduceLROnPlateau steps once per epoch"):
        fit(LRScheduler(factory, interval="step"), n=8, before=[Script("val_loss", values)])
    with pytest.raises(ValueError, match=r"LRScheduler\(monitor='val_loss'\): no such value in the logs"):
        fit(LRScheduler(factory), n=8)


def test_two_schedules_in_one_fit_are_refused_at_the_start():
    with pytest.raises(
        ValueError, match=r"Two learning-rate schedules in one fit \(LRScheduler, LearningRateScheduler\)"
    ):
        fit(LRScheduler("cosine"), extra=[LearningRateScheduler(lambda epoch: 0.1)])


class Stuck(Callback):
    """Sets val_loss to 1.0 in the epochs that validated, leaving the others without it."""

    def on_epoch_end(self, epoch, logs):
        if "val_loss" in logs:
            logs["val_loss"] = 1.0


def test_torchs_reduce_lr_on_plateau_skips_the_epochs_without_validation():
    # validation_freq=2: epochs 1, 3, 5 have no val_loss; torch's scheduler steps on the others only,
    # as fitorch's own ReduceLROnPlateau and Keras's do (an epoch without the value is no bad epoch).
    x, y = make_classification(n=16)
    factory = lambda opt: lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    stuck = Stuck()  # val_loss never improves: each step on it is a bad epoch
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=BASE, verbose=0)
    history = learner.fit(
        make_mlp(), (x, y), epochs=6, batch_size=8, validation_data=(x, y), validation_freq=2,
        callbacks=[stuck, LRScheduler(factory)],
    )
    # Stepped after epochs 2 (the first value: its best), 4 and 6 (bad: halved), never after 1, 3, 5.
    assert history.history["lr"] == [BASE] * 4 + [BASE / 2] * 2
