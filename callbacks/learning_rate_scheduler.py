"""`LearningRateScheduler`: Keras's schedule function, `schedule(epoch, lr) -> rate`, setting the rate it returns.

It owns only what differs from `LRScheduler`, whose bookkeeping it inherits (the scale that other
rate changes put on the schedule, the state a resume continues from): which form of the function
it calls, and Keras's `learning_rate` log key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fitorch.callbacks.lr_scheduler import LRScheduler, positional_arity
from fitorch.checks import check_callable, check_number


class LearningRateScheduler(LRScheduler):
    """Keras's `LearningRateScheduler`: at the start of every epoch, sets the rate `schedule` returns.

    `schedule` is called as in Keras: `schedule(epoch, lr)` when it takes two arguments (the epoch,
    0-based, and the current rate), else `schedule(epoch)`; the rate it returns is set. Unlike
    `LRScheduler`, whose functions return a factor of the base rate, this one sets the returned
    rate itself, so a Keras script's function means what it meant there.

    With several parameter groups, a two-argument function is called once per group with that
    group's rate; a one-argument function's rate is set on the first group and the others keep
    their ratio to it (their base rates' ratio). The epoch logs also get `learning_rate`, Keras's
    name of `lr`, so `history.history["learning_rate"]` reads as in Keras.

    A rate changed by something else between two epochs (a `ReduceLROnPlateau` reduction) scales
    the schedule from then on, as with `LRScheduler`: `lr` in `schedule(epoch, lr)` is the
    schedule's own rate, and the reduction is applied on top of the returned one. In Keras a
    function that ignores `lr` would overwrite the reduction instead.

    Args:
        schedule: a function `(epoch, lr) -> rate` or `epoch -> rate`.
        verbose: 1 (or True) logs each rate set (`Epoch 3: LearningRateScheduler setting learning
            rate to 0.05.`) to the `fitorch` logger.

    Raises:
        TypeError: `schedule` is not callable; during `fit`, it returned something that is not a number.
        ValueError: during `fit`, it returned a negative or non-finite rate.

    Example:
        >>> halve = LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 else lr / 2)
        >>> learner.fit(model, train, epochs=20, callbacks=[halve])  # doctest: +SKIP
    """

    def __init__(self, schedule: Callable[..., float], verbose: int | bool = 0) -> None:
        super().__init__(schedule, verbose=verbose)

    def _classify(self, schedule: Any, options: dict[str, Any]) -> str:
        what = "a function (epoch, lr) -> rate or epoch -> rate"
        check_callable(schedule, "schedule", what=what, owner="LearningRateScheduler")
        self.takes_rate = positional_arity(schedule)[1] >= 2  # Keras calls schedule(epoch, lr) when it can
        return "rate"

    def _schedule_rates(self, count: int) -> list[float]:
        if count == self.at and self.unscaled is not None:
            return list(self.unscaled)  # the same epoch again (a resume inside it): the rate is already set
        epoch = self.learner.epoch
        if self.takes_rate:
            previous = self.unscaled or [float(group["lr"]) for group in self._groups()]
            return [self._rate(self.schedule(epoch, rate), epoch) for rate in previous]
        rate, first = self._rate(self.schedule(epoch), epoch), self.base_lrs[0]
        return [rate * (base / first) if first else rate for base in self.base_lrs]  # the first group: exactly rate

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        logs["learning_rate"] = logs["lr"] if "lr" in logs else self.learner.learning_rates()["lr"]

    @staticmethod
    def _rate(value: Any, epoch: int) -> float:
        return check_number(
            value, f"the rate schedule returned for epoch {epoch}", minimum=0, owner="LearningRateScheduler"
        )
