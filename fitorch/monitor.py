"""`Monitor`: the shared "did this value improve?" logic of checkpointing, early stopping and plateaus.

Callbacks never call each other; each one that watches a log value owns a `Monitor`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fitorch.checks import check_choice, check_number, check_str

if TYPE_CHECKING:
    from fitorch.learner import Learner

logger = logging.getLogger("fitorch")

# Log keys that are better when larger; anything else (losses, errors) is better when smaller.
_HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "precision", "recall", "f1", "iou", "dice", "r2", "score", "map")


def infer_mode(monitor: str) -> str:
    """`"max"` for accuracy-like names (`val_accuracy`, `top_k_accuracy`, `val_f1`), else `"min"`."""
    name = monitor.lower().removeprefix("val_")
    return "max" if any(name == key or name.endswith(key) for key in _HIGHER_IS_BETTER) else "min"


class Monitor:
    """Watches one value of the logs and remembers its best.

    Args:
        monitor: the log key, e.g. `"val_loss"` or `"val_accuracy"`.
        mode: `"min"`, `"max"`, or `"auto"` to infer it from the name (and log what was chosen).
        min_delta: the smallest change that counts as an improvement.
        baseline: a value the monitored quantity must beat before anything counts as an improvement.
        owner: the name of the callback, for messages.

    Raises:
        ValueError: an unknown mode or a negative `min_delta`.

    Example:
        >>> watch = Monitor("val_loss")
        >>> watch.update({"val_loss": 0.5}), watch.update({"val_loss": 0.7}), watch.best
        (True, False, 0.5)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        min_delta: float = 0.0,
        baseline: float | None = None,
        owner: str = "Monitor",
    ) -> None:
        check_str(owner, "owner", owner="Monitor")
        check_str(monitor, "monitor (a log key such as 'val_loss')", owner=owner)
        check_choice(mode, "mode", ("auto", "min", "max"), owner=owner)
        check_number(min_delta, "min_delta", minimum=0, owner=owner)
        check_number(baseline, "baseline", allow_none=True, owner=owner)
        self.monitor, self.owner = monitor, owner
        self.mode = infer_mode(monitor) if mode == "auto" else mode
        if mode == "auto":
            logger.info("%s(monitor=%r): mode='auto' chose %r.", owner, monitor, self.mode)
        self.min_delta = float(min_delta)
        self.baseline = baseline
        self.best: float | None = None

    def value(self, logs: Mapping[str, Any]) -> float | None:
        """The monitored value in `logs`, or None for a `val_*` key in an epoch that did not validate.

        With `fit(validation_freq=...)` some epochs run no validation, and their logs say so
        (`fitorch.EpochLogs.validated` is False): a callback skips such an epoch, as Keras's do.

        Raises:
            ValueError: the key is missing otherwise; the message lists the keys that are there.
        """
        if self.monitor not in logs and self.monitor.startswith("val_") and not getattr(logs, "validated", True):
            return None
        if self.monitor not in logs:
            available = ", ".join(logs) or "none"
            hint = (
                " Validation values (val_*) need validation_data or validation_split."
                if (self.monitor.startswith("val_"))
                else ""
            )
            raise ValueError(
                f"{self.owner}(monitor={self.monitor!r}): no such value in the logs; available: {available}.{hint}"
            )
        return float(logs[self.monitor])

    def agreed_value(self, logs: Mapping[str, Any], learner: Learner) -> float | None:
        """`value(logs)` as the main process has it, on every process (`Learner.broadcast`).

        A callback that decides from the value (stop, keep the best weights, lower the rate) reads it
        this way, so that no two processes decide differently. Every process must call it at the
        same point: under several processes it is a collective call (skipped, on every process alike,
        in an epoch that did not validate).
        """
        value = self.value(logs)
        return None if value is None else learner.broadcast(value)

    def is_improvement(self, value: float) -> bool:
        """Whether `value` beats the best so far (and the baseline) by more than `min_delta`."""
        if math.isnan(value):
            return False
        reference = self.best if self.best is not None else self.baseline
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def update(self, logs: Mapping[str, Any]) -> bool:
        """Read the value from `logs`; remember it and return True when it is an improvement.

        An epoch without validation (`value` is None) is no improvement.
        """
        value = self.value(logs)
        return value is not None and self.observe(value)

    def observe(self, value: float) -> bool:
        """Remember `value` and return True when it is an improvement (for a value agreed across processes)."""
        if self.is_improvement(value):
            self.best = value
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The best value so far (JSON-able)."""
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best value."""
        self.best = state.get("best")
