"""The training loop against oracles: event order, plain-PyTorch parity, accumulation, precision, clipping."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import AutocastProbe, Recorder, make_classification, make_mlp
from fitorch import Callback, Learner, TopKAccuracy
from fitorch.callbacks import History


def test_event_order_two_epochs_two_batches_with_validation(recorder):
    x, y = make_classification(n=8)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    learner.fit(make_mlp(), (x, y), epochs=2, batch_size=4, validation_data=(x[:4], y[:4]), callbacks=[recorder])

    def train_batch(i):
        return [
            f"on_train_batch_begin({i})",
            "on_before_backward",
            "on_after_backward",
            "on_before_optimizer_step",
            "on_optimizer_step",
            f"on_train_batch_end({i})",
        ]

    def epoch(e):
        return [
            f"on_epoch_begin({e})",
            *train_batch(0),
            *train_batch(1),
            "on_test_begin",
            "on_test_batch_begin(0)",
            "on_test_batch_end(0)",
            "on_test_end",
            f"on_epoch_end({e})",
        ]

    assert recorder.events == ["on_train_begin", *epoch(0), *epoch(1), "on_train_end"]


class TwoOptimizerSteps(Learner):
    """A custom step with an optimizer per half of the model (a GAN, an encoder and a head)."""

    def train_step(self, batch):
        inputs, targets = batch
        outputs = self.prepared_model(inputs)
        loss = self.compute_loss(outputs, targets)
        self.backward(loss)
        if self.sync_gradients:
            for optimizer in self.optimizers:
                self.optimizer_step(optimizer)
        return loss, outputs


def split_optimizers(model):
    return [torch.optim.SGD(model[0].parameters(), lr=0.1), torch.optim.Adam(model[2].parameters(), lr=0.01)]


def test_event_order_pairs_each_optimizer_step_with_two_optimizers(recorder):
    """Every before/after pair fires from one place, once per optimizer step; global_step counts windows."""
    x, y = make_classification(n=8)
    learner = TwoOptimizerSteps(loss="cross_entropy", optimizer=split_optimizers, verbose=0)
    steps = []

    class Steps(Callback):
        def on_optimizer_step(self):
            steps.append(self.learner.global_step)

    learner.fit(make_mlp(), (x, y), epochs=1, batch_size=4, callbacks=[recorder, Steps()])
    batch = [
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_optimizer_step",
        "on_before_optimizer_step",
        "on_optimizer_step",
    ]
    assert recorder.events == [
        "on_train_begin",
        "on_epoch_begin(0)",
        "on_train_batch_begin(0)",
        *batch,
        "on_train_batch_end(0)",
        "on_train_batch_begin(1)",
        *batch,
        "on_train_batch_end(1)",
        "on_epoch_end(0)",
        "on_train_end",
    ]
    assert steps == [1, 1, 2, 2] and learner.global_step == 2


def test_evaluate_and_predict_fire_their_events(data, recorder):
    x, y = data
    learner = Learner(loss="cross_entropy", verbose=0)
    learner.evaluate(make_mlp(), (x[:6], y[:6]), batch_size=4, callbacks=[recorder])
    learner.predict(make_mlp(), x[:6], batch_size=4, callbacks=[recorder])
    assert recorder.events == [
        "on_test_begin",
        "on_test_batch_begin(0)",
        "on_test_batch_end(0)",
        "on_test_batch_begin(1)",
        "on_test_batch_end(1)",
        "on_test_end",
        "on_predict_begin",
        "on_predict_batch_begin(0)",
        "on_predict_batch_end(0)",
        "on_predict_batch_begin(1)",
        "on_predict_batch_end(1)",
        "on_predict_end",
    ]


def hand_written_sgd(model, x, y, batch_size, epochs, lr, momentum=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size]).backward()
            optimizer.step()
    return model


def test_sgd_fit_equals_hand_written_loop(data):
    x, y = data
    reference = hand_written_sgd(make_mlp(), x, y, batch_size=10, epochs=3, lr=0.1, momentum=0.9)
    model = make_mlp()
    Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, momentum=0.9, verbose=0).fit(
        model, (x, y), epochs=3, batch_size=10, shuffle=False
    )
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(("accum", "micro", "big"), [(4, 8, 32), (2, 10, 20)])
def test_gradient_accumulation_equals_big_batch_short_windows_included(accum, micro, big):
    # 36 samples: windows of 32 + 4 (the last window holds one micro-batch of 4 out of 4 slots),
    # and 20 + 16 (the last window holds 10 + 6 samples, weighted by samples).
    x, y = make_classification(n=36)
    reference = make_mlp()
    Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, verbose=0).fit(
        reference, (x, y), epochs=1, batch_size=big, shuffle=False
    )
    model = make_mlp()
    Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, grad_accum_steps=accum, verbose=0).fit(
        model, (x, y), epochs=1, batch_size=micro, shuffle=False
    )
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_accumulation_steps_optimizer_once_per_window(data, recorder):
    x, y = make_classification(n=36)
    learner = Learner(loss="cross_entropy", grad_accum_steps=4, verbose=0)
    learner.fit(make_mlp(), (x, y), epochs=2, batch_size=8, callbacks=[recorder])
    assert recorder.events.count("on_optimizer_step") == 4  # windows of 4 + 1 micro-batches, twice
    assert recorder.events.count("on_before_backward") == 10
    assert learner.global_step == 4


def test_bf16_mixed_precision_trains_on_cpu(data):
    x, y = data
    model = make_mlp()
    seen = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    before = copy.deepcopy(model.state_dict())
    learner = Learner(loss="cross_entropy", lr=1e-2, mixed_precision="bf16", cpu=True, verbose=0)
    history = learner.fit(model, (x, y), epochs=5, batch_size=16)
    assert torch.bfloat16 in seen
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])
    # After fit the model's forward is the user's again: no autocast left behind.
    seen.clear()
    model(x[:2])
    assert seen == [torch.float32]


def test_mixed_precision_holds_for_every_call_and_the_model_comes_back_as_it_went_in(data):
    """Accelerate skips a model it already prepared: a second fit, evaluate and predict ran in float32."""
    x, y = data
    model = AutocastProbe()
    attributes, hooks = set(vars(model)), len(model._forward_hooks) + len(model._forward_pre_hooks)
    learner = Learner(loss="cross_entropy", mixed_precision="bf16", cpu=True, verbose=0)
    calls = {
        "fit": lambda: learner.fit(model, (x, y), epochs=1, batch_size=32),
        "fit again": lambda: learner.fit(model, (x, y), epochs=1, batch_size=32),
        "evaluate": lambda: learner.evaluate(model, (x, y), batch_size=32),
        "predict": lambda: learner.predict(model, x, batch_size=32),
    }
    for name, call in calls.items():
        model.autocast.clear()
        call()
        assert model.autocast and all(model.autocast), f"{name} ran without autocast"
        assert set(vars(model)) == attributes, f"{name} left {set(vars(model)) ^ attributes} on the model"
        assert len(model._forward_hooks) + len(model._forward_pre_hooks) == hooks
        assert model.forward.__func__ is AutocastProbe.forward
    model.autocast.clear()
    model(x[:2])
    assert model.autocast == [False]
    val_loss = learner.fit(model, (x, y), epochs=1, batch_size=32, validation_data=(x, y)).history["val_loss"][0]
    assert learner.evaluate(model, (x, y), batch_size=32)["loss"] == pytest.approx(val_loss, abs=0)


class GradNorm(Callback):
    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_grad_clip_bounds_the_norm_seen_before_the_step(data):
    x, y = data
    y = y * 0  # a single class with a big learning signal makes large gradients
    unclipped, clipped = GradNorm(), GradNorm()
    Learner(loss="cross_entropy", lr=1.0, optimizer="sgd", verbose=0).fit(
        make_mlp(), (x * 50, y), epochs=1, batch_size=16, callbacks=[unclipped]
    )
    Learner(loss="cross_entropy", lr=1.0, optimizer="sgd", grad_clip=0.5, verbose=0).fit(
        make_mlp(), (x * 50, y), epochs=1, batch_size=16, callbacks=[clipped]
    )
    assert max(unclipped.norms) > 0.5
    assert max(clipped.norms) <= 0.5 + 1e-5


class OutputsCollector(Callback):
    def __init__(self):
        self.correct = 0
        self.seen = 0

    def on_train_batch_begin(self, batch, logs):
        self.weights = copy.deepcopy(self.learner.model.state_dict())

    def on_train_batch_end(self, batch, logs):
        # learner.outputs are the outputs the loss was computed on
        x, y = self.batches[batch]
        self.correct += int((self.learner.outputs.argmax(1) == y).sum())
        self.seen += len(y)


def test_epoch_accuracy_is_exact_over_samples_with_a_short_last_batch():
    x, y = make_classification(n=10)
    collector = OutputsCollector()
    collector.batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 10, 4)]  # 4 + 4 + 2
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, metrics=["accuracy"], verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=1, batch_size=4, shuffle=False, callbacks=[collector])
    assert collector.seen == 10
    assert history.history["accuracy"][0] == pytest.approx(collector.correct / 10, abs=1e-12)

    model = make_mlp(seed=3)
    logs = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0).evaluate(model, (x, y), batch_size=4)
    with torch.no_grad():
        outputs = model(x)
    assert logs["accuracy"] == pytest.approx(float((outputs.argmax(1) == y).float().mean()), abs=1e-12)
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(outputs, y)), abs=1e-6)


class ModeProbe(nn.Module):
    """Records (training flag, grad enabled) at every forward."""

    def __init__(self):
        super().__init__()
        self.inner = make_mlp()
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.inner(x)


def test_train_mode_restored_after_validation_and_evaluation_without_gradients(data):
    x, y = make_classification(n=8)
    model = ModeProbe()
    Learner(loss="cross_entropy", verbose=0).fit(model, (x, y), epochs=2, batch_size=4, validation_data=(x, y))
    # per epoch: 2 training batches, then 2 validation batches (validation uses the same batch size)
    assert model.calls == [(True, True)] * 2 + [(False, False)] * 2 + [(True, True)] * 2 + [(False, False)] * 2
    model.calls.clear()
    Learner(loss="cross_entropy", verbose=0).evaluate(model, (x, y))
    assert model.calls == [(False, False)]


def test_validation_split_takes_the_last_fraction_before_shuffling():
    x, y = make_classification(n=20)
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = make_mlp()

        def forward(self, inputs):
            if not self.training:
                seen.append(inputs.clone())
            return self.inner(inputs)

    Learner(loss="cross_entropy", verbose=0).fit(Probe(), (x, y), epochs=1, validation_split=0.25)
    torch.testing.assert_close(torch.cat(seen), x[15:])


def test_seeded_fits_are_bit_identical_with_shuffle_and_dropout(data):
    x, y = data

    def run():
        model = make_mlp(dropout=0.5)
        Learner(loss="cross_entropy", seed=7, verbose=0).fit(model, (x, y), epochs=3, batch_size=8)
        return model.state_dict()

    first, second = run(), run()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    unseeded = make_mlp(dropout=0.5)
    Learner(loss="cross_entropy", seed=8, verbose=0).fit(unseeded, (x, y), epochs=3, batch_size=8)
    assert not torch.equal(unseeded.state_dict()["0.weight"], first["0.weight"])


def test_model_passed_in_holds_the_trained_weights_and_learner_model_is_it(data):
    x, y = data
    model = make_mlp()
    before = model[0].weight.detach().clone()
    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(model, (x, y), epochs=1)
    assert learner.model is model
    assert not torch.equal(before, model[0].weight)


def test_history_records_one_value_per_epoch(data):
    x, y = data
    learner = Learner(loss="cross_entropy", metrics=["accuracy", TopKAccuracy(k=2)], verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=3, validation_data=(x, y))
    assert isinstance(history, History) and history is learner.history
    assert history.epoch == [0, 1, 2]
    for key in ["loss", "accuracy", "top_k_accuracy", "val_loss", "val_accuracy", "val_top_k_accuracy", "lr"]:
        assert len(history.history[key]) == 3, key
    assert all(a <= k for a, k in zip(history.history["accuracy"], history.history["top_k_accuracy"]))
    assert history.history["lr"] == [1e-3] * 3


def test_initial_epoch_continues_counting():
    x, y = make_classification(n=8)
    learner = Learner(loss="cross_entropy", verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=5, initial_epoch=3)
    assert history.epoch == [3, 4]


def test_fitting_the_same_model_again_keeps_the_optimizer_state(data):
    x, y = data
    model = make_mlp()
    learner = Learner(loss="cross_entropy", optimizer="adam", verbose=0)
    learner.fit(model, (x, y), epochs=1, batch_size=32)
    learner.fit(model, (x, y), epochs=2, initial_epoch=1, batch_size=32)
    state = learner.optimizer.state_dict()["state"]
    assert int(state[0]["step"]) == 4  # 2 steps per epoch, over both calls


def test_stop_training_from_a_batch_hook_stops_after_that_batch(data):
    x, y = data

    class StopAtThirdBatch(Callback):
        def on_train_batch_end(self, batch, logs):
            if batch == 2:
                self.learner.stop_training = True

    recorder = Recorder()
    learner = Learner(loss="cross_entropy", verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=5, batch_size=8, callbacks=[StopAtThirdBatch(), recorder])
    assert learner.global_step == 3
    assert history.epoch == [0]  # the epoch still ends, as in Keras
    assert recorder.events[-2:] == ["on_epoch_end(0)", "on_train_end"]


def test_stop_training_from_epoch_end_stops_after_that_epoch(data):
    x, y = data

    class StopAtEpochOne(Callback):
        def on_epoch_end(self, epoch, logs):
            self.learner.stop_training = epoch == 1

    history = Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=5, callbacks=[StopAtEpochOne()])
    assert history.epoch == [0, 1]


def test_batch_logs_hold_running_epoch_means(data):
    x, y = make_classification(n=12)
    seen = []

    class Peek(Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append(dict(logs))

    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.0, metrics=["accuracy"], verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=1, batch_size=5, shuffle=False, callbacks=[Peek()])
    assert set(seen[0]) == {"loss", "accuracy"}
    assert seen[-1]["loss"] == pytest.approx(history.history["loss"][0])
    assert seen[-1]["accuracy"] == pytest.approx(history.history["accuracy"][0])


def test_two_optimizers_through_a_custom_train_step():
    """A subclass trains two parameter groups with an optimizer each, like a GAN or encoder + head."""
    x, y = make_classification(n=32)
    model = make_mlp()
    before = copy.deepcopy(model.state_dict())
    learner = TwoOptimizerSteps(loss="cross_entropy", optimizer=split_optimizers, verbose=0)
    history = learner.fit(model, (x, y), epochs=3, batch_size=8)
    assert len(learner.optimizers) == 2
    assert set(history.history) >= {"loss", "lr", "lr_1"}
    assert history.history["lr_1"] == [0.01] * 3
    for key in before:
        assert not torch.equal(before[key], model.state_dict()[key]), key
    # the Adam half really used Adam: it has moment estimates
    assert "exp_avg" in learner.optimizers[1].state_dict()["state"][0]


def test_a_failing_resume_leaves_the_learner_clean(tmp_path, data):
    x, y = data
    model = make_mlp()
    learner = Learner(loss="cross_entropy", mixed_precision="bf16", cpu=True, verbose=0)
    with pytest.raises(FileNotFoundError):
        learner.fit(model, (x, y), resume=tmp_path / "missing")
    assert not learner.fitting
    assert "_original_forward" not in vars(model)  # Accelerate's autocast wrapper was taken off again


def test_run_dir_without_validation_keeps_last_and_best_by_training_loss(tmp_path, data):
    from fitorch import load_checkpoint

    x, y = data
    learner = Learner(loss="cross_entropy", run_dir=tmp_path, verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=3)
    best = load_checkpoint(make_mlp(), tmp_path / "checkpoints" / "best")
    last = load_checkpoint(make_mlp(), tmp_path / "checkpoints" / "last")
    assert last["loop"]["epoch"] == 3
    best_epoch = min(range(3), key=history.history["loss"].__getitem__)
    assert best["loop"]["epoch"] == best_epoch + 1


def test_sharded_training_state_is_refused_with_a_clear_message(data):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from fitorch import save_checkpoint

    x, y = data
    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(make_mlp(), (x, y))
    learner.accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_main_process=True)
    with pytest.raises(NotImplementedError, match="sharded model and optimizer state of a FSDP run"):
        save_checkpoint(learner, "unused")


def test_callbacks_see_each_validation_batch_outputs_and_loss():
    x, y = make_classification(n=40)
    sizes = []

    class Peek(Callback):
        def on_test_batch_end(self, batch, logs):
            sizes.append((len(self.learner.outputs), self.learner.loss.ndim))

    Learner(loss="cross_entropy", verbose=0).fit(
        make_mlp(), (x[:30], y[:30]), epochs=1, batch_size=7, validation_data=(x[30:], y[30:]), callbacks=[Peek()]
    )
    assert sizes == [(7, 0), (3, 0)]


def test_loader_workers_do_not_outlive_fit():
    import gc
    import multiprocessing

    from torch.utils.data import Subset, TensorDataset

    x, y = make_classification(n=32)
    dataset = Subset(TensorDataset(x, y), range(32))
    learner = Learner(loss="cross_entropy", num_workers=1, verbose=0)
    learner.fit(make_mlp(), dataset, epochs=2, batch_size=8, validation_data=dataset)
    assert learner.history.epoch == [0, 1]
    gc.collect()
    assert multiprocessing.active_children() == []


def test_launcher_accumulation_setting_is_applied_once(monkeypatch, data):
    """`accelerate launch --gradient_accumulation_steps 2` sets an environment variable; the loss must not
    also be divided by it (the fp16-free path and Accelerate's own backward must agree)."""
    x, y = make_classification(n=32)
    reference = make_mlp()
    Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, grad_accum_steps=2, verbose=0).fit(
        reference, (x, y), batch_size=8, shuffle=False
    )
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    launched = make_mlp()
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, verbose=0)
    learner.fit(launched, (x, y), batch_size=8, shuffle=False)
    assert learner.grad_accum_steps == 2 and learner.accelerator.gradient_accumulation_steps == 1
    for ours, theirs in zip(launched.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_a_custom_step_that_steps_the_optimizer_itself_fails_with_the_fix(data):
    """Lightning's manual optimisation habit skipped clipping and accumulation while global_step advanced."""
    x, y = data

    class ManualStep(Learner):
        def train_step(self, batch):
            inputs, targets = batch
            outputs = self.prepared_model(inputs)
            loss = self.compute_loss(outputs, targets)
            self.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad()
            return loss, outputs

    with pytest.raises(RuntimeError, match=r"step\(\) was called outside self.optimizer_step\(\).*grad"):
        ManualStep(loss="cross_entropy", grad_clip=1.0, verbose=0).fit(make_mlp(), (x, y), epochs=1)

    class ManualBackward(Learner):
        def train_step(self, batch):
            inputs, targets = batch
            outputs = self.prepared_model(inputs)
            loss = self.compute_loss(outputs, targets)
            loss.backward()
            if self.sync_gradients:
                self.optimizer_step()
            return loss, outputs

    with pytest.raises(RuntimeError, match=r"did not come from self.backward\(loss\)"):
        ManualBackward(loss="cross_entropy", grad_accum_steps=2, verbose=0).fit(make_mlp(), (x, y), epochs=1)


def test_fp16_on_the_cpu_is_refused_instead_of_training_in_float32(data):
    x, y = data
    model = make_mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"fp16' needs a GPU.*mixed_precision='bf16'"):
        Learner(loss="cross_entropy", mixed_precision="fp16", cpu=True, verbose=0).fit(model, (x, y))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_outputs_and_loss_are_the_current_batchs_in_every_event_of_the_batch(data):
    x, y = data
    seen = []

    class Peek(Callback):
        def on_train_batch_begin(self, batch, logs):
            seen.append(("begin", batch, self.learner.outputs is None and self.learner.loss is None))

        def on_before_backward(self, loss):
            outputs = self.learner.outputs
            seen.append(("backward", self.learner.batch, outputs is not None and self.learner.loss is loss))
            expected = self.learner.prepared_model(x[self.learner.batch * 16 : (self.learner.batch + 1) * 16])
            torch.testing.assert_close(outputs, expected)

    Learner(loss="cross_entropy", verbose=0).fit(
        make_mlp(), (x, y), epochs=1, batch_size=16, shuffle=False, callbacks=[Peek()]
    )
    assert seen and all(ok for *_, ok in seen)


