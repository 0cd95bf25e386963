"""What the processes of a distributed fit agree on, and how, without stalling a training step.

The loop asks three things of this module, each in one line:

- `StopVote`: one decision to stop. Any process may set `learner.stop_training` (or be sent a
  preemption signal); all of them stop after the same batch. Under several processes the votes
  are compared every `VOTE_EVERY` batches by a non-blocking all-reduce that is read one batch
  later, and at the end of every epoch: no step waits for a round trip between processes (on a
  GPU none waits for the device either: the votes are CPU tensors on a gloo process group).
  Why not every batch: a collective call costs about as much as a small training step on gloo,
  even when nobody waits for it (benchmarks/analysis.md).
- `check_same_checkpoint`: before a resume, every process must be about to read the same
  checkpoint; a node that cannot see it (no shared filesystem) is refused on every process
  instead of silently training from other weights.
- `forget_prepared`: drops Accelerate's references to what it prepared at the end of a call, as
  `Accelerator.free_memory` does, without its full garbage collection.

On one process nothing here makes a collective call.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object

from fitorch.storage import METADATA_FILE

# Batches between two votes on `stop_training` under several processes. A vote costs one collective
# call (0.5 ms of a 3 ms step of the tiny benchmark on gloo, waited for or not); every 16 batches it
# cost 1-9% there in runs on a shared 2-core machine (docs/performance.md), and a stop takes effect at
# most 17 batches after it was asked.
VOTE_EVERY = 16

# `(default group, gloo group)`: the gloo group that carries the votes when the default group
# cannot (NCCL), made once per default group, since making one is a collective call.
_side_group: tuple[Any, Any] | None = None


def _vote_group() -> Any:
    """The process group for CPU votes: the default one when it speaks gloo, else a gloo group made once."""
    global _side_group
    default = dist.group.WORLD
    if "gloo" in str(dist.get_backend(default)):
        return default
    if _side_group is None or _side_group[0] is not default:
        # Every process gets here at the same point: StopVote is made at the start of each fit.
        _side_group = (default, dist.new_group(backend="gloo"))
    return _side_group[1]


class StopVote:
    """Agrees across processes on whether to stop, without a blocking round trip per batch.

    Each process votes a code: 0 to go on, a larger number to stop (the learner uses 1 for
    `stop_training` and 2 for a preemption signal); the largest code any process voted wins.
    Every process calls `after_batch` after every training batch and `settle` at the end of every
    epoch, at the same points. On one process both return the code as it is. Under several, after
    every `VOTE_EVERY`-th batch of an epoch (batch indices 15, 31, ...) `after_batch` starts a
    non-blocking all-reduce (max) of the code, and after the next batch it returns the outcome,
    which has arrived in the meantime: every process gets the same answers, so all of them stop
    after the same batch. The vote points depend only on the batch index, so a run resumed inside
    an epoch stops where the uninterrupted run stops. `settle` waits: it returns the agreed code
    as it stands.

    Args:
        accelerator: the accelerator of the running fit.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self._accelerator = accelerator
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._several = accelerator.num_processes > 1
        if self._several and dist.is_available() and dist.is_initialized():
            self._group = _vote_group()

    def after_batch(self, batch: int, code: int) -> int:
        """Called after batch `batch` of an epoch; the agreed code (0: go on) once a vote has come back.

        Args:
            batch: the batch's index within the epoch.
            code: what this process votes (0 to go on).
        """
        if not self._several:
            return code
        voting = (batch + 1) % VOTE_EVERY == 0
        if self._group is None:  # no torch.distributed group to vote on asynchronously
            return self._blocking(code) if voting else 0
        agreed = self._collect()
        if agreed:
            return agreed
        if voting:
            self._pending = self._start(code)
        return 0

    def settle(self, code: int) -> int:
        """The agreed code now: the largest any process votes, counting the vote still in flight.

        Args:
            code: what this process votes (0 to go on).
        """
        if not self._several:
            return code
        if self._group is None:
            return self._blocking(code)
        work, votes = self._start(max(self._collect(), code))
        work.wait()
        return int(votes.item())

    def _start(self, code: int) -> tuple[Any, torch.Tensor]:
        votes = torch.tensor([code], dtype=torch.int32)  # on the CPU: reading it syncs no device
        return dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self._group, async_op=True), votes

    def _collect(self) -> int:
        """The outcome of the vote in flight (0 when none is); it completed a batch ago, so this rarely waits."""
        if self._pending is None:
            return 0
        (work, votes), self._pending = self._pending, None
        work.wait()
        return int(votes.item())

    def _blocking(self, code: int) -> int:
        # The maximum through Accelerate's sum: each process puts its code in its own slot.
        votes = torch.zeros(self._accelerator.num_processes, device=self._accelerator.device)
        votes[self._accelerator.process_index] = code
        return int(self._accelerator.reduce(votes, "sum").max().item())


def _fingerprint(path: str | None) -> str | None:
    """A digest of the checkpoint's `checkpoint.json` (which holds every file's checksum); None when unreadable."""
    if path is None:
        return None
    try:
        with open(os.path.join(path, METADATA_FILE), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def check_same_checkpoint(accelerator: Accelerator | None, path: str | None) -> None:
    """Refuse a resume that the processes would not all make from the same checkpoint.

    Every process must call this at the same point, with the checkpoint it is about to read (None
    for none). Without a filesystem shared by the nodes, the main process finds the checkpoint it
    wrote and the others find nothing, or an older copy: each would then train from other weights.

    Args:
        accelerator: the accelerator of the running fit.
        path: the checkpoint this process would resume from, or None.

    Raises:
        FileNotFoundError: some processes see the checkpoint and others do not.
        ValueError: the processes see different checkpoints.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return
    mine = {"path": path, "fingerprint": _fingerprint(path), "host": socket.gethostname()}
    seen = gather_object([mine])  # every process's view, in process order
    if len({view["fingerprint"] for view in seen}) == 1 and len({view["path"] is None for view in seen}) == 1:
        return
    lines = "; ".join(
        f"process {rank} on {view['host']}: "
        + (f"{view['path']} ({view['fingerprint'][:12]})" if view["fingerprint"] else f"nothing at {view['path']}")
        for rank, view in enumerate(seen)
    )
    error = FileNotFoundError if any(view["fingerprint"] is None for view in seen) else ValueError
    raise error(
        "Cannot resume: the processes would not all resume from the same checkpoint "
        f"({lines}). Every process reads the checkpoint from its own disk, and only the main process "
        "writes them: put run_dir and checkpoints on a filesystem every node shares, or copy the "
        "checkpoint to the same path on every node before resuming (docs/distributed.md)."
    )


def forget_prepared(accelerator: Accelerator) -> None:
    """Drop the accelerator's references to the models, optimizers, schedulers and loaders it prepared.

    What `Accelerator.free_memory()` does, less its `gc.collect()`, which costs 0.1-0.2 s per call
    with torch imported; nothing fitorch prepares sits in a reference cycle, and the exit handler
    collects before it destroys the process group. DeepSpeed's engine still goes through
    `free_memory`, which destroys it.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.free_memory()
        return
    for name in ("_models", "_optimizers", "_schedulers", "_dataloaders"):
        held = getattr(accelerator, name, None)
        if isinstance(held, list):
            held.clear()
