"""Which batches each epoch trains on, and each validation runs on.

Without `steps_per_epoch`, an epoch is one pass over the training loader. With it, an epoch is the
next `steps_per_epoch` batches of an endless stream of passes, as in Keras: a loader of 100 batches
with `steps_per_epoch=30` trains batches 0-29 of the first pass in epoch 1, 30-59 in epoch 2, ...,
90-99 of the first pass and 0-19 of the second in epoch 4, so no batch is left out however the
numbers fall. Pass `p` of a shuffled loader is drawn from `shuffle_seed + p` (pass and epoch coincide
without `steps_per_epoch`), so the batches of any epoch follow from its number alone: a run resumed
inside an epoch trains exactly what the uninterrupted run trained. A loader without a length (an
iterable dataset, a generator) is read as one stream, continued from epoch to epoch.

Every pass that stops early is ended the way Accelerate's loader ends a full pass, so its record of
the running loader (`gradient_state.end_of_dataloader`, which the learner reads) stays right.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from fitorch.data import loader_batches


def first_batches(loader: DataLoader, count: int | None) -> Iterator[Any]:
    """The first `count` batches of one pass of `loader` (all of them for None), ending the pass cleanly."""
    if count is None:
        yield from loader
        return
    iterator = iter(loader)
    try:
        yield from itertools.islice(iterator, count)
    finally:
        iterator.close()
        end = getattr(loader, "end", None)  # Accelerate's loaders: forget this one as the running loader
        if end is not None:
            end()


class TrainingBatches:
    """The batches of each training epoch, for one fit.

    Args:
        loader: the (prepared) training loader.
        steps_per_epoch: batches per epoch, or None for one pass.
        skip_first_batches: `accelerator.skip_first_batches`, which starts a pass part-way.
        reseed: called with the pass number before a pass starts (reseeds the shuffle).
    """

    def __init__(
        self,
        loader: DataLoader,
        steps_per_epoch: int | None,
        skip_first_batches: Callable[[DataLoader, int], DataLoader],
        reseed: Callable[[int], None],
    ) -> None:
        self.loader, self.steps = loader, steps_per_epoch
        self.length = loader_batches(loader)
        self.skip_first_batches, self.reseed = skip_first_batches, reseed
        self._stream: Iterator[Any] | None = None
        self._stream_position = 0

    @property
    def per_epoch(self) -> int | None:
        """Batches in one epoch, None when unknown (a loader without a length and no `steps_per_epoch`)."""
        return self.steps if self.steps is not None else self.length

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[int, Any]]:
        """`(index, batch)` for epoch `epoch`, after the first `skip` batches (which a resume already trained)."""
        if self.steps is None:
            return enumerate(self._pass(epoch, skip), start=skip)
        position = epoch * self.steps + skip
        if self.length is None:
            batches = self._from_stream(position)
        else:
            batches = self._passes(*divmod(position, self.length))
        return enumerate(itertools.islice(batches, self.steps - skip), start=skip)

    def _pass(self, number: int, skip: int) -> Iterator[Any]:
        self.reseed(number)
        return iter(self.skip_first_batches(self.loader, skip) if skip else self.loader)

    def _passes(self, number: int, skip: int) -> Iterator[Any]:
        while True:
            loader = self.skip_first_batches(self.loader, skip) if skip else self.loader
            self.reseed(number)
            yield from first_batches(loader, self.length - skip)
            number, skip = number + 1, 0

    def _from_stream(self, position: int) -> Iterator[Any]:
        """The stream of passes of a loader without a length, at `position` (read on from the last epoch)."""
        if self._stream is None or self._stream_position != position:
            self._stream = self._endless()
            self._stream_position = 0
            for _ in itertools.islice(self._stream, position):  # a resume: read past what was trained
                self._stream_position += 1
        for batch in self._stream:
            self._stream_position += 1
            yield batch

    def _endless(self) -> Iterator[Any]:
        number = 0
        while True:
            self.reseed(number)
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:  # a used-up generator: the stream ends, and the epoch comes up short
                return
            number += 1
