"""Schedules and resume: a fit that crashes and is started again equals the uninterrupted one, in every combination.

Every kind of schedule (named per epoch and per step with warm-up, a function, chainable and non-chainable
torch schedulers, Keras's functions, torch's ReduceLROnPlateau) runs together with fitorch's
ReduceLROnPlateau, whose reductions scale the schedule; a callback raises mid-epoch or at an epoch start,
BackupAndRestore keeps the backup, and the same fit started again (new learner, new callbacks, a model
initialised differently) must end with the same rates, logs and weights, bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim import lr_scheduler

from conftest import Script, make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import BackupAndRestore, LearningRateScheduler, LRScheduler, ReduceLROnPlateau

SCRIPT = Path(__file__).parents[1] / "scripts" / "checkpoint_job.py"
_spec = importlib.util.spec_from_file_location("checkpoint_job", SCRIPT)
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

EPOCHS = 6  # 24 samples in batches of 4, windows of 2: 6 batches and 3 optimizer steps an epoch
VAL_LOSS = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85]  # a plateau of patience 1 reduces at the ends of epochs 2 and 5

SCHEDULES = {
    "cosine, warm-up": lambda: LRScheduler("cosine", warmup=2),
    "cosine per step, warm-up": lambda: LRScheduler("cosine", interval="step", warmup=4),
    "function": lambda: LRScheduler(lambda t: 0.8**t),
    "StepLR": lambda: LRScheduler(lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)),
    "LambdaLR per step, warm-up": lambda: LRScheduler(
        lambda opt: lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.2 * s)), interval="step", warmup=2
    ),
    "Keras (epoch, lr)": lambda: LearningRateScheduler(lambda epoch, lr: lr * 0.8),
    "Keras (epoch)": lambda: LearningRateScheduler(lambda epoch: 0.05 / (1 + epoch)),
    "torch ReduceLROnPlateau": lambda: LRScheduler(
        lambda opt: lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.7), monitor="val_loss"
    ),
}


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, epoch: int | None = None, step: int | None = None) -> None:
        self.epoch, self.step = epoch, step

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch:
            raise Crash(f"epoch {epoch}")

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step and self.learner.step_taken:
            raise Crash(f"step {self.step}")


# mid-epoch: backed up at step 7 (epoch 2, batch 1); at an epoch start: backed up after epoch 2, whose end
# reduced the rate (the backup is written after the plateau, so it holds the reduction).
CRASHES = {"mid-epoch": (lambda: CrashAt(step=8), 1), "epoch start": (lambda: CrashAt(epoch=3), "epoch")}


def fit(schedule, extra=(), model_seed=0):
    x, y = make_classification(n=24)
    learner = Learner(
        loss="cross_entropy", optimizer="sgd", lr=0.05, momentum=0.9, verbose=0, seed=0, grad_accum_steps=2
    )
    callbacks = [Script("val_loss", VAL_LOSS), schedule, ReduceLROnPlateau(patience=1, factor=0.5), *extra]
    learner.fit(make_mlp(seed=model_seed), (x, y), epochs=EPOCHS, batch_size=4, callbacks=callbacks)
    return learner


@pytest.fixture(scope="module")
def straight():
    return {name: fit(make()) for name, make in SCHEDULES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("crash", sorted(CRASHES))
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_crash_and_the_same_fit_again_equal_the_uninterrupted_fit(straight, tmp_path, name, crash):
    make_crash, save_freq = CRASHES[crash]
    backup = tmp_path / "backup"
    with pytest.raises(Crash):
        fit(SCHEDULES[name](), extra=[make_crash(), BackupAndRestore(backup, save_freq=save_freq)])
    resumed = fit(SCHEDULES[name](), extra=[BackupAndRestore(backup, save_freq=save_freq)], model_seed=1)
    reference = straight[name]
    assert resumed.history.history == reference.history.history  # rates, losses, everything logged
    for ours, theirs in zip(resumed.model.state_dict().values(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)
    assert len(set(reference.history.history["lr"])) > 2  # the schedule and the plateau both moved the rate


@pytest.mark.slow
def test_a_crash_and_the_same_command_again_in_a_new_process_equal_the_uninterrupted_fit(tmp_path):
    learner = job.make_learner()
    job.fit(learner, job.make_model(), job.SCHEDULE_EPOCHS, callbacks=job.schedule_callbacks())
    backup, out = tmp_path / "backup", tmp_path / "out"
    with pytest.raises(RuntimeError, match="crash at step 12"):  # the recipe's own crash, here in this process
        job.schedule(str(backup), str(out), crash_step=12)
    assert backup.is_dir() and not out.exists()
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "schedule", str(backup), str(out), "0"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    final, expected = load_file(out / "final.safetensors"), job.final_state(learner)
    assert final.keys() == expected.keys()
    assert [key for key in expected if not torch.equal(expected[key], final[key])] == []
    history = json.loads((out / "final.json").read_text())["history"]
    assert history == learner.history.history
    assert len(set(history["lr"])) == job.SCHEDULE_EPOCHS  # the schedule and the plateau moved the rate
