"""Keras's backup_and_restore_test.py, ported to fitorch (see helpers.py for the commit and the outcomes).

fitorch's backup differs from Keras's in where it stands after a failure, on purpose: checkpoint
writers run after every other callback (so a backup holds their state after the event), so a callback
that fails at an event leaves the backup of the event before; and a fit resumes inside the epoch
exactly where the backup was taken, where Keras trains that epoch again from its first batch.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fitorch import Callback, Learner
from fitorch.callbacks import BackupAndRestore
from keras_conformance.helpers import ports

FILE = "backup_and_restore_test.py::BackupAndRestoreCallbackTest::"


class Interrupting(Callback):
    """Fails the fit at the `epoch_int`-th epoch end or the `steps_int`-th batch end."""

    def __init__(self, steps_int=None, epoch_int=None) -> None:
        self.batch_count = self.epoch_count = 0
        self.steps_int, self.epoch_int = steps_int, epoch_int

    def on_epoch_end(self, epoch, logs):
        self.epoch_count += 1
        if self.epoch_count == self.epoch_int:
            raise RuntimeError("EpochInterruption")

    def on_train_batch_end(self, batch, logs):
        self.batch_count += 1
        if self.batch_count == self.steps_int:
            raise RuntimeError("StepsInterruption")


class Canary(nn.Module):
    """Counts its forward passes in a buffer, saved with the model (Keras's CanaryLayer)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("counter", torch.zeros(()))

    def forward(self, inputs):
        self.counter += 1
        return inputs


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(Canary(), nn.Linear(3, 1))


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(10, 3, generator=generator), torch.rand(10, 1, generator=generator)


def fit(model, callbacks, epochs):
    """Keras's set-up: 10 samples in batches of 4 (3 batches an epoch), mse, SGD."""
    learner = Learner(loss="mse", optimizer="sgd", lr=0.01, metrics=["mse"], verbose=0)
    return learner.fit(model, data(), epochs=epochs, batch_size=4, callbacks=callbacks)


def backup_position(backup_dir):
    loop = json.loads((backup_dir / "checkpoint.json").read_text())["loop"]
    return loop["epoch"], loop["batch"]


@ports(FILE + "test_save_freq_unknown_error", "different")
def test_save_freq_unknown_error():
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive int"):
        BackupAndRestore(backup_dir="backup_dir", save_freq="batch")
    with pytest.raises(TypeError, match="save_freq must be 'epoch' or a positive int"):  # Keras: ValueError
        BackupAndRestore(backup_dir="backup_dir", save_freq=0.15)


@ports(FILE + "test_best_case_step", "different")
def test_a_step_backup_resumes_exactly_where_it_was_taken(tmp_path):
    backup_dir = tmp_path / "subdir"
    model = make_model()
    with pytest.raises(RuntimeError, match="StepsInterruption"):
        fit(model, [BackupAndRestore(backup_dir, save_freq=1), Interrupting(steps_int=2)], epochs=2)
    assert backup_dir.exists()
    assert int(model[0].counter) == 2
    # The interruption came before the backup of batch 1 was written (writers run last): Keras's is at batch 1.
    assert backup_position(backup_dir) == (0, 1)
    history = fit(model, [BackupAndRestore(backup_dir, save_freq=1)], epochs=5)
    assert history.epoch[-1] == 4
    # Every batch of the 5 epochs ran exactly once in the weights' history (Keras trains epoch 0 again: 17).
    assert int(model[0].counter) == 15


@ports(FILE + "test_best_case_epoch", "different")
def test_an_epoch_backup_resumes_after_the_last_epoch_it_holds(tmp_path):
    backup_dir = tmp_path / "subdir"
    model = make_model()
    assert int(model[0].counter) == 0
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        fit(model, [BackupAndRestore(backup_dir, save_freq="epoch"), Interrupting(epoch_int=2)], epochs=6)
    assert backup_dir.exists()
    assert int(model[0].counter) == 6
    assert backup_position(backup_dir) == (1, 0)  # epoch 1's end failed before its backup (Keras: epoch 2)
    history = fit(model, [BackupAndRestore(backup_dir, save_freq="epoch")], epochs=5)
    assert history.epoch[-1] == 4
    assert int(model[0].counter) == 5 * 3


@ports(FILE + "test_backup_corrupted")
def test_a_damaged_backup_falls_back_to_the_previous_one(tmp_path):
    backup_dir = tmp_path / "subdir"
    model = make_model()
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        backup = BackupAndRestore(backup_dir, save_freq="epoch", double_checkpoint=True)
        fit(model, [backup, Interrupting(epoch_int=3)], epochs=6)  # backups of epochs 0 and 1
    assert int(model[0].counter) == 9
    (backup_dir / "model.safetensors").write_text("0")  # the newest backup is damaged
    history = fit(model, [BackupAndRestore(backup_dir, save_freq="epoch", double_checkpoint=True)], epochs=5)
    assert history.epoch[-1] == 4
    assert int(model[0].counter) == 5 * 3  # from the backup of epoch 0: epochs 1 to 4 train again


@ports(FILE + "test_model_deleted_case_epoch")
def test_the_backup_is_deleted_when_the_fit_completes(tmp_path):
    backup_dir = tmp_path / "subdir"
    fit(make_model(), [BackupAndRestore(backup_dir, save_freq="epoch")], epochs=2)
    assert not backup_dir.exists()


@ports(FILE + "test_backup_dir_empty_error")
def test_backup_dir_empty_error():
    with pytest.raises(ValueError, match="backup_dir must be a non-empty path"):
        BackupAndRestore(backup_dir="", save_freq="epoch")


@ports(FILE + "test_backup_dir_none_error", "different")
def test_without_a_backup_dir_the_backup_goes_under_run_dir(tmp_path):
    backup = BackupAndRestore(backup_dir=None, save_freq="epoch")  # accepted: it means run_dir/checkpoints/backup
    with pytest.raises(ValueError, match="give a backup_dir, or set Learner\\(run_dir=...\\)"):
        fit(make_model(), [backup], epochs=1)  # ... and without a run_dir, fit refuses it before training
    learner = Learner(loss="mse", verbose=0, run_dir=tmp_path / "run")
    with pytest.raises(RuntimeError):
        learner.fit(make_model(), data(), epochs=3, callbacks=[backup, Interrupting(epoch_int=2)])
    assert (tmp_path / "run" / "checkpoints" / "backup" / "checkpoint.json").exists()
