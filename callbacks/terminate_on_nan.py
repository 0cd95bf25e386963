"""`TerminateOnNaN`: stop training at the first non-finite loss, or fail the fit there.

It owns the finiteness check of the batch loss, the choice of how often to pay the host-device
sync that reading a flag from the device costs, and how training ends (a normal stop or an error).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from fitorch import Callback
from fitorch.checks import check_bool, check_int

logger = logging.getLogger("fitorch")


class TerminateOnNaN(Callback):
    """Stops `fit` when a training loss is NaN or infinite, naming the epoch, batch and step; or fails it.

    Reading whether a device tensor is finite is a host-device sync. With `check_every=1` (the
    default) the flag is read after every batch, so training stops at the very batch whose loss
    is non-finite; on the CPU this costs nothing, on a GPU one small sync per batch. With
    `check_every=n`, the flags of `n` batches are gathered on the device and read in one sync:
    training stops at most `n - 1` batches late, and the message still names the first non-finite
    batch. Either way the flags are also read at the end of every epoch.

    By default the stop is a normal end of `fit` (as in Keras): validation of the epoch still runs
    and `on_train_end` fires. The message goes to the `fitorch` logger as a warning (on the console
    even when logging is not configured) and the place is kept in `stopped_at`.

    With `raise_error=True` (Keras's argument) the fit fails at once instead, with a `RuntimeError`
    naming the place and the loss: no validation, no epoch end, so nothing saves the broken weights
    as the epoch's checkpoint, and `BackupAndRestore` keeps its backup. `on_exception` fires and,
    as after any failure, `on_train_end` too, with `learner.exception` set (Keras skips
    `on_train_end`; fitorch's callbacks clean up there and see the failure).

    Args:
        check_every: batches between two reads of the flags; 1 stops exactly at the first bad loss.
        raise_error: fail the fit with a `RuntimeError` instead of stopping it normally.

    Raises:
        ValueError: `check_every` is not a positive int.
        TypeError: `raise_error` is not a bool.
        RuntimeError: during `fit`, with `raise_error=True`, at the first non-finite loss.

    Example:
        >>> learner = Learner(loss="mse", callbacks=[TerminateOnNaN()])
    """

    def __init__(self, check_every: int = 1, raise_error: bool = False) -> None:
        self.check_every = check_int(check_every, "check_every", minimum=1, owner="TerminateOnNaN")
        self.raise_error = check_bool(raise_error, "raise_error", owner="TerminateOnNaN")
        self.stopped_at: dict[str, Any] | None = None
        self._losses: list[torch.Tensor] = []
        self._places: list[tuple[int, int, int]] = []

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.stopped_at, self._losses, self._places = None, [], []

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        loss = self.learner.loss
        if loss is None:
            return
        self._losses.append(loss.detach())  # stays on the device: no sync yet
        self._places.append((self.learner.epoch, batch, self.learner.global_step))
        if len(self._losses) >= self.check_every:
            self._check()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._losses:
            self._check()

    def _check(self) -> None:
        losses, places, self._losses, self._places = self._losses, self._places, [], []
        finite = torch.stack([torch.isfinite(loss).all() for loss in losses]).tolist()  # the one sync
        if all(finite):
            return
        first = finite.index(False)
        epoch, batch, step = places[first]
        self.stopped_at = {"epoch": epoch, "batch": batch, "global_step": step}
        where = f"epoch {epoch} (0-based), batch {batch}, global step {step}"
        advice = "Lower the learning rate, clip gradients (Learner(grad_clip=1.0)) or check the data."
        if self.raise_error:
            value = losses[first].float().mean().item()
            raise RuntimeError(f"TerminateOnNaN: NaN or Inf loss encountered at {where} (loss {value}). {advice}")
        logger.warning("TerminateOnNaN: the training loss is not finite at %s; training stopped. %s", where, advice)
        self.learner.stop_training = True
