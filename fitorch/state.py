"""Where the training loop stands, in one object, and how micro-batches add up to an optimizer step.

`LoopState` is the loop's position (Ignite's `State` is the model): each counter has one meaning,
the learner's documented attributes (`epoch`, `global_step`, `batch`, ...) read and write it, and
`state_dict()` is what a checkpoint stores to resume at exactly this point. `GradientWindow` is
gradient accumulation in one place: which micro-batch ends a window, and the weights that make a
window's gradient the mean over its samples, so a short last window counts for what it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoopState:
    """The position of the training loop.

    Attributes:
        epoch: the current epoch, 0-based.
        epochs: the epoch index to stop before (the `epochs` of `fit`).
        global_step: real optimizer steps since the start of training (one per accumulation window
            whose step was taken; a step that fp16 loss scaling skipped does not count).
        batch: index of the current batch within the running phase.
        batches_done: training batches of the current epoch already trained.
        epoch_complete: whether the current epoch's training and validation are done.
        step_taken: whether the current training batch ended with a real optimizer step.
        shuffle_seed: the seed of the epoch shuffles (the order of epoch e is drawn from seed + e).
        skip_batches: batches of the next epoch to skip, set by a resume inside an epoch.
        resumed_sums: the running loss and metric sums of the epoch a resume lands in.
    """

    epoch: int = 0
    epochs: int = 0
    global_step: int = 0
    batch: int = 0
    batches_done: int = 0
    epoch_complete: bool = False
    step_taken: bool = False
    shuffle_seed: int = 0
    skip_batches: int = 0
    resumed_sums: Mapping[str, Any] | None = field(default=None, repr=False)

    def start_fit(self, epochs: int, initial_epoch: int, shuffle_seed: int) -> None:
        """Reset the position for a new fit."""
        self.epochs, self.epoch, self.global_step, self.batch = epochs, initial_epoch, 0, 0
        self.batches_done, self.epoch_complete, self.step_taken = 0, False, False
        self.shuffle_seed, self.skip_batches, self.resumed_sums = shuffle_seed, 0, None

    def start_epoch(self, epoch: int) -> None:
        """Enter epoch `epoch`: no batch trained yet."""
        self.epoch, self.batches_done, self.epoch_complete = epoch, 0, False

    def state_dict(self, running_sums: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The next epoch and batch to run, the step count and the shuffle seed (JSON-able).

        Args:
            running_sums: the epoch's running loss and metric sums, stored when the position is
                inside an epoch so that the resumed epoch reports values over all its batches.
        """
        epoch, batch = (self.epoch + 1, 0) if self.epoch_complete else (self.epoch, self.batches_done)
        state = {"epoch": epoch, "batch": batch, "global_step": self.global_step, "shuffle_seed": self.shuffle_seed}
        if batch and running_sums is not None:
            state["running"] = running_sums
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`: the next epoch starts there, skipping batches already trained."""
        self.epoch, self.skip_batches = int(state["epoch"]), int(state["batch"])
        self.global_step, self.shuffle_seed = int(state["global_step"]), int(state["shuffle_seed"])
        self.resumed_sums = state.get("running")
        self.epoch_complete = False


class GradientWindow:
    """Gradient accumulation: `steps` micro-batches per optimizer step, weighted by their samples.

    Each micro-batch's mean loss is multiplied by its sample count before `backward`, and the
    summed gradient is divided by the window's sample count before the step: the window's gradient
    is the mean over its samples, exactly, however uneven the batches (a short last window too).
    With `steps == 1` it does nothing and every micro-batch steps.

    Args:
        steps: micro-batches per optimizer step.
    """

    def __init__(self, steps: int = 1) -> None:
        self.steps = steps
        self.batch_samples = 0
        self.samples = 0
        self._closed = True

    @property
    def starts_window(self) -> bool:
        """Whether the next micro-batch opens a new window (the last one closed)."""
        return self._closed

    @property
    def accumulating(self) -> bool:
        """Whether a window spans more than one micro-batch."""
        return self.steps > 1

    def reset(self) -> None:
        """Forget a window left open (at the start of an epoch)."""
        self.batch_samples, self.samples, self._closed = 0, 0, True

    def add(self, batch: int, samples: int, end_of_data: bool) -> bool:
        """Count micro-batch `batch` (its index in the epoch) of `samples`; return whether it ends the window."""
        if self._closed:
            self.samples, self._closed = 0, False
        self.batch_samples = samples
        self.samples += samples
        self._closed = not self.accumulating or (batch + 1) % self.steps == 0 or end_of_data
        return self._closed

    def weigh(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: the batch mean times the batch's samples when accumulating."""
        return loss * self.batch_samples if self.accumulating else loss

    def average(self, parameters: list[torch.nn.Parameter]) -> None:
        """Turn the window's summed gradients into its mean over samples (before unscaling and clipping)."""
        if self.accumulating:
            for parameter in parameters:
                parameter.grad.div_(self.samples)
