"""Checking a checkpoint's content against the learner it is restored into, before anything changes.

`fitorch.storage` has already verified every file (sizes, checksums, the JSON's own checksum); this
module checks what the content means: the loop position's types and ranges, each RNG state (tried on
scratch generators), each optimizer state against its optimizer (class, groups, hyperparameter types,
each state tensor's shape and dtype against its parameter), and that callback states are mappings.
Every function raises `ValueError` naming the checkpoint, the part and the field, and changes nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

_MAX_SEED = 2**63


def _fail(where: str, part: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {part} {problem}. The checkpoint is damaged or does not fit; nothing was loaded.")


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def check_loop(
    loop: Any, where: str, *, epochs: int | None, num_batches: int | None, saved_processes: Any, processes: int
) -> None:
    """The loop position: non-negative int counters, a seed in range, a batch within the epoch.

    Args:
        loop: the checkpoint's `loop` entry.
        where: names the checkpoint in messages.
        epochs: the running fit's `epochs`, or None outside a fit.
        num_batches: batches per epoch of the running fit, when known.
        saved_processes: how many processes wrote the checkpoint.
        processes: how many processes resume it.
    """
    if not isinstance(loop, Mapping):
        raise _fail(where, "the loop position", f"is {type(loop).__name__}, not a mapping")
    for key in ("epoch", "batch", "global_step", "shuffle_seed"):
        if not _count(loop.get(key)):
            raise _fail(where, f"loop.{key}", f"is {loop.get(key)!r}, not an int >= 0")
    if loop["shuffle_seed"] >= _MAX_SEED:
        raise _fail(where, "loop.shuffle_seed", f"is {loop['shuffle_seed']}, beyond the range of a seed")
    if epochs is not None and loop["epoch"] > epochs:
        raise ValueError(
            f"{where} continues at epoch {loop['epoch'] + 1}, beyond this fit's epochs={epochs}: pass epochs >= "
            f"{loop['epoch']} to continue it. Nothing was loaded."
        )
    if num_batches is not None and loop["batch"] > num_batches:
        raise ValueError(
            f"{where} was saved after batch {loop['batch']} of an epoch, but an epoch of this data has "
            f"{num_batches} batches: resume with the data and batch size it was saved with. Nothing was loaded."
        )
    if loop["batch"] and saved_processes != processes:
        raise ValueError(
            f"{where} was saved inside an epoch by {saved_processes} process(es); resuming it with {processes} "
            "would shard the rest of that epoch differently and skip or repeat samples. Resume with "
            f"{saved_processes} process(es), or from a checkpoint saved at the end of an epoch (those resume "
            "with any number). Nothing was loaded."
        )
    running = loop.get("running", {})
    if not isinstance(running, Mapping) or not all(_running_pair(pair) for pair in running.values()):
        raise _fail(where, "loop.running", "is not a mapping of [sum, count] pairs")


def _running_pair(pair: Any) -> bool:
    if isinstance(pair, Mapping):  # one pair per process: {"0": [sum, count], ...}
        return all(_running_pair(item) for item in pair.values())
    return (
        isinstance(pair, Sequence)
        and len(pair) == 2
        and isinstance(pair[0], (int, float))
        and not isinstance(pair[0], bool)
        and _count(pair[1])
    )


def check_rng_states(states: Any, where: str) -> None:
    """Each process's RNG states, tried on scratch generators so that a bad one fails here, not midway."""
    if not isinstance(states, list) or not states:
        raise _fail(where, "the RNG states", "are missing")
    for rank, state in enumerate(states):
        part = f"the RNG state of process {rank}"
        if not isinstance(state, Mapping):
            raise _fail(where, part, "is not a mapping")
        try:
            random.Random().setstate(state["python"])
            kind, keys, position, has_gauss, gauss = state["numpy"]
            np.random.RandomState().set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
            torch.Generator().set_state(state["torch_cpu"])
            cuda = state["torch_cuda"]
            if not isinstance(cuda, list) or not all(_byte_tensor(item) for item in cuda):
                raise TypeError("torch_cuda must be a list of uint8 tensors")
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as error:
            raise _fail(where, part, f"is invalid ({type(error).__name__}: {error})") from None


