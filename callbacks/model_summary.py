"""`ModelSummary`: print `fitorch.summary` of the model when `fit` starts."""

from __future__ import annotations

import sys
from typing import IO, Any

from fitorch import Callback, summary
from fitorch.checks import check_int


class ModelSummary(Callback):
    """Prints a table of the model's layers, output shapes and parameter counts at the start of `fit`.

    Printed on the main process whatever the learner's `verbose` (adding the callback is the
    request). Output shapes need inputs: give `example_inputs` (a batch of inputs, as the model takes
    them); without them the table shows the layers and parameter counts only.

    Args:
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        depth: show modules down to this nesting level; None shows all.
        file: where to print; standard output by default.

    Raises:
        ValueError: `depth` is not a positive int.

    Example:
        >>> learner.fit(model, (x, y), epochs=3, callbacks=[ModelSummary(x[:2])])  # doctest: +SKIP
    """

    def __init__(self, example_inputs: Any = None, depth: int | None = None, file: IO[str] | None = None) -> None:
        check_int(depth, "depth", minimum=1, allow_none=True, owner="ModelSummary")
        self.example_inputs, self.depth, self.file = example_inputs, depth, file
        self.summary: Any = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self.learner.is_main_process:
            return
        self.summary = summary(self.model, self.example_inputs, depth=self.depth)
        print(self.summary, file=self.file or sys.stdout, flush=True)
