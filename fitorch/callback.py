"""The callback protocol: the event names, the `Callback` base class and the dispatch loop.

Everything beyond the bare training loop is a callback. The learner fires the events listed in
`EVENTS`; a callback implements the ones it cares about. Dispatch only visits callbacks that
override an event, so an unused hook costs nothing on the hot path.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fitorch.learner import Learner

# The one list of events, in the order they fire during `fit` (see docs/writing-callbacks.md).
TRAIN_EVENTS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_optimizer_step",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
    "on_exception",
)
TEST_EVENTS = ("on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end")
PREDICT_EVENTS = ("on_predict_begin", "on_predict_batch_begin", "on_predict_batch_end", "on_predict_end")
EVENTS: tuple[str, ...] = TRAIN_EVENTS + TEST_EVENTS + PREDICT_EVENTS


# Hook names of other libraries, mapped to the fitorch event a ported callback means (a close
# spelling would often point at the wrong one: Lightning's `on_train_start` is not `on_train_end`).
OTHER_LIBRARIES_EVENTS = {
    # Keras 2 (and Keras 3's aliases)
    "on_batch_begin": "on_train_batch_begin",
    "on_batch_end": "on_train_batch_end",
    # PyTorch Lightning
    "on_fit_start": "on_train_begin",
    "on_fit_end": "on_train_end",
    "on_train_start": "on_train_begin",
    "on_train_epoch_start": "on_epoch_begin",
    "on_train_epoch_end": "on_epoch_end",
    "on_train_batch_start": "on_train_batch_begin",
    "on_validation_start": "on_test_begin",
    "on_validation_epoch_start": "on_test_begin",
    "on_validation_end": "on_test_end",
    "on_validation_epoch_end": "on_test_end",
    "on_validation_batch_start": "on_test_batch_begin",
    "on_validation_batch_end": "on_test_batch_end",
    "on_test_start": "on_test_begin",
    "on_test_epoch_start": "on_test_begin",
    "on_test_epoch_end": "on_test_end",
    "on_test_batch_start": "on_test_batch_begin",
    "on_predict_start": "on_predict_begin",
    "on_predict_epoch_start": "on_predict_begin",
    "on_predict_epoch_end": "on_predict_end",
    "on_predict_batch_start": "on_predict_batch_begin",
    "on_before_zero_grad": "on_optimizer_step",
    "on_save_checkpoint": "state_dict",
    "on_load_checkpoint": "load_state_dict",
    # fastai (its hooks have no on_ prefix)
    "before_fit": "on_train_begin",
    "after_fit": "on_train_end",
    "before_epoch": "on_epoch_begin",
    "after_epoch": "on_epoch_end",
    "before_train": "on_epoch_begin",
    "after_train": "on_test_begin",
    "before_validate": "on_test_begin",
    "after_validate": "on_test_end",
    "before_batch": "on_train_batch_begin",
    "after_batch": "on_train_batch_end",
    "after_pred": "on_before_backward",
    "after_loss": "on_before_backward",
    "before_backward": "on_before_backward",
    "after_backward": "on_after_backward",
    "before_step": "on_before_optimizer_step",
    "after_step": "on_optimizer_step",
    "after_cancel_fit": "on_exception",
}


class Callback:
    """Base class for everything that reacts to training events.

    Override any of the `on_*` methods; each receives the same arguments as in Keras
    (`on_epoch_end(self, epoch, logs)`, `on_train_batch_end(self, batch, logs)`), plus the
    PyTorch events `on_before_backward(loss)`, `on_after_backward()`,
    `on_before_optimizer_step(optimizer)` and `on_optimizer_step()`.

    `self.learner` (and `self.model`) are set before `on_train_begin`. A method whose name
    starts with `on_` but is not an event fails when the class is defined, so a typo never
    silently disables a hook.

    A callback with state worth keeping across a crash returns it from `state_dict()` (JSON-able
    data) and takes it back in `load_state_dict()`; checkpoints store it.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch, logs):
        ...         print(f"epoch {epoch}: loss {logs['loss']:.3f}")
    """

    learner: Learner | None = None

    saves_checkpoints: bool = False
    """True for a callback that writes checkpoints: the learner runs such callbacks after all the
    others (keeping their order), so that what they save holds every other callback's state after
    the same event, `History`'s latest epoch included."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name in EVENTS or not (name.startswith("on_") or name in OTHER_LIBRARIES_EVENTS):
                continue
            meant = OTHER_LIBRARIES_EVENTS.get(name) or next(iter(difflib.get_close_matches(name, EVENTS, n=1)), None)
            hint = f" Did you mean {meant!r}?" if meant else ""
            raise TypeError(
                f"{cls.__name__}.{name} is not a fitorch event, so it would never be called.{hint} "
                f"Events: {', '.join(EVENTS)}."
            )

    @property
    def model(self) -> torch.nn.Module | None:
        """The model being trained (unwrapped from any distributed wrapper), as in Keras."""
        return None if self.learner is None else self.learner.model

    def set_learner(self, learner: Learner) -> None:
        """Attach the callback to `learner`; called by the learner before any event."""
        self.learner = learner

    def state_dict(self) -> dict[str, Any]:
        """Return JSON-able state to store in checkpoints. Empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned. Does nothing by default."""

    def resume_checkpoint(self) -> str | os.PathLike | None:
        """A checkpoint this callback offers to continue from when `fit` starts; None by default.

        `fit` asks every callback before `on_train_begin` and restores the first offer exactly, as
        `fit(resume=path)` would (an offer takes precedence over `resume`). `BackupAndRestore` offers
        its backup this way.
        """
        return None

    # Training events (Keras names and arguments, plus the PyTorch-specific ones).
    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """Called once at the start of `fit`, before the first epoch."""

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Called once at the end of `fit`, also when it fails (it runs in a `finally`)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called at the start of every epoch (`epoch` is 0-based)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called after training and validation of an epoch; `logs` has the epoch's values."""

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each training micro-batch (`batch` is the index within the epoch)."""

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        """Called after each training micro-batch; `logs` holds running epoch means, read lazily."""

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Called with the loss of every micro-batch, before `backward`."""

    def on_after_backward(self) -> None:
        """Called after every `backward`."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called when gradients are complete (synced, unscaled, clipped), before `optimizer.step()`."""

    def on_optimizer_step(self) -> None:
        """Called after each real optimizer step (once per window and optimizer); `global_step` counts it.

        Not called when fp16 loss scaling skipped the step (inf or NaN gradients).
        """

    def on_exception(self, exception: BaseException) -> None:
        """Called when `fit` fails; the exception propagates unchanged afterwards."""

    # Evaluation events: fired by validation inside `fit` and by `evaluate`.
    def on_test_begin(self, logs: dict[str, Any]) -> None:
        """Called at the start of a validation or evaluation pass."""

    def on_test_end(self, logs: dict[str, Any]) -> None:
        """Called at the end of a validation or evaluation pass with its results."""

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each evaluation batch."""

    def on_test_batch_end(self, batch: int, logs: Any) -> None:
        """Called after each evaluation batch."""

    # Prediction events, fired by `predict`.
    def on_predict_begin(self, logs: dict[str, Any]) -> None:
        """Called at the start of `predict`."""

    def on_predict_end(self, logs: dict[str, Any]) -> None:
        """Called at the end of `predict`."""

    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each prediction batch."""

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Called after each prediction batch; `logs["outputs"]` holds the batch's outputs."""


