"""The training recipe of the checkpoint tests, and the processes they start.

Imported by the tests (the recipe, so both sides train the same thing) and run as a script:

    python checkpoint_job.py resume EPOCHS CHECKPOINT OUT [CHECKPOINT OUT ...]   # continue runs to EPOCHS
    python checkpoint_job.py crash WORKDIR KILLS SEED          # the SIGKILL test's fork server
    python checkpoint_job.py schedule BACKUP OUT CRASH_STEP    # a scheduled fit that fails at a step (0: never)

The crash server imports torch and fitorch once, then forks the training children (a fresh
interpreter per kill would cost seconds each): each child resumes from the newest backup, trains,
and is killed with SIGKILL at a random moment after a random one of its renames (each rename tells
the parent through a pipe, then sleeps a little, widening the moment between a save's two renames),
so that kills land inside saves and between them whatever the speed of the disk.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import fitorch
from fitorch import Callback, Learner, latest_checkpoint, load_checkpoint
from fitorch.callbacks import BackupAndRestore, LRScheduler, ReduceLROnPlateau

SAMPLES, FEATURES, CLASSES, BATCH_SIZE = 70, 8, 3, 8  # 9 batches an epoch, the last one short


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    return x, (x @ torch.randn(FEATURES, CLASSES, generator=generator)).argmax(dim=1)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, CLASSES))


def make_learner(**options) -> Learner:
    """AdamW, dropout, shuffling (fitorch's loaders shuffle by default) and accumulation windows of 2."""
    return Learner(
        loss="cross_entropy",
        optimizer="adamw",
        lr=1e-2,
        metrics=["accuracy"],
        seed=7,
        verbose=0,
        grad_accum_steps=2,
        **options,
    )


def fit(learner: Learner, model: nn.Module, epochs: int, **options):
    x, y = make_data()
    return learner.fit(model, (x, y), epochs=epochs, batch_size=BATCH_SIZE, validation_data=(x[:24], y[:24]), **options)


class Patience(Callback):
    """A minimal early-stopping counter: epochs since the validation loss last improved by 0.1, and its best."""

    def __init__(self) -> None:
        self.wait, self.best = 0, None

    def on_epoch_end(self, epoch, logs):
        value = logs["val_loss"]  # falls by about 0.07 an epoch here, so a min_delta of 0.1 moves the counter
        if self.best is None or value < self.best - 0.1:
            self.best, self.wait = value, 0
        else:
            self.wait += 1

    def state_dict(self):
        return {"wait": self.wait, "best": self.best}

    def load_state_dict(self, state):
        self.wait, self.best = state["wait"], state["best"]


def final_state(learner: Learner) -> dict[str, torch.Tensor]:
    """Model weights and every optimizer state tensor, flattened, for a bit-exact comparison."""
    tensors = {f"model.{name}": value.detach().clone() for name, value in learner.model.state_dict().items()}
    for index, state in learner.optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value.clone() for key, value in state.items()})
    return tensors


def write_final(learner: Learner, out: str | Path, **extra) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(final_state(learner), out / "final.safetensors")
    (out / "final.json").write_text(json.dumps({"history": learner.history.history, **extra}))


# ---------------------------------------------------------------------------- resume in a new process


def resume(epochs: int, checkpoint: str, out: str) -> None:
    """Continue the run saved in `checkpoint` to `epochs`; a model initialised differently proves the load."""
    learner, patience = make_learner(), Patience()
    fit(learner, make_model(seed=123), epochs, resume=checkpoint, callbacks=[patience])
    write_final(learner, out, patience=patience.state_dict())


# ---------------------------------------------------------------------------- a schedule across processes


SCHEDULE_EPOCHS, SCHEDULE_SAVE_FREQ = 4, 3  # 4 epochs of 5 optimizer steps, a backup every 3 steps


def schedule_callbacks() -> list[Callback]:
    """A per-step torch schedule after a warm-up, scaled by a plateau that reduces at most epoch ends."""
    step_lr = lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.7)
    # val_loss falls by about 0.07 an epoch here, less than min_delta: most epochs count as bad.
    return [LRScheduler(step_lr, interval="step", warmup=3), ReduceLROnPlateau(patience=0, factor=0.5, min_delta=0.1)]