class CrashAtEpoch(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_a_new_run_in_a_run_dir_that_holds_one_is_refused_and_continuing_appends(tmp_path, data):
    """A second fit from epoch 0 used to interleave its TensorBoard steps, CSV rows and log lines with the first."""
    x, y = data
    learner = Learner(loss="cross_entropy", run_dir=tmp_path, verbose=0)
    learner.fit(make_mlp(), (x, y), epochs=2)
    csv = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(ValueError, match=r"holds an earlier run \(train.log, metrics.csv.*resume=True"):
        learner.fit(make_mlp(), (x, y), epochs=2)
    assert (tmp_path / "metrics.csv").read_text() == csv
    learner.fit(learner.model, (x, y), epochs=3, initial_epoch=2)  # continuing a run (Keras) appends
    assert [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()] == [
        "epoch",
        "0",
        "1",
        "2",
    ]


def test_resume_auto_is_one_command_for_the_first_start_and_every_restart(tmp_path, data):
    x, y = data

    def command(callbacks=()):
        model = make_mlp(dropout=0.2)
        learner = Learner(loss="cross_entropy", seed=1, run_dir=tmp_path / "run", verbose=0)
        learner.fit(model, (x, y), epochs=4, batch_size=16, resume="auto", callbacks=list(callbacks))
        return learner, model

    straight = Learner(loss="cross_entropy", seed=1, run_dir=tmp_path / "straight", verbose=0)
    reference = make_mlp(dropout=0.2)
    straight.fit(reference, (x, y), epochs=4, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        command([CrashAtEpoch(2)])  # the first start: nothing to resume, a new run; killed in epoch 2
    learner, model = command()  # the restart resumes from run/checkpoints/last (end of epoch 1)
    assert learner.resumed and learner.history.epoch == [0, 1, 2, 3]
    for key, value in reference.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    again, again_model = command()  # a completed run started again: nothing left to train
    assert again.global_step == learner.global_step
    assert torch.equal(again_model[0].weight, model[0].weight)


def test_resume_auto_moves_an_attempt_without_checkpoints_aside(tmp_path, data):
    x, y = data
    learner = Learner(loss="cross_entropy", run_dir=tmp_path, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        learner.fit(make_mlp(), (x, y), epochs=2, callbacks=[CrashAtEpoch(0)])
    assert (tmp_path / "train.log").exists() and not any((tmp_path / "checkpoints").glob("*"))
    learner.fit(make_mlp(), (x, y), epochs=1, resume="auto")
    attempts = sorted(tmp_path.glob("attempt-*"))
    assert len(attempts) == 1 and (attempts[0] / "train.log").exists()
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 2  # header and the new run's one epoch


def test_the_accelerator_copies_batches_without_blocking_on_cuda_only(monkeypatch, data):
    """On CUDA, batches go from pinned memory to the GPU while it computes (no host sync per step).

    No GPU here: the accelerator's device is made to read "cuda", the one input of the decision;
    tests/test_gpu.py checks the real copies on a GPU.
    """
    from accelerate import Accelerator

    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(make_mlp(), data, epochs=1)
    assert learner.accelerator.dataloader_config.non_blocking is False  # the CPU: nothing to overlap
    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("cuda", 0)))
    assert learner._make_accelerator().dataloader_config.non_blocking is True


def test_verbose_per_call_overrides_the_learners_for_that_call_only(data, capsys):
    x, y = data
    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(make_mlp(), (x, y), epochs=2, verbose=2)
    printed = capsys.readouterr()
    assert "loss" in printed.out + printed.err and learner.verbose == 0
    learner.fit(make_mlp(), (x, y), epochs=2)
    learner.evaluate(learner.model, (x, y))
    printed = capsys.readouterr()
    assert printed.out + printed.err == ""
    with pytest.raises(ValueError, match=r"verbose \(0 silent, 1 progress bar, 2 one line per epoch\) must be one of"):
        learner.predict(learner.model, x, verbose=5)
    assert learner.verbose == 0
