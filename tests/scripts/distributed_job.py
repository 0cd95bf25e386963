"""One script, started by tests/test_distributed.py under `torchrun --nproc_per_node 2` (or plain python).

Usage: python distributed_job.py SCENARIO OUT_DIR. Each process writes OUT_DIR/rank<R>.json with what
it saw, so the test can compare ranks with each other and with a single process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_classification, make_mlp  # noqa: E402

from fitorch import Callback, Learner  # noqa: E402


class StopOnRank(Callback):
    """Asks to stop on one rank only: at the end of `epoch`, or after global step `step`."""

    def __init__(self, rank, epoch=None, step=None):
        self.rank, self.epoch, self.step = rank, epoch, step

    def _mine(self):
        return self.learner.accelerator.process_index == self.rank

    def on_epoch_end(self, epoch, logs):
        if self._mine() and epoch == self.epoch:
            self.learner.stop_training = True

    def on_train_batch_end(self, batch, logs):
        if self._mine() and self.learner.global_step == self.step:
            self.learner.stop_training = True


class FailOnRank(Callback):
    def __init__(self, rank):
        self.rank = rank

    def on_epoch_begin(self, epoch, logs):
        if epoch == 1 and self.learner.accelerator.process_index == self.rank:
            raise RuntimeError(f"planned failure on rank {self.rank}")


def numbers(out):
    """lr=0 keeps the model fixed, so training values must equal a one-process evaluation."""
    x, y = make_classification(n=101)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.0, metrics=["accuracy"], verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=2, batch_size=8, validation_data=(x, y))
    predictions = learner.predict(make_mlp(), x, batch_size=8)
    return {
        "history": history.history,
        "evaluate": learner.evaluate(make_mlp(), (x, y), batch_size=8),
        "predictions": predictions.tolist(),
        "distributed_type": str(learner.accelerator.distributed_type),
        "num_processes": learner.accelerator.num_processes,
    }


def stop(out):
    x, y = make_classification(n=64)
    learner = Learner(loss="cross_entropy", verbose=0)
    at_epoch = learner.fit(make_mlp(), (x, y), epochs=6, batch_size=8, callbacks=[StopOnRank(rank=1, epoch=2)])
    epoch_steps = learner.global_step
    at_step = learner.fit(make_mlp(), (x, y), epochs=6, batch_size=8, callbacks=[StopOnRank(rank=1, step=5)])
    return {"epochs": at_epoch.epoch, "epoch_steps": epoch_steps, "step_epochs": at_step.epoch, "steps": learner.global_step}


def fail(out):
    x, y = make_classification(n=64)
    Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=3, batch_size=8, callbacks=[FailOnRank(0)])
    return {}


SCENARIOS = {"numbers": numbers, "stop": stop, "fail": fail}

if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = SCENARIOS[scenario](out)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    (out / f"rank{rank}.json").write_text(json.dumps(result))
