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
from conftest import AutocastProbe, make_classification, make_mlp  # noqa: E402
from fitorch import Callback, Learner  # noqa: E402
from fitorch.callbacks import (  # noqa: E402
    BackupAndRestore,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    Throughput,
    WeightAveraging,
)


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


def tools(out):
    """lr_find (then a fit, equal to one without it), Throughput on 101 samples, SWA with batch norm."""
    x, y = make_classification(n=101)

    def fit_after(sweep):
        learner, model = Learner(loss="cross_entropy", seed=1, verbose=0), make_mlp(dropout=0.2)
        result = learner.lr_find(model, (x, y), num_steps=30, batch_size=8) if sweep else None
        learner.fit(model, (x, y), 2, batch_size=8)
        return result, [p.tolist() for p in model.parameters()]

    (result, swept), (_, straight) = fit_after(True), fit_after(False)
    throughput = Throughput()
    nn = torch.nn
    bn_model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    averaging = WeightAveraging("swa", start_epoch=1)
    history = Learner(loss="cross_entropy", seed=2, verbose=0).fit(
        bn_model, (x, y), 3, batch_size=8, callbacks=[throughput, averaging]
    )
    return {
        "rates": result.rates,
        "losses": result.losses,
        "suggestion": result.suggestion,
        "fit_after_lr_find_equal": swept == straight,
        "samples": throughput.samples,
        "samples_per_second": history.history["samples_per_second"],
        "averaged": {key: value.tolist() for key, value in averaging.averaged_model.state_dict().items()},
    }


def precision(out):
    """bf16 must hold in every call on the same model (Accelerate skips a model it prepared before)."""
    x, y = make_classification(n=32)
    model, seen = AutocastProbe(), {}
    learner = Learner(loss="cross_entropy", mixed_precision="bf16", verbose=0)
    for name, call in [
        ("fit", lambda: learner.fit(model, (x, y), epochs=1, batch_size=8)),
        ("fit_again", lambda: learner.fit(model, (x, y), epochs=1, batch_size=8)),
        ("evaluate", lambda: learner.evaluate(model, (x, y), batch_size=8)),
        ("predict", lambda: learner.predict(model, x, batch_size=8)),
    ]:
        model.autocast.clear()
        call()
        seen[name] = sorted(set(model.autocast))
    return {"autocast": seen, "attributes": sorted(vars(model))}


class RankScript(Callback):
    """Per-process monitored values (a metric computed on each rank's own shard, say): rank r reads values[r]."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, epoch, logs):
        logs["val_rank_metric"] = self.values[self.learner.accelerator.process_index][epoch]


def agree(out):
    """Decisions that change weights or stop training are taken once and agreed by all ranks."""
    x, y = make_classification(n=64)
    values = [[1.0, 0.5, 0.9, 0.9, 0.9, 0.9], [1.0, 0.9, 0.4, 0.9, 0.9, 0.9]]  # best: epoch 1 on rank 0, 2 on rank 1
    stopper = EarlyStopping(monitor="val_rank_metric", patience=2, restore_best_weights=True)
    plateau = ReduceLROnPlateau(monitor="val_rank_metric", patience=1, factor=0.5)
    best = ModelCheckpoint(out / "best", monitor="val_rank_metric", save_best_only=True)
    model = make_mlp()
    history = Learner(loss="cross_entropy", lr=0.05, verbose=0).fit(
        model, (x, y), epochs=6, batch_size=8, callbacks=[RankScript(values), plateau, stopper, best]
    )
    return {
        "epochs": history.epoch,
        "lr": history.history["lr"],
        "checkpoint_best": best.best,
        "best_epoch": stopper.best_epoch,
        "weights": [round(float(v), 7) for v in torch.cat([p.detach().flatten() for p in model.parameters()])[:20]],
    }


class CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def cross_save(out):
    """One process: an epoch-end checkpoint, and a backup inside an epoch (8 batches an epoch)."""
    x, y = make_classification(n=64)
    learner = Learner(loss="cross_entropy", seed=5, verbose=0)
    callbacks = [ModelCheckpoint(out / "epoch{epoch}"), BackupAndRestore(out / "mid", save_freq=3), CrashAtStep(11)]
    try:
        learner.fit(make_mlp(), (x, y), epochs=3, batch_size=8, callbacks=callbacks)
    except KeyboardInterrupt:
        pass
    return {}


def cross_resume(out):
    """Two processes resume what one saved: inside an epoch refused, at an epoch end continued."""
    x, y = make_classification(n=64)
    learner = Learner(loss="cross_entropy", seed=5, verbose=0)
    try:
        learner.fit(make_mlp(), (x, y), epochs=3, batch_size=8, resume=out / "mid")
        refused = ""
    except ValueError as error:
        refused = str(error)
    history = learner.fit(make_mlp(), (x, y), epochs=3, batch_size=8, resume=out / "epoch1")
    return {"refused": refused, "epochs": history.epoch, "global_step": learner.global_step}


class Heartbeat(Callback):
    """Rank 0 writes its global step to a file after every batch (slowed a little, so signals land mid-run)."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, batch, logs):
        time.sleep(0.01)
        if self.learner.accelerator.process_index == 0:
            self.path.write_text(str(self.learner.global_step))


def preempt(out):
    """The same command each time: SIGTERM on the launcher ends it with a backup; the next start resumes."""
    x, y = make_classification(n=96)
    callbacks = [Heartbeat(out / "heartbeat"), BackupAndRestore(out / "backup")]
    learner = Learner(loss="cross_entropy", seed=3, grad_accum_steps=2, verbose=0, callbacks=callbacks)
    model = make_mlp(dropout=0.2)
    learner.fit(model, (x, y), epochs=12, batch_size=4)
    if learner.is_main_process:
        save_file(model.state_dict(), str(out / "final.safetensors"))
    return {"global_step": learner.global_step, "history": learner.history.history}


class SampleIds(Learner):
    """Records the sample ids (the first feature) of every training batch this process trains on."""

    def train_step(self, batch):
        self.seen.append(batch[0][:, 0].long().tolist())
        return super().train_step(batch)


def batched(out):
    """Batches fetched by index (tensors, an ArrayDataset) under a shuffle, steps_per_epoch and weights.

    lr=0 keeps the model fixed, so the epoch values must equal one process's, and the ids show how
    the batches were shared out.
    """
    x, y = make_classification(n=101)
    x[:, 0] = torch.arange(101, dtype=torch.float32)  # the first feature is the sample's id
    learner = SampleIds(loss="cross_entropy", optimizer="sgd", lr=0.0, metrics=["accuracy"], seed=1, verbose=0)
    learner.seen = []
    weights = torch.linspace(0.5, 1.5, 101)
    history = learner.fit(
        make_mlp(), (x, y), epochs=2, batch_size=8, sample_weight=weights, class_weight={0: 1.0, 1: 2.0, 2: 0.5},
        validation_split=0.2,
    )  # fmt: skip
    return {"history": history.history, "seen": learner.seen, "shuffle_seed": learner.state.shuffle_seed}


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
    "tools": tools,
    "preempt": preempt,
    "cross_save": cross_save,
    "cross_resume": cross_resume,
    "agree": agree,
    "precision": precision,
    "numbers": numbers,
    "stop": stop,
    "fail": fail,
    "run_dir": run_dir,
    "resume": resume,
    "batched": batched,
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
