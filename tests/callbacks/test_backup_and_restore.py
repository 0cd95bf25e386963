"""BackupAndRestore: the same fit started again continues exactly; the backup's life; arguments."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import BackupAndRestore, ModelCheckpoint


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Fails the fit at the start of epoch `epoch`, or right after optimizer step `step`."""

    def __init__(self, epoch: int | None = None, step: int | None = None) -> None:
        self.epoch, self.step = epoch, step

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch:
            raise Crash(f"epoch {epoch}")

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step and self.learner.sync_gradients:
            raise Crash(f"step {self.step}")


class FirstEpoch(Callback):
    """Records the epoch the fit starts at, as every callback sees it in on_train_begin."""

    def on_train_begin(self, logs):
        self.epoch = self.learner.epoch


def fit(callbacks, epochs=4, run_dir=None, model_seed=0, **options):
    """A fresh learner and model each time, as a restarted script would build them."""
    x, y = make_classification(n=70)
    learner = Learner(
        loss="cross_entropy", optimizer="adamw", lr=1e-2, verbose=0, seed=0, grad_accum_steps=2, run_dir=run_dir
    )
    learner.fit(
        make_mlp(dropout=0.2, seed=model_seed),
        (x, y),
        epochs=epochs,
        batch_size=8,
        validation_data=(x[:16], y[:16]),
        callbacks=callbacks,
        **options,
    )
    return learner


def weights(learner):
    return [value.clone() for value in learner.model.state_dict().values()]


def same(first, second):
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.fixture(scope="module")
def straight():
    return fit([])


@pytest.mark.parametrize(
    ("crash", "save_freq", "resumed_epoch"),
    [
        (CrashAt(epoch=2), "epoch", 2),
        (CrashAt(step=7), 3, 1),
        # Step 5 is epoch 0's last batch (9 batches, windows of 2): backed up there, as ModelCheckpoint
        # saves there; the resumed epoch 0 has no batch left and validates and ends as it did.
        (CrashAt(epoch=1), 5, 0),
    ],
)
def test_the_same_fit_started_again_continues_exactly(tmp_path, straight, crash, save_freq, resumed_epoch):
    backup = tmp_path / "backup"
    with pytest.raises(Crash):
        fit([crash, BackupAndRestore(backup, save_freq=save_freq)])
    assert backup.is_dir()  # kept after the failure
    first_epoch = FirstEpoch()
    resumed = fit(
        [first_epoch, BackupAndRestore(backup, save_freq=save_freq)], model_seed=1
    )  # the backup's weights win
    assert first_epoch.epoch == resumed_epoch  # restored before on_train_begin
    assert same(weights(straight), weights(resumed))
    assert resumed.history.history["val_loss"] == straight.history.history["val_loss"]
    # the epoch resumed in its middle reports its loss over all of its batches, not only the later ones
    assert resumed.history.history["loss"] == pytest.approx(straight.history.history["loss"], rel=1e-12)
    assert resumed.history.epoch == [0, 1, 2, 3]
    assert not backup.exists() and os.listdir(tmp_path) == ["backup.completed"]  # deleted, the completion recorded


def test_delete_checkpoint_false_keeps_the_final_backup(tmp_path):
    learner = fit([BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)], epochs=2)
    saved = json.loads((tmp_path / "backup" / "checkpoint.json").read_text())
    assert saved["loop"] == {**learner.loop_state(), "epoch": 2, "batch": 0}


def test_a_backup_takes_precedence_over_resume(tmp_path):
    fit([ModelCheckpoint(tmp_path / "epoch1")], epochs=1)
    with pytest.raises(Crash):
        fit([CrashAt(epoch=3), BackupAndRestore(tmp_path / "backup")])
    first_epoch = FirstEpoch()
    fit([first_epoch, BackupAndRestore(tmp_path / "backup")], resume=tmp_path / "epoch1")
    assert first_epoch.epoch == 3


def test_without_a_backup_dir_it_uses_the_runs_checkpoints_folder(tmp_path):
    with pytest.raises(Crash):
        fit([CrashAt(epoch=1), BackupAndRestore()], run_dir=tmp_path)
    assert (tmp_path / "checkpoints" / "backup" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="give a backup_dir, or set Learner"):
        fit([BackupAndRestore()])


def test_a_backup_dir_holding_other_checkpoints_is_refused(tmp_path):
    fit([ModelCheckpoint(tmp_path / "run" / "epoch1")], epochs=1)
    with pytest.raises(ValueError, match="folder holding other checkpoints"):
        fit([BackupAndRestore(tmp_path / "run")], epochs=1)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"save_freq": -1}, ValueError, "save_freq must be 'epoch' or a positive int"),
        ({"delete_checkpoint": "no"}, TypeError, "delete_checkpoint must be True or False"),
        ({"backup_dir": 1}, TypeError, r"backup_dir must be a path \(str or os.PathLike\) or None, got 1"),
    ],
)
def test_bad_arguments_fail_at_construction(options, error, match):
    with pytest.raises(error, match=match):
        BackupAndRestore(**options)


def test_a_completed_fit_started_again_does_not_train_from_scratch(tmp_path, straight):
    """The backup was deleted at the end; a kill after that, and the same command trained again from epoch 0."""
    finished = fit([BackupAndRestore(tmp_path / "backup")])
    assert os.listdir(tmp_path) == ["backup.completed"]
    with pytest.raises(ValueError, match=r"already completed .*backup.completed.*delete .*backup.completed"):
        fit([BackupAndRestore(tmp_path / "backup")])

    run = tmp_path / "run"
    fit([BackupAndRestore()], run_dir=run)  # the default ModelCheckpoint keeps checkpoints/last
    first_epoch = FirstEpoch()
    again = fit([first_epoch, BackupAndRestore()], run_dir=run, model_seed=1)
    assert first_epoch.epoch == 4 and again.global_step == finished.global_step  # resumed at the end: nothing trained
    assert same(weights(again), weights(straight))


def test_double_checkpoint_falls_back_to_the_previous_backup_when_the_newest_is_damaged(tmp_path, straight):
    backup = tmp_path / "backup"
    with pytest.raises(Crash):
        fit([CrashAt(epoch=3), BackupAndRestore(backup, double_checkpoint=True)])
    assert sorted(os.listdir(tmp_path)) == ["backup", "backup.previous"]
    assert json.loads((tmp_path / "backup.previous" / "checkpoint.json").read_text())["loop"]["epoch"] == 2
    weights_file = backup / "model.safetensors"
    damaged = bytearray(weights_file.read_bytes())
    damaged[-3] ^= 0xFF
    weights_file.write_bytes(bytes(damaged))
    first_epoch = FirstEpoch()
    resumed = fit([first_epoch, BackupAndRestore(backup, double_checkpoint=True)], model_seed=1)
    assert first_epoch.epoch == 2  # from the previous backup, exactly
    assert same(weights(straight), weights(resumed))
    assert os.listdir(tmp_path) == ["backup.completed"]
