"""`ReduceLROnPlateau`: lower the learning rate when a monitored value stops improving, as Keras decides.

It owns the plateau counters (`wait`, the cooldown) and the reduction of every parameter group's
rate. The log key, its mode (`"auto"`), the improvement test and the missing-key error come from
`fitorch.Monitor`. Torch's own rule, whose `patience` counts one epoch more, stays available as
`LRScheduler(lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, ...))`.
"""

from __future__ import annotations

import logging
from typing import Any

from fitorch import Callback, Monitor
from fitorch.checks import check_int, check_number

logger = logging.getLogger("fitorch")


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by `factor` after `patience` epochs without improvement.

    Keras's rule and arguments. At the end of every epoch: during a cooldown, the cooldown counts
    down one epoch and `wait` is reset; an epoch whose value beats the best by more than
    `min_delta` becomes the best and resets `wait`; otherwise, outside a cooldown, `wait` grows by
    one, and when it reaches `patience` every parameter group's rate above `min_lr` is multiplied by
    `factor` (never below `min_lr`), `wait` restarts and `cooldown` epochs of cooldown begin. So
    `patience=2` reduces at the end of the second bad epoch in a row, and with `cooldown=2` the next
    reduction can come at the earliest two epochs after the first plus `patience`. Every parameter
    group of every optimizer is reduced, so groups keep their ratios until one reaches `min_lr`.

    The epoch's logged `lr` is the rate used during that epoch; a reduction takes effect from the
    next epoch and is logged to the `fitorch` logger (`Epoch 5: ReduceLROnPlateau reducing
    learning rate to 0.01.`). With an `LRScheduler`, a reduction scales the rest of its schedule.

    A fresh `fit` starts with fresh counters; a resumed one continues from those in the checkpoint.

    Args:
        monitor: the log key to watch, usually a validation value such as `"val_loss"`.
        factor: the multiplier, in (0, 1).
        patience: bad epochs in a row that trigger a reduction (0 reduces at every epoch that does
            not improve).
        mode: `"min"`, `"max"`, or `"auto"` (max for accuracy-like names, else min).
        min_delta: the smallest change that counts as an improvement (absolute, >= 0).
        cooldown: epochs after a reduction during which bad epochs are not counted.
        min_lr: the lowest rate any group is reduced to.

    Raises:
        ValueError: `factor` outside (0, 1), a negative `patience`, `cooldown`, `min_lr` or
            `min_delta`, an unknown `mode`; during `fit`, a `monitor` missing from the logs.

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
        self.factor = check_number(factor, "factor", minimum=0, maximum=1, open_min=True, open_max=True, owner=owner)
        self.patience = check_int(patience, "patience", minimum=0, owner=owner)
        self.cooldown = check_int(cooldown, "cooldown", minimum=0, owner=owner)
        self.min_lr = check_number(min_lr, "min_lr", minimum=0, owner=owner)
        self.monitored = Monitor(monitor, mode, min_delta, owner=owner)
        self.monitor, self.mode, self.min_delta = monitor, self.monitored.mode, float(min_delta)
        self.wait, self.cooldown_counter = 0, 0
        self._resumed = False

    @property
    def best(self) -> float | None:
        """The best monitored value so far (None before the first epoch)."""
        return self.monitored.best

    def in_cooldown(self) -> bool:
        """Whether a reduction happened less than `cooldown` epochs ago."""
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self._resumed:  # a fresh fit starts afresh; a resumed one keeps the loaded counters
            self.monitored.best, self.wait, self.cooldown_counter = None, 0, 0
        self._resumed = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        # The main process's value (raising, with the keys there are, when it is missing), so that no two
        # processes end with different rates.
        current = self.monitored.agreed_value(logs, self.learner)
        if current is None:  # an epoch without validation (fit's validation_freq): nothing to judge
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self.monitored.observe(current):
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter, self.wait = self.cooldown, 0

    def _reduce(self, epoch: int) -> bool:
        """Reduce every group's rate that is above `min_lr`; return whether any was."""
        groups = [group for optimizer in self.learner.optimizers for group in optimizer.param_groups]
        reduced = False
        for group in groups:
            if group["lr"] > self.min_lr:
                group["lr"] = max(group["lr"] * self.factor, self.min_lr)
                reduced = True
        if reduced:
            self._log_reduction(epoch)
        return reduced

    def _log_reduction(self, epoch: int) -> None:
        rates = self.learner.learning_rates()
        others = ", ".join(f"{key}: {rate}" for key, rate in rates.items() if key != "lr")
        logger.info(
            "Epoch %d: ReduceLROnPlateau reducing learning rate to %s%s (%s: no improvement on %.6g for %d epochs).",
            epoch + 1,
            rates["lr"],
            f" ({others})" if others else "",
            self.monitor,
            self.best,
            self.wait,
        )

    def state_dict(self) -> dict[str, Any]:
        """The plateau counters (JSON-able): the best value, `wait` and the cooldown left."""
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters; the next `fit` continues from them instead of starting afresh."""
        self.monitored.best = state.get("best")
        self.wait = int(state.get("wait", 0))
        self.cooldown_counter = int(state.get("cooldown_counter", 0))
        self._resumed = True