def _overrides(callback: Callback, event: str) -> bool:
    implementation = getattr(callback, event)
    return getattr(implementation, "__func__", implementation) is not getattr(Callback, event)


class CallbackList:
    """The callbacks of one `fit`, `evaluate` or `predict` call, in order, with the dispatch loop.

    Args:
        callbacks: the callbacks, in the order their hooks run.
        learner: the learner they are attached to; it names the epoch and step in error notes.
    """

    def __init__(self, callbacks: Iterable[Callback], learner: Learner) -> None:
        self.callbacks: list[Callback] = list(callbacks)
        self.learner = learner
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks must be fitorch.Callback instances, got {type(callback).__name__}. "
                    "Subclass fitorch.Callback, or wrap functions in fitorch.callbacks.LambdaCallback."
                )
            callback.set_learner(learner)
        self._handlers: dict[str, list[Callable[..., Any]]] = {
            event: [getattr(cb, event) for cb in self.callbacks if _overrides(cb, event)] for event in EVENTS
        }

    def __iter__(self):
        return iter(self.callbacks)

    def fire(self, event: str, *args: Any) -> None:
        """Call `event` on every callback that implements it, in order.

        An exception gets a note naming the callback, the event, the epoch and the global step,
        and then propagates unchanged.
        """
        for hook in self._handlers[event]:
            try:
                hook(*args)
            except BaseException as error:
                add_note(error, f"raised in {self._describe(hook, event)}")
                raise

    def fire_exception(self, exception: BaseException) -> None:
        """Fire `on_exception`; a failing handler is noted on `exception`, never raised over it."""
        for hook in self._handlers["on_exception"]:
            try:
                hook(exception)
            except Exception as handler_error:  # the original failure is the one the user must see
                add_note(
                    exception, f"{self._describe(hook, 'on_exception')} failed while handling it: {handler_error!r}"
                )

    def _describe(self, hook: Callable[..., Any], event: str) -> str:
        owner = getattr(hook, "__self__", None)
        name = type(owner).__name__ if owner is not None else getattr(hook, "__name__", "callback")
        return f"callback {name}.{event} (epoch {self.learner.epoch}, global step {self.learner.global_step})"


