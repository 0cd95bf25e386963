"""`TerminateOnNaN`: stop training at the first non-finite loss.

It owns the finiteness check of the batch loss, and the choice of how often to pay the host-device
sync that reading a flag from the device costs.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from fitorch import Callback
from fitorch.checks import check_int

logger = logging.getLogger("fitorch")


class TerminateOnNaN(Callback):
    """Stops `fit` when a training loss is NaN or infinite, naming the epoch, batch and step.

    Reading whether a device tensor is finite is a host-device sync. With `check_every=1` (the
    default) the flag is read after every batch, so training stops at the very batch whose loss
    is non-finite; on the CPU this costs nothing, on a GPU one small sync per batch. With
    `check_every=n`, the flags of `n` batches are gathered on the device and read in one sync:
    training stops at most `n - 1` batches late, and the message still names the first non-finite
    batch. Either way the flags are also read at the end of every epoch.

    The stop is a normal end of `fit` (as in Keras): validation of the epoch still runs and
    `on_train_end` fires. The message goes to the `fitorch` logger as a warning (on the console
    even when logging is not configured) and the place is kept in `stopped_at`.

    Args:
        check_every: batches between two reads of the flags; 1 stops exactly at the first bad loss.

    Raises:
        ValueError: `check_every` is not a positive int.

    Example:
        >>> learner = Learner(loss="mse", callbacks=[TerminateOnNaN()])
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = check_int(check_every, "check_every", minimum=1, owner="TerminateOnNaN")
        self.stopped_at: dict[str, Any] | None = None
        self._flags: list[torch.Tensor] = []
        self._places: list[tuple[int, int, int]] = []

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.stopped_at, self._flags, self._places = None, [], []

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        loss = self.learner.loss
        if loss is None:
            return
        self._flags.append(torch.isfinite(loss.detach()).all())  # stays on the device: no sync yet
        self._places.append((self.learner.epoch, batch, self.learner.global_step))
        if len(self._flags) >= self.check_every:
            self._check()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._flags:
            self._check()

    def _check(self) -> None:
        finite = torch.stack(self._flags).tolist()  # the one sync
        places, self._flags, self._places = self._places, [], []
        if all(finite):
            return
        epoch, batch, step = places[finite.index(False)]
        self.stopped_at = {"epoch": epoch, "batch": batch, "global_step": step}
        logger.warning(
            "TerminateOnNaN: the training loss is not finite at epoch %d (0-based), batch %d, global step %d; "
            "training stopped. Lower the learning rate, clip gradients (Learner(grad_clip=1.0)) or check the data.",
            epoch,
            batch,
            step,
        )
        self.learner.stop_training = True
