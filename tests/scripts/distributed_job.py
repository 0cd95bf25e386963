"""One script, started by tests/test_distributed.py under `torchrun --nproc_per_node 2` (or plain python).

Usage: python distributed_job.py SCENARIO OUT_DIR. Each process writes OUT_DIR/rank<R>.json with what
it saw, so the test can compare ranks with each other and with a single process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fitorch.distributed  # noqa: E402
from conftest import make_classification, make_mlp  # noqa: E402
from fitorch import Callback, Learner  # noqa: E402
from fitorch.callbacks import BackupAndRestore, EarlyStopping, ModelCheckpoint  # noqa: E402


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
    """Stops asked on rank 1 only: at an epoch's end, and at steps around the vote points (every 16 batches)."""
    x, y = make_classification(n=64)
    learner = Learner(loss="cross_entropy", verbose=0)
    at_epoch = learner.fit(make_mlp(), (x, y), epochs=6, batch_size=8, callbacks=[StopOnRank(rank=1, epoch=2)])
    result = {"epochs": at_epoch.epoch}
    x, y = make_classification(n=80)  # 20 batches of 2 per process and epoch
    for step in (5, 18, 20):
        history = learner.fit(make_mlp(), (x, y), epochs=3, batch_size=2, callbacks=[StopOnRank(rank=1, step=step)])
        result[f"step {step}"] = {"steps": learner.global_step, "epochs": history.epoch}
    # As on GPUs, where the default group (NCCL) cannot carry CPU tensors: the votes go to a gloo group.
    fitorch.distributed.dist.get_backend = lambda group=None: "nccl"
    history = learner.fit(make_mlp(), (x, y), epochs=3, batch_size=2, callbacks=[StopOnRank(rank=1, step=5)])
    result["side group"] = {"steps": learner.global_step, "epochs": history.epoch}
    assert fitorch.distributed._side_group[1] is not torch.distributed.group.WORLD
    return result


def fail(out):
    x, y = make_classification(n=64)
    Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=3, batch_size=8, callbacks=[FailOnRank(0)])
    return {}


def run_dir(out):
    """Default run_dir callbacks, a best-only checkpoint, and early stopping that must stop both ranks together."""
    x, y = make_classification(n=96)
    learner = Learner(
        loss="cross_entropy",
        lr=0.05,
        run_dir=out / "run",
        verbose=1,
        callbacks=[
            ModelCheckpoint(out / "run" / "best", monitor="val_loss", save_best_only=True),
            EarlyStopping(monitor="val_loss", patience=1, min_delta=0.05),
        ],
    )
    history = learner.fit(make_mlp(), (x, y), epochs=30, batch_size=8, validation_split=0.25)
    return {"epochs": history.epoch, "val_loss": history.history["val_loss"], "log_lines": len(history.epoch)}


class KillAt(Callback):
    """SIGKILLs rank 0 at the start of `epoch`, after the backup of the previous epoch is complete."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch and self.learner.accelerator.process_index == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def resume(out, kill_at=None):
    x, y = make_classification(n=80)
    callbacks = [BackupAndRestore(out / "backup")] + ([KillAt(int(kill_at))] if kill_at else [])
    learner = Learner(loss="cross_entropy", seed=3, grad_accum_steps=2, verbose=0, callbacks=callbacks)
    model = make_mlp(dropout=0.2)
    learner.fit(model, (x, y), epochs=5, batch_size=8)
    if learner.is_main_process:
        save_file(model.state_dict(), str(out / "final.safetensors"))
    return {"global_step": learner.global_step}


def nodes(out):
    """`numbers` with a run_dir, as each node of a two-node job runs it (tests/test_distributed.py)."""
    x, y = make_classification(n=101)
    run = out / "run"
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.0, metrics=["accuracy"], verbose=0, run_dir=run)
    history = learner.fit(make_mlp(), (x, y), epochs=2, batch_size=8, validation_data=(x, y))
    return {
        "history": history.history,
        "evaluate": learner.evaluate(make_mlp(), (x, y), batch_size=8),
        "num_processes": learner.accelerator.num_processes,
        "node_rank": int(os.environ.get("GROUP_RANK", "0")),
    }


class WaitForGo(Callback):
    """Records this process's pid once the fit (and its run_dir lock) has started, then waits for `out/go`."""

    def __init__(self, out):
        self.out = out

    def on_train_begin(self, logs):
        (self.out / "worker.pid").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (self.out / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def hold(out):
    """A fit on out/run that holds its run_dir lock until the test creates out/go."""
    x, y = make_classification(n=32)
    learner = Learner(loss="cross_entropy", verbose=0, run_dir=out / "run", callbacks=[WaitForGo(out)])
    learner.fit(make_mlp(), (x, y), epochs=1, batch_size=8)
    return {"global_step": learner.global_step}


def unshared(out):
    """Each process resumes from its own run_dir, as nodes without a shared filesystem do."""
    x, y = make_classification(n=32)
    rank = int(os.environ.get("RANK", "0"))
    learner = Learner(loss="cross_entropy", verbose=0, run_dir=out / f"node{rank}")
    learner.fit(make_mlp(), (x, y), epochs=2, batch_size=8, resume=True)
    return {"global_step": learner.global_step}


SCENARIOS = {
    "numbers": numbers,
    "stop": stop,
    "fail": fail,
    "run_dir": run_dir,
    "resume": resume,
    "nodes": nodes,
    "hold": hold,
    "unshared": unshared,
}

if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = SCENARIOS[scenario](out, *sys.argv[3:])
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    (out / f"rank{rank}.json").write_text(json.dumps(result))