def _byte_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 1


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str, name: str) -> None:
    """An optimizer state dict against `optimizer`: groups, hyperparameter types, state tensors per parameter.

    A state tensor of its parameter's shape must have the parameter's dtype, and none may be as
    large as its parameter in another shape: the same optimizer class and group sizes over
    parameters in another order would otherwise load and fail inside `optimizer.step()`.
    """
    if not isinstance(state, Mapping) or not isinstance(state.get("param_groups"), list):
        raise _fail(where, f"the {name} state", "has no list of parameter groups")
    saved_groups, groups = state["param_groups"], optimizer.param_groups
    saved_sizes = [len(group.get("params", [])) if isinstance(group, Mapping) else -1 for group in saved_groups]
    sizes = [len(group["params"]) for group in groups]
    if saved_sizes != sizes:
        raise ValueError(
            f"{where}: the {name} parameter groups hold {saved_sizes} parameters, the learner's hold {sizes}. "
            "Resume with the same model and parameter groups. Nothing was loaded."
        )
    per_parameter = state.get("state", {})
    if not isinstance(per_parameter, Mapping):
        raise _fail(where, f"the {name} state", "has a per-parameter state that is not a mapping")
    for index, (saved, group) in enumerate(zip(saved_groups, groups)):
        _check_hyperparameters(saved, group, where, f"{name} group {index}")
        for saved_id, parameter in zip(saved["params"], group["params"]):
            entry = per_parameter.get(saved_id, {})
            if not isinstance(entry, Mapping):
                raise _fail(where, f"the {name} state of parameter {saved_id}", "is not a mapping")
            for key, value in entry.items():
                _check_state_tensor(value, parameter, where, f"{name} state {key!r} of parameter {saved_id}")


def _check_hyperparameters(saved: Mapping[str, Any], group: Mapping[str, Any], where: str, part: str) -> None:
    for key, current in group.items():
        if key == "params":
            continue
        if key not in saved:
            raise _fail(where, part, f"lacks {key!r}")
        if not _same_kind(saved[key], current):
            raise _fail(where, f"{part}: {key}", f"is {saved[key]!r}, where the optimizer holds {current!r}")


def _same_kind(saved: Any, current: Any) -> bool:
    if isinstance(current, bool) or current is None or isinstance(current, str):
        return type(saved) is type(current) or current is None
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    if isinstance(current, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(current) and all(map(_same_kind, saved, current))
    if isinstance(current, torch.Tensor):  # a tensor learning rate
        return isinstance(saved, torch.Tensor) and saved.shape == current.shape
    return True  # an optimizer's own kind of value: torch checks it


def _check_state_tensor(value: Any, parameter: torch.Tensor, where: str, part: str) -> None:
    # Per-parameter states (Adam's moments, SGD's momentum) have their parameter's shape; factored ones
    # (Adafactor's row and column statistics) are smaller; none is as large as its parameter in another shape.
    if not isinstance(value, torch.Tensor) or value.numel() <= 1:
        return
    wrong_shape = value.shape != parameter.shape and value.numel() >= parameter.numel()
    if wrong_shape or (value.shape == parameter.shape and value.dtype != parameter.dtype):
        raise ValueError(
            f"{where}: the {part} is {str(value.dtype).removeprefix('torch.')} {list(value.shape)}, its parameter "
            f"{str(parameter.dtype).removeprefix('torch.')} {list(parameter.shape)}: the optimizer state belongs "
            "to another model or parameter order. Nothing was loaded."
        )


def check_callback_states(states: Any, where: str) -> None:
    """Callback states: a mapping of callback keys to mappings."""
    if not isinstance(states, Mapping) or not all(isinstance(state, Mapping) for state in states.values()):
        raise _fail(where, "the callback states", "are not a mapping of mappings")
