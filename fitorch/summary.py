"""`summary(model, example_inputs)`: a table of a model's layers, output shapes and parameter counts.

It owns one forward pass with hooks on every module, run so that it changes nothing: eval mode (no
dropout randomness, no batch-norm statistics updated) with each module's mode restored afterwards.
Gradients stay enabled during that pass because PyTorch's fused fast path for transformer layers
(taken in eval mode without gradients) bypasses the submodules, whose shapes would then be missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fitorch.checks import check_int


@dataclass
class LayerRow:
    """One row of a summary: a module's qualified name, type, output shape and parameter counts."""

    name: str
    type: str
    depth: int
    output_shape: str
    params: int
    trainable: int


@dataclass
class Summary:
    """The result of `summary`: the rows, the totals, and the table as `str(summary)`."""

    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    frozen_params: int = 0
    show_shapes: bool = True

    def __str__(self) -> str:
        headers = (
            ["Layer (type)", "Output shape", "Params", "Trainable"]
            if self.show_shapes
            else [
                "Layer (type)",
                "Params",
                "Trainable",
            ]
        )
        cells = [_cells(row, self.show_shapes) for row in self.rows]
        widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]
        rule = "=" * (sum(widths) + 3 * (len(widths) - 1))
        lines = [rule, _join(headers, widths), rule, *(_join(line, widths) for line in cells), rule]
        lines += [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Frozen params: {self.frozen_params:,}",
        ]
        if not self.show_shapes:
            lines.append("(pass example inputs to see output shapes)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def _cells(row: LayerRow, show_shapes: bool) -> list[str]:
    name = f"{'  ' * (row.depth - 1)}{row.name} ({row.type})"
    counts = [f"{row.params:,}", f"{row.trainable:,}"]
    return [name, row.output_shape, *counts] if show_shapes else [name, *counts]


def _join(cells: list[str], widths: list[int]) -> str:
    first, *rest = cells
    return "   ".join([first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(rest, widths[1:]))])


def describe_shape(value: Any) -> str:
    """`[2, 8, 16, 16]` for a tensor; tuples, lists and dicts element by element; `None`; else the type."""
    if isinstance(value, torch.Tensor):
        return str(list(value.shape))
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {describe_shape(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe_shape(item) for item in value) + ")"
    return type(value).__name__


def summary(model: nn.Module, example_inputs: Any = None, *, depth: int | None = None) -> Summary:
    """Summarise `model`: every submodule with its output shape and parameter counts, and the totals.

    Each row counts the parameters of the module and its children (shared parameters once);
    the totals count every parameter of the model once, split into trainable (`requires_grad`)
    and frozen. Output shapes come from one forward pass on `example_inputs` that changes no
    state (see the module docstring); a module called several times shows its first output.

    Args:
        model: the model.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs, moved
            to the model's device. None gives the parameter table without output shapes.
        depth: show modules down to this nesting level (1: direct children only); None shows all.

    Returns:
        A `Summary`; `print(summary(...))` shows the table.

    Raises:
        TypeError: `model` is not an `nn.Module`.
        TypeError, ValueError: `depth` is not a positive int.

    Example:
        >>> from torch import nn
        >>> table = summary(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.zeros(1, 4))
        >>> table.total_params, table.rows[0].output_shape
        (58, '[1, 8]')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary: model must be a torch.nn.Module, got {type(model).__name__}.")
    check_int(depth, "depth", minimum=1, allow_none=True, owner="summary")
    shapes = _output_shapes(model, example_inputs) if example_inputs is not None else {}
    rows = []
    for name, module in model.named_modules():
        level = name.count(".") + 1
        if not name or (depth is not None and level > depth):
            continue
        parameters = list(module.parameters())
        rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                depth=level,
                output_shape=shapes.get(name, "-"),
                params=sum(p.numel() for p in parameters),
                trainable=sum(p.numel() for p in parameters if p.requires_grad),
            )
        )
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return Summary(rows, total, trainable, total - trainable, show_shapes=example_inputs is not None)


def _output_shapes(model: nn.Module, example_inputs: Any) -> dict[str, str]:
    shapes: dict[str, str] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            shapes.setdefault(name, describe_shape(output))

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in model.named_modules() if name]
    modes = {module: module.training for module in model.modules()}
    args, kwargs = _as_call(example_inputs, _device_of(model))
    try:
        model.eval()
        with torch.enable_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return shapes


def _device_of(model: nn.Module) -> torch.device | None:
    first = next(model.parameters(), None)
    return first.device if first is not None else None


def _as_call(example_inputs: Any, device: torch.device | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    def move(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) and device is not None else value

    if isinstance(example_inputs, Mapping):
        return (), {key: move(value) for key, value in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(move(value) for value in example_inputs), {}
    return (move(example_inputs),), {}