def add_note(error: BaseException, note: str) -> None:
    """Attach `note` to `error` (PEP 678), so the traceback shows it under the message."""
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(note)
    else:  # pragma: no cover - Python 3.10 keeps the note where 3.11's traceback would print it
        error.__notes__ = [*getattr(error, "__notes__", []), note]


def find_callback(callbacks: Sequence[Callback], kind: type) -> Callback | None:
    """Return the first callback in `callbacks` that is an instance of `kind`, or None."""
    return next((cb for cb in callbacks if isinstance(cb, kind)), None)


class Every:
    """When a callback acts: at the end of every `n`-th epoch, or after every `n`-th real optimizer step.

    The one "every N" rule the built-in callbacks share (Ignite's `Events.ITERATION_COMPLETED(every=n)`
    is the model), so that a step frequency means the same thing everywhere: it counts real optimizer
    steps (`learner.global_step`, never micro-batches inside an accumulation window) and fires once
    per step count, at the `on_train_batch_end` of the batch that took the step.

    Args:
        n: how many epochs or steps apart.
        unit: `"epoch"` or `"step"`.

    Raises:
        TypeError, ValueError: `n` is not a positive int, or `unit` is neither.

    Example:
        >>> save = Every.parse("epoch", "save_freq", owner="MyCheckpoint")  # or an int: every n steps
        >>> class MyCheckpoint(Callback):
        ...     def on_train_batch_end(self, batch, logs):
        ...         if save.step_due(self.learner):
        ...             ...
    """

    def __init__(self, n: int, unit: str = "step") -> None:
        from fitorch.checks import check_choice, check_int

        self.n = check_int(n, "n", minimum=1, owner="Every")
        self.unit = check_choice(unit, "unit", ("epoch", "step"), owner="Every")

    @classmethod
    def parse(cls, value: Any, name: str, *, owner: str | None = None) -> Every:
        """Keras's `save_freq` / `update_freq` convention: `"epoch"` is every epoch, an int every that many steps.

        Raises:
            TypeError: neither `"epoch"` nor an int.
            ValueError: an int below 1.
        """
        if value == "epoch":
            return cls(1, "epoch")
        what = "'epoch' or a positive int (optimizer steps)"
        prefix = f"{owner}: " if owner else ""
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise TypeError(f"{prefix}{name} must be {what}, got {value!r}.")
        if isinstance(value, str) or value < 1:
            raise ValueError(f"{prefix}{name} must be {what}, got {value!r}.")
        return cls(value, "step")

    @property
    def per_epoch(self) -> bool:
        """Whether the unit is epochs."""
        return self.unit == "epoch"

    def epoch_due(self, epoch: int) -> bool:
        """Whether the epoch `epoch` (0-based) that just ended is one to act on (every `n`-th, counting from 1)."""
        return self.per_epoch and (epoch + 1) % self.n == 0

    def step_due(self, learner: Learner) -> bool:
        """Whether the batch that just ended took an optimizer step whose count is a multiple of `n`.

        Call it from `on_train_batch_end`. A batch inside an accumulation window, or one whose step
        was skipped (fp16 found inf/NaN gradients), took no step and is never due.
        """
        return not self.per_epoch and learner.step_taken and learner.global_step % self.n == 0

    def __repr__(self) -> str:
        return f"Every({self.n}, {self.unit!r})"
