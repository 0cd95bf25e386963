"""Interrupt a fit and continue it with `BackupAndRestore`: the result equals an uninterrupted run.

Three fits of the same seeded model on scikit-learn's handwritten digits:

1. an uninterrupted reference run;
2. the same fit with `BackupAndRestore`, interrupted in the middle of an epoch, as Ctrl-C, a
   preempted job or a crash would stop it; the backup of the last finished epoch stays on disk;
3. the same `fit` call again, with a fresh model and learner, as a restarted job would make it: it
   restores the backup (weights, optimizer, counters, random states, history) and trains on.

The last run ends with exactly the weights and history of the first (on the CPU; see
docs/checkpoints.md), and the backup is deleted once the fit completes.

Run it with `python examples/resume.py` (`--fast` for fewer epochs).
"""

import argparse
import os
import tempfile

import torch
from sklearn.datasets import load_digits
from torch import nn

from fitorch import Callback, Learner, latest_checkpoint, seed_everything
from fitorch.callbacks import BackupAndRestore


class Interrupt(Callback):
    """Raises KeyboardInterrupt, as Ctrl-C would, before training batch `batch` of epoch `epoch`."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_begin(self, batch, logs):
        if (self.learner.epoch, batch) == (self.epoch, self.batch):
            raise KeyboardInterrupt


class ReportStart(Callback):
    """Prints where the fit starts: epoch 0, or where a restored backup left off."""

    def on_train_begin(self, logs):
        print(f"  fit starts at epoch {self.learner.epoch}, step {self.learner.global_step}")


def make_model() -> nn.Module:
    seed_everything(0)  # the same initial weights in every run
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))


def train(model: nn.Module, epochs: int, callbacks: list[Callback]):
    """The one fit call of this script; only the callbacks differ between the runs."""
    x, y = load_digits(return_X_y=True)
    learner = Learner(loss="cross_entropy", optimizer="adamw", lr=3e-3, metrics=["accuracy"], seed=0, verbose=0)
    return learner.fit(model, (x / 16, y), epochs=epochs, validation_split=0.2, batch_size=64, callbacks=callbacks)


def main(fast: bool = False) -> bool:
    epochs, stop_at = (4, 2) if fast else (12, 7)
    reference = make_model()
    print("uninterrupted run:")
    expected = train(reference, epochs, callbacks=[ReportStart()])

    with tempfile.TemporaryDirectory() as folder:
        backup_dir = os.path.join(folder, "backup")  # give every run a backup folder of its own
        print("run with a backup:")
        try:
            callbacks = [BackupAndRestore(backup_dir), ReportStart(), Interrupt(stop_at, batch=10)]
            train(make_model(), epochs, callbacks)
        except KeyboardInterrupt:
            kept = latest_checkpoint(backup_dir) is not None
            print(f"  interrupted in epoch {stop_at} at batch 10; backup kept: {kept}")

        # A restarted job: new objects, the same call. The backup is restored before on_train_begin.
        print("the same fit, started again:")
        model = make_model()
        history = train(model, epochs, callbacks=[BackupAndRestore(backup_dir), ReportStart()])
        print(f"  history of epochs {history.epoch}; backup deleted: {latest_checkpoint(backup_dir) is None}")

    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    same_history = history.history == expected.history
    print(f"resumed run equals the uninterrupted run: weights {same_weights}, history {same_history}")
    return same_weights and same_history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="four epochs, for the test suite")
    main(parser.parse_args().fast)
