"""Optimizers by name, by class, or from a factory that sees the model (for parameter groups)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}

OptimizerSpec = (
    str | type[torch.optim.Optimizer] | Callable[[nn.Module], torch.optim.Optimizer | Sequence[torch.optim.Optimizer]]
)


def check_optimizer(optimizer: OptimizerSpec, options: dict[str, Any]) -> None:
    """Check an optimizer spec and its keyword options where they are given, before any model exists.

    Raises:
        ValueError: an unknown optimizer name.
        TypeError: an option the optimizer class does not take, or a spec of the wrong type.
    """
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer {optimizer!r}. Known optimizers: {', '.join(OPTIMIZERS)}; "
                "or pass an optimizer class, or a function model -> optimizer."
            )
        optimizer = OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type):
        if not issubclass(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer class must subclass torch.optim.Optimizer, got {optimizer.__name__}.")
        accepted = set(inspect.signature(optimizer).parameters)
        for key in options:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"{optimizer.__name__} takes no option {key!r}.{hint}")
    elif not callable(optimizer):
        raise TypeError(f"optimizer must be a name, an optimizer class or a callable, got {optimizer!r}.")
    elif options:
        raise TypeError(
            f"optimizer options {sorted(options)} apply only to a name or a class; a factory function sets its own."
        )


def build_optimizers(
    optimizer: OptimizerSpec, model: nn.Module, options: dict[str, Any]
) -> list[torch.optim.Optimizer]:
    """Create the optimizer(s) for `model`; a factory may return one optimizer or several.

    Raises:
        TypeError: the factory returned something other than optimizers.
    """
    if isinstance(optimizer, str):
        optimizer = OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type):
        every = list(model.parameters())
        params = [p for p in every if p.requires_grad]
        if not every:
            raise ValueError(
                f"The model ({type(model).__name__}) has no parameters to train; give fit a model with learnable "
                "layers, or use evaluate / predict for a model that only transforms its inputs."
            )
        if not params:
            raise ValueError(
                f"The model has no trainable parameters: all {len(every)} have requires_grad=False. "
                "Unfreeze some (parameter.requires_grad_(True)) before fit."
            )
        return [optimizer(params, **options)]
    made = optimizer(model)
    made = list(made) if isinstance(made, (list, tuple)) else [made]
    for item in made:
        if not isinstance(item, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory must return torch optimizers, got {type(item).__name__}.")
    return made