class FailAtStep(Callback):
    """A real crash: the fit fails right after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step and self.learner.step_taken:
            raise RuntimeError(f"crash at step {self.step}")


def schedule(backup: str, out: str, crash_step: int) -> None:
    """The scheduled fit with a backup; fails at `crash_step` (0: runs to the end and writes its final state)."""
    callbacks = [*schedule_callbacks(), BackupAndRestore(backup, save_freq=SCHEDULE_SAVE_FREQ)]
    if crash_step:
        callbacks.append(FailAtStep(crash_step))
    learner = make_learner()
    fit(learner, make_model(), SCHEDULE_EPOCHS, callbacks=callbacks)
    write_final(learner, out)


# ---------------------------------------------------------------------------- the SIGKILL test


CRASH_EPOCHS, CRASH_SAVE_FREQ = 20, 2  # 20 epochs of 5 optimizer steps, a backup every 2 steps
RENAME_SECONDS = 0.01  # widens the moment between a save's two renames, the most delicate one


def report_renames(pipe: int) -> None:
    """Make every rename of this process tell the parent it is about to happen, then take a while."""
    real = os.replace

    def replace(*args, **kwargs):
        os.write(pipe, b"s")
        time.sleep(RENAME_SECONDS)
        return real(*args, **kwargs)

    os.replace = replace


def crash_child(backup: str | None, out: str, log: str, ready: int) -> None:
    """One training process: check that the newest backup loads, then continue the run from it.

    Without `backup`, the uninterrupted reference run, which writes no checkpoint at all.
    """
    torch.set_num_threads(1)
    report_renames(ready)
    callbacks = [fitorch.callbacks.LambdaCallback(on_train_begin=lambda logs: os.write(ready, b"r"))]
    if backup is not None:
        newest = latest_checkpoint(backup)
        step = load_checkpoint(make_model(), newest)["loop"]["global_step"] if newest else 0
        with open(log, "a") as file:
            file.write(json.dumps({"pid": os.getpid(), "resumed_at_step": step}) + "\n")
        callbacks.append(BackupAndRestore(backup, save_freq=CRASH_SAVE_FREQ, delete_checkpoint=False))
    learner = make_learner()
    fit(learner, make_model(), CRASH_EPOCHS, callbacks=callbacks)
    write_final(learner, out)


def fork(backup: str | None, out: str, log: str) -> tuple[int, int]:
    """Start a training child; return its pid and the read end of its 'training began' pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read)
            crash_child(backup, out, log, write)
        except BaseException as error:  # report any failure through the exit code
            print(f"child failed: {error!r}", file=sys.stderr, flush=True)
            code = 3
        os._exit(code)
    os.close(write)
    return pid, read


def wait_for(pid: int, pipe: int, signals: int, timeout: float = 60.0) -> None:
    """Wait until the child has sent `signals` more bytes: 'r' when training begins, 's' before each rename."""
    for _ in range(signals):
        readable, _, _ = select.select([pipe], [], [], timeout)
        if not readable or not os.read(pipe, 1):
            raise RuntimeError(f"child {pid} stopped signalling (status {os.waitpid(pid, os.WNOHANG)[1]})")


def leftovers(backup: str) -> list[str]:
    """Hidden entries a save in progress leaves beside the backup (its temporary or aside copy)."""
    parent, name = os.path.split(backup)
    return [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")] if os.path.isdir(parent) else []


def run_to_end(backup: str | None, out: str, log: str) -> None:
    pid, ready = fork(backup, out, log)
    status = os.waitpid(pid, 0)[1]
    os.close(ready)
    if status != 0:
        raise RuntimeError(f"the run to the end failed (status {status})")


def crash(workdir: str, kills: int, seed: int) -> None:
    work, rng = Path(workdir), random.Random(seed)
    backup, log = str(work / "backup"), str(work / "children.jsonl")
    run_to_end(None, str(work / "reference"), log)
    mid_save = between_renames = 0
    for _ in range(kills):
        before = set(leftovers(backup))
        pid, ready = fork(backup, str(work / "never_written"), log)
        # Kill at a random moment measured from a random rename of a save (or from the start of
        # training): the kills land in saves and between them on any machine, whatever its disk speed.
        wait_for(pid, ready, 1 + rng.randint(0, 4))
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
        os.close(ready)
        if not os.WIFSIGNALED(status):
            raise RuntimeError(f"child {pid} ended before its kill (status {status}): the run is too short")
        fresh = set(leftovers(backup)) - before  # what this kill left: a temporary or an aside copy
        mid_save += bool(fresh)
        between_renames += bool(fresh) and not os.path.exists(backup)
    run_to_end(backup, str(work / "resumed"), log)
    summary = {"kills": kills, "mid_save_kills": mid_save, "between_renames": between_renames}
    (work / "summary.json").write_text(json.dumps(summary))


# ---------------------------------------------------------------------------- preemption


class SignalAt(Callback):
    """Sends this process a real signal after the optimizer step `step` (a scheduler preempting the job)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step and self.learner.sync_gradients:
            os.kill(os.getpid(), self.signum)


def preempt(out: str, step: str = "0", signal_name: str = "SIGTERM") -> None:
    """The same command each time: a backup every epoch; `step` > 0 sends `signal_name` after that step."""
    callbacks = [BackupAndRestore(str(Path(out) / "backup"))]
    if int(step):
        callbacks.append(SignalAt(int(step), getattr(signal, signal_name)))
    learner = make_learner()
    fit(learner, make_model(), 4, callbacks=callbacks)
    write_final(learner, out)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "resume":
        torch.set_num_threads(1)
        for checkpoint, out in zip(arguments[1::2], arguments[2::2]):
            resume(int(arguments[0]), checkpoint, out)
    elif command == "schedule":
        torch.set_num_threads(1)
        schedule(arguments[0], arguments[1], int(arguments[2]))
    elif command == "crash":
        torch.set_num_threads(1)  # before any work, so that forked children inherit no thread pool
        torch.optim.AdamW(make_model().parameters())  # imports torch._dynamo once, not in every child
        crash(arguments[0], int(arguments[1]), int(arguments[2]))
    elif command == "preempt":
        torch.set_num_threads(1)
        preempt(*arguments)
    else:
        raise SystemExit(f"unknown command {command!r}")
