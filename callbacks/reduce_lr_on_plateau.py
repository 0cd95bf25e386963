"""`ReduceLROnPlateau`: lower the learning rate when a monitored value stops improving.

The decision is torch's own `torch.optim.lr_scheduler.ReduceLROnPlateau`, one per optimizer, fed
the monitored value at the end of every epoch, so fitorch reduces exactly when torch would. The
log key, its mode (`"auto"`) and the missing-key error come from `fitorch.Monitor`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.optim import lr_scheduler

from fitorch import Callback, Monitor
from fitorch.checks import check_int, check_number

logger = logging.getLogger("fitorch")


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by `factor` after `patience` epochs without improvement.

    Torch's semantics, with Keras's argument names: an epoch is bad unless the value beats the best
    by more than `min_delta` (an absolute margin, torch's `threshold_mode="abs"`); after more than
    `patience` bad epochs in a row every parameter group's rate is multiplied by `factor` (never
    below `min_lr`), then `cooldown` epochs pass during which bad epochs are not counted. Every
    parameter group of every optimizer is reduced, so groups keep their ratios until one reaches
    `min_lr`. The epoch's logged `lr` is the rate used during that epoch; a reduction takes effect
    from the next epoch.

    Args:
        monitor: the log key to watch, usually a validation value such as `"val_loss"`.
        factor: the multiplier, in (0, 1).
        patience: bad epochs tolerated before a reduction (torch's meaning: the reduction comes at
            the end of bad epoch `patience + 1`).
        mode: `"min"`, `"max"`, or `"auto"` (max for accuracy-like names, else min).
        min_delta: the smallest change that counts as an improvement (absolute, >= 0).
        cooldown: epochs to wait after a reduction before counting bad epochs again.
        min_lr: the lowest rate any group is reduced to.

    Raises:
        ValueError: `factor` outside (0, 1), a negative `patience`, `cooldown`, `min_lr` or
            `min_delta`, an unknown `mode`.

    Example:
        >>> plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5)
        >>> learner.fit(model, train, epochs=50, validation_data=val, callbacks=[plateau])  # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        owner = "ReduceLROnPlateau"
        check_number(factor, "factor", minimum=0, maximum=1, open_min=True, open_max=True, owner=owner)
        check_int(patience, "patience", minimum=0, owner=owner)
        check_int(cooldown, "cooldown", minimum=0, owner=owner)
        check_number(min_lr, "min_lr", minimum=0, owner=owner)
        self.monitored = Monitor(monitor, mode, min_delta, owner="ReduceLROnPlateau")
        self.monitor, self.mode, self.min_delta = monitor, self.monitored.mode, float(min_delta)
        self.factor, self.patience, self.cooldown, self.min_lr = float(factor), patience, cooldown, float(min_lr)
        self.schedulers: list[lr_scheduler.ReduceLROnPlateau] = []
        self._pending_state: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.schedulers = [
            lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=self.mode,
                factor=self.factor,
                patience=self.patience,
                threshold=self.min_delta,
                threshold_mode="abs",
                cooldown=self.cooldown,
                min_lr=self.min_lr,
            )
            for optimizer in self.learner.optimizers
        ]
        if self._pending_state is not None:  # a resumed fit continues the counters of the checkpoint
            self._apply_state(self._pending_state)
            self._pending_state = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        current = self.monitored.value(logs)  # raises, listing the available keys, when it is missing
        if current is None:  # an epoch without validation (fit's validation_freq): nothing to judge
            return
        before = self.learner.learning_rates()
        for scheduler in self.schedulers:
            scheduler.step(current)
        after = self.learner.learning_rates()
        if after != before:
            logger.info(
                "ReduceLROnPlateau: epoch %d (0-based): %s has not improved on %.6g; lr %.6g -> %.6g.",
                epoch,
                self.monitor,
                self.best,
                before.get("lr", math.nan),
                after.get("lr", math.nan),
            )

    @property
    def best(self) -> float | None:
        """The best monitored value so far (None before the first epoch)."""
        if not self.schedulers or math.isinf(self.schedulers[0].best):
            return None
        return self.schedulers[0].best

    def state_dict(self) -> dict[str, Any]:
        """The counters of the plateau logic (JSON-able); every optimizer shares them."""
        if self._pending_state is not None or not self.schedulers:
            return dict(self._pending_state or {})
        scheduler = self.schedulers[0]
        return {
            "best": self.best,
            "num_bad_epochs": scheduler.num_bad_epochs,
            "cooldown_counter": scheduler.cooldown_counter,
            "last_epoch": scheduler.last_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters; the next `fit` continues from them instead of starting afresh."""
        self._pending_state = dict(state)  # the schedulers are built (for this fit's optimizers) at train begin

    def _apply_state(self, state: dict[str, Any]) -> None:
        for scheduler in self.schedulers:
            best = state.get("best")
            scheduler.best = scheduler.mode_worse if best is None else float(best)
            scheduler.num_bad_epochs = int(state.get("num_bad_epochs", 0))
            scheduler.cooldown_counter = int(state.get("cooldown_counter", 0))
            scheduler.last_epoch = int(state.get("last_epoch", 0))
