"""WeightAveraging: EMA and SWA against hand-written `AveragedModel` loops, the swap into the model, best
checkpoints of the averaged weights, and a bit-exact resume in a new process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, TensorDataset

from conftest import StopAtStep, make_classification, make_mlp
from fitorch import Callback, Learner, load_weights
from fitorch.callbacks import BackupAndRestore, EarlyStopping, ModelCheckpoint, WeightAveraging

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "averaging_job.py"
_spec = importlib.util.spec_from_file_location("averaging_job", SCRIPT)
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def copy_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def assert_same(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []


class EpochEnd(Callback):
    """Keeps the model's and the average's weights at every epoch end (list it after WeightAveraging)."""

    def __init__(self, averaging: WeightAveraging) -> None:
        self.averaging, self.model_at, self.averaged_at = averaging, [], []

    def on_epoch_end(self, epoch, logs):
        self.model_at.append(copy_of(self.model))
        self.averaged_at.append(copy_of(self.averaging.averaged_model.module))


def hand_written(model: nn.Module, loader: DataLoader, epochs: int, average: AveragedModel, due) -> list[float]:
    """SGD over `loader` in order, `average.update_parameters` where `due(epoch, step)` says; the averaged
    model's mean validation loss (on the whole data, in eval mode) after each epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step, val_losses = 0, []
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if due(epoch, step):
                average.update_parameters(model)
        if due(epoch, None):
            average.update_parameters(model)
        average.eval()
        with torch.no_grad():
            val_losses.append(float(F.cross_entropy(average(loader.dataset.tensors[0]), loader.dataset.tensors[1])))
    return val_losses


def fit(model: nn.Module, loader: DataLoader, epochs: int, callbacks: list) -> Learner:
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, momentum=0.9, verbose=0)
    x, y = loader.dataset.tensors
    learner.fit(model, loader, epochs, validation_data=(x, y), batch_size=None, callbacks=callbacks)
    return learner


def test_ema_equals_a_hand_written_averaged_model_loop_and_validation_runs_on_it():
    x, y = make_classification(n=60)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # same order on both sides: 8 steps an epoch
    reference_model = bn_model()
    reference = AveragedModel(reference_model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    val_losses = hand_written(reference_model, loader, 3, reference, lambda epoch, step: step and step > 3)

    averaging = WeightAveraging("ema", decay=0.9, start_step=3)
    record = EpochEnd(averaging)
    model = bn_model()
    learner = fit(model, loader, 3, [averaging, record])

    assert int(averaging.averaged_model.n_averaged) == 3 * 8 - 3
    assert_same(copy_of(reference), copy_of(averaging.averaged_model))
    assert_same(copy_of(reference.module), copy_of(model))  # the model ends with the averaged weights ...
    assert_same(copy_of(reference_model), averaging.state_dict()["trained"])  # ... and the trained ones are kept
    assert learner.history.history["val_loss"] == pytest.approx(val_losses, rel=1e-6)  # validated on the average
    for at_end, averaged in zip(record.model_at, record.averaged_at):
        assert_same(averaged, at_end)  # at every epoch end, the model holds the average
    reference.eval()
    with torch.no_grad():
        expected = float(F.cross_entropy(reference(x), y))
    assert learner.evaluate(model, (x, y))["loss"] == pytest.approx(expected, rel=1e-6)


def test_swa_from_an_epoch_recomputes_batch_norm_statistics_like_update_bn():
    x, y = make_classification(n=60)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    reference_model = bn_model()
    reference = AveragedModel(reference_model)
    hand_written(reference_model, loader, 4, reference, lambda epoch, step: step is None and epoch >= 1)
    update_bn(loader, reference)

    averaging = WeightAveraging("swa", start_epoch=1)  # every="epoch", update_bn=True by default for SWA
    model = bn_model()
    fit(model, loader, 4, [averaging])

    assert int(averaging.averaged_model.n_averaged) == 3
    assert_same(copy_of(reference), copy_of(averaging.averaged_model))  # BN statistics recomputed, like update_bn
    assert_same(copy_of(reference.module), copy_of(model))
    assert not torch.equal(model[1].running_mean, reference_model[1].running_mean)  # not the trained statistics


def test_model_checkpoint_and_early_stopping_keep_the_averaged_weights_as_the_best(tmp_path):
    x, y = make_classification(n=64)
    averaging = WeightAveraging("ema", decay=0.5)
    record = EpochEnd(averaging)
    stopper = EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    best = ModelCheckpoint(tmp_path / "best", monitor="val_loss", save_best_only=True)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, verbose=0, seed=0)
    model = make_mlp()
    callbacks = [averaging, record, stopper, best]
    history = learner.fit(model, (x, y), 6, validation_data=(x[:16], y[:16]), callbacks=callbacks)
    best_epoch = min(range(6), key=lambda epoch: history.history["val_loss"][epoch])
    saved = make_mlp(seed=1)
    load_weights(saved, tmp_path / "best")
    assert_same(record.averaged_at[best_epoch], copy_of(saved))
    assert_same(record.averaged_at[best_epoch], copy_of(model))  # EarlyStopping restored the same weights
    # The checkpoint also holds the trained weights, so that resuming from it trains on from them.
    state = json.loads((tmp_path / "best" / "checkpoint.json").read_text())["callbacks"]["WeightAveraging[0]"]
    assert set(state) == {"averaged", "trained"}


