"""Compiled models: `Learner(compile=...)`, and plain parameter names for models `torch.compile` wrapped.

`torch.compile(model)` returns an `OptimizedModule` whose `state_dict()` prefixes every key with
`_orig_mod.` (PyTorch issue 101107), so weights saved from it do not load into the plain model. fitorch
keeps the plain module as `learner.model` and sends forward passes through the compiled wrapper: every
checkpoint, `load_weights`, `ModelCheckpoint` and `EarlyStopping` then reads and writes the plain names,
whether the learner compiled the model or the user did. This module owns that unwrapping, the check of
the `compile` option and the compiled wrapper the learner keeps across fits of the same model.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fitorch.checks import check_bool

COMPILED_PREFIX = "_orig_mod."


def is_compiled(model: Any) -> bool:
    """Whether `model` is the `OptimizedModule` wrapper that `torch.compile(model)` returns."""
    # Looked up, not imported: importing torch._dynamo costs about a second, and a model can only
    # be compiled once something has imported it.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The plain module under a `torch.compile` wrapper (the same parameters), or `model` itself."""
    return model._orig_mod if is_compiled(model) else model


def strip_compiled_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved from a compiled model, with the `_orig_mod.` prefix removed when every key has it."""
    if not weights or not all(key.startswith(COMPILED_PREFIX) for key in weights):
        return weights
    return {key[len(COMPILED_PREFIX) :]: value for key, value in weights.items()}


def compile_options(value: Any, owner: str = "Learner") -> dict[str, Any] | None:
    """Check `Learner(compile=...)`: False (or None) for none, True for `torch.compile`'s defaults, or its options.

    Raises:
        TypeError: neither a bool nor a mapping, or a key `torch.compile` does not take.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        wanted = check_bool(value, "compile (True, False or a dict of torch.compile options)", owner=owner)
        return {} if wanted else None
    accepted = [name for name in inspect.signature(torch.compile).parameters if name != "model"]
    unknown = [key for key in value if key not in accepted]
    if unknown:
        raise TypeError(
            f"{owner}: compile options must be keyword arguments of torch.compile ({', '.join(accepted)}), "
            f"got {unknown[0]!r}."
        )
    return dict(value)


class Compiler:
    """Compiles the module a fit runs, keeping the compiled wrapper across fits of the same module.

    Args:
        options: keyword arguments for `torch.compile`.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._source: nn.Module | None = None
        self._compiled: nn.Module | None = None

    def __call__(self, module: nn.Module, keep: bool) -> nn.Module:
        """`module` compiled; with `keep`, the wrapper is reused by the next call with the same module.

        A distributed wrapper (DDP) is never kept: one alive when its process group is destroyed aborts the job.
        """
        if module is self._source:
            return self._compiled
        compiled = torch.compile(module, **self.options)
        if keep:
            self._source, self._compiled = module, compiled
        return compiled
