"""When `fit` validates: `validation_freq` and `validation_steps`, as Keras names them.

- `validation_freq=1` (the default): after every epoch.
- `validation_freq=n`: after every n-th epoch (epochs n, 2n, ..., counted from 1, as Keras counts them).
- `validation_freq=[1, 2, 10]` (any collection of ints): after those epochs, counted from 1.
- `validation_freq=Every(n)`: every n optimizer steps, inside long epochs (the Hugging Face
  Trainer's `eval_steps`, Lightning's `val_check_interval`); `Every(n, "epoch")` is the same as `n`.

`validation_steps` caps every validation run at that many batches.

Where the values go: an epoch-end validation puts `val_*` into that epoch's logs. A step validation
runs after the batch whose optimizer step it follows, and puts its `val_*` into that batch's logs
(`on_train_batch_end`); the epoch's logs then hold the values of the last validation that ran in
the epoch. An epoch in which none ran has no `val_*` in its logs: `History` lists only the epochs
that have them (as Keras's does), and the monitoring callbacks (`EarlyStopping`,
`ReduceLROnPlateau`, `ModelCheckpoint`) skip such epochs (see `fitorch.Monitor.value`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from fitorch.callback import Every
from fitorch.checks import check_int

if TYPE_CHECKING:
    from fitorch.learner import Learner


class ValidationSchedule:
    """When a fit validates, and on how many batches.

    Args:
        freq: `validation_freq`: an int (every n-th epoch), a collection of epochs counted from 1,
            or an `Every` (`Every(n)`: every n optimizer steps).
        steps: `validation_steps`: batches per validation run, or None for all.

    Raises:
        TypeError, ValueError: a `freq` or `steps` of the wrong type or value.
    """

    def __init__(self, freq: int | Collection[int] | Every = 1, steps: int | None = None) -> None:
        self.steps = check_int(steps, "validation_steps", minimum=1, allow_none=True)
        self.epochs: set[int] | None = None
        self.every: Every | None = None
        if isinstance(freq, Every):
            self.every = freq
        elif isinstance(freq, Collection) and not isinstance(freq, (str, bytes)):
            self.epochs = {
                check_int(epoch, "validation_freq entries (epochs counted from 1)", minimum=1) for epoch in freq
            }
            if not self.epochs:
                raise ValueError("validation_freq must list at least one epoch (counted from 1), got an empty list.")
        else:
            check_int(freq, "validation_freq (an int, a list of epochs, or Every(n) for optimizer steps)", minimum=1)
            self.every = Every(freq, "epoch")

    @property
    def per_step(self) -> bool:
        """Whether validation runs every n optimizer steps rather than at epoch ends."""
        return self.every is not None and not self.every.per_epoch

    def epoch_due(self, epoch: int) -> bool:
        """Whether to validate at the end of epoch `epoch` (0-based)."""
        if self.epochs is not None:
            return epoch + 1 in self.epochs
        return self.every.epoch_due(epoch)

    def step_due(self, learner: Learner) -> bool:
        """Whether to validate after the current training batch (it took the n-th optimizer step)."""
        return self.per_step and self.every.step_due(learner)

    def describe(self) -> Any:
        """The setting as JSON-able data, for the run's configuration."""
        if self.epochs is not None:
            return sorted(self.epochs)
        return repr(self.every) if self.per_step else self.every.n