def test_with_use_averaged_false_the_model_keeps_the_trained_weights():
    x, y = make_classification(n=32)
    averaging = WeightAveraging("ema", decay=0.5, use_averaged=False)
    model, plain = make_mlp(), make_mlp()
    Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, verbose=0, seed=0).fit(model, (x, y), 2, batch_size=8)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, verbose=0, seed=0)
    learner.fit(plain, (x, y), 2, batch_size=8, validation_data=(x, y), callbacks=[averaging])
    assert_same(copy_of(model), copy_of(plain))  # the average never touched training or the weights
    assert not torch.equal(plain[0].weight, averaging.averaged_model.module[0].weight)
    assert averaging.state_dict().keys() == {"averaged"}


def test_a_second_fit_of_the_same_model_continues_from_the_trained_weights_and_the_average():
    x, y = make_classification(n=40)

    def run(splits: list[int]) -> dict[str, torch.Tensor]:
        learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-2, verbose=0, seed=2)
        averaging, model = WeightAveraging("ema", decay=0.8), make_mlp()
        for start, end in zip([0, *splits], [*splits, 4]):
            learner.fit(model, (x, y), end, initial_epoch=start, batch_size=8, callbacks=[averaging])
        return {**copy_of(model), **{f"avg.{k}": v for k, v in copy_of(averaging.averaged_model).items()}}

    assert_same(run([]), run([2]))


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_exact_at_an_epoch_end_and_mid_epoch(tmp_path):
    averaging = job.make_averaging()
    straight = job.fit(job.make_model(), 5, [averaging])
    expected = job.final_state(straight, averaging)

    # At an epoch end the model holds the averaged weights; the checkpoint keeps the trained ones too.
    job.fit(job.make_model(), 2, [job.make_averaging(), ModelCheckpoint(tmp_path / "epoch")])
    # A run that dies in the middle of epoch 3 (5 steps an epoch), at step 13; its last backup is from step 12.
    with pytest.raises(KeyboardInterrupt):
        job.fit(
            job.make_model(),
            5,
            [job.make_averaging(), StopAtStep(13), BackupAndRestore(tmp_path / "backup", save_freq=4)],
        )
    loop = json.loads((tmp_path / "backup" / "checkpoint.json").read_text())["loop"]
    assert (loop["epoch"], loop["global_step"]) == (2, 12) and 0 < loop["batch"] < 9

    arguments = [str(tmp_path / name) for name in ("epoch", "out_epoch", "backup", "out_mid")]
    result = subprocess.run([sys.executable, str(SCRIPT), "5", *arguments], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    for out in ("out_epoch", "out_mid"):
        assert_same(expected, load_file(tmp_path / out / "final.safetensors"))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"mode": "polyak"}, ValueError, "WeightAveraging: mode must be one of 'ema', 'swa', got 'polyak'"),
        ({"decay": 1.0}, ValueError, r"decay must be a number in \(0, 1\), got 1.0"),
        ({"mode": "swa", "decay": 0.9}, ValueError, "decay applies to mode='ema' only"),
        ({"every": 0}, ValueError, "every must be 'epoch' or a positive int"),
        ({"start_epoch": -1}, ValueError, "start_epoch must be an int >= 0, got -1"),
        ({"start_step": 1.5}, TypeError, "start_step must be an int >= 0, got 1.5"),
        ({"use_averaged": 1}, TypeError, "use_averaged must be True or False, got 1"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(options, error, message):
    with pytest.raises(error, match=message):
        WeightAveraging(**options)
