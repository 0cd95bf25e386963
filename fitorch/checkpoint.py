"""Checkpoints: the pickle-free on-disk format, atomic writes, and exact resume.

This module owns what a checkpoint is and every read and write of one. A checkpoint is a
directory: `model.safetensors` (the unwrapped model's weights, loadable with nothing but
`safetensors.torch.load_file`), `training_state.safetensors` (optimizer state, grad scaler and RNG
tensors) and `checkpoint.json` (everything else). Loading uses safetensors and json only, so a
checkpoint can never run code. Writes go to a hidden sibling directory that is renamed into place
once complete, so a crash at any moment leaves the previous checkpoint loadable. See
docs/checkpoints.md for the format and the crash protocol.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import random
import secrets
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fitorch.distributed import check_same_checkpoint
from fitorch.learner import Learner

logger = logging.getLogger("fitorch")

FORMAT_NAME = "fitorch-checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "checkpoint.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"

# How values that JSON cannot hold are tagged: a tensor lives in a safetensors file under a name,
# tuples and dicts with non-string keys (an optimizer's `state`) keep their type on the way back.
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_LISTED = 5  # keys listed per kind in a mismatch message
_TRAINING_KEYS = ("loop", "optimizers", "scaler", "rng", "callbacks")


@dataclass
class _Checkpoint:
    """A checkpoint read and checked, ready to apply: nothing here has touched a model yet."""

    path: str
    metadata: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] | None = None


# ---------------------------------------------------------------------------- public functions


def save_checkpoint(learner: Learner, path: str | os.PathLike, *, weights_only: bool = False) -> str:
    """Write the learner's model and training state to the checkpoint directory `path`, atomically.

    Saves the unwrapped model's weights, the optimizers' state, the grad scaler, the loop counters
    (epoch, batch within the epoch, global step), the Python, NumPy and torch RNG states and the
    `state_dict()` of every callback of the running call. An existing checkpoint at `path` is
    replaced only once the new one is complete. Under several processes every process must call
    this (the RNG states are gathered); the main process writes and all wait until it is done.

    Args:
        learner: a learner that has a model, usually during `fit` (from a callback) or after it.
        path: the checkpoint directory; its parent is created if needed.
        weights_only: write only `model.safetensors` and the JSON, not the training state
            (enough for inference or `load_weights`, not for resuming).

    Returns:
        `path`, as a string.

    Raises:
        TypeError: `learner` is not a `Learner`, or a callback's state holds a value JSON cannot store.
        ValueError: the learner has no model yet, or `path` exists and is not a checkpoint.
        NotImplementedError: the learner trains under FSDP or DeepSpeed (sharded state).

    Example:
        >>> learner.fit(model, (x, y), epochs=2)  # doctest: +SKIP
        >>> save_checkpoint(learner, "runs/exp1/final")  # doctest: +SKIP
    """
    model = _learner_model(learner, "save_checkpoint")
    _refuse_sharded(learner, "save_checkpoint")
    path = os.fspath(path)
    accelerator = learner.accelerator
    rng_states = None if weights_only else _gather_rng_states(accelerator)  # a collective: every process
    if learner.is_main_process:
        weights = dict(model.state_dict())
        metadata = _describe(learner, model, weights, weights_only)
        files = {MODEL_FILE: weights}
        if not weights_only:
            files[STATE_FILE] = _training_state(learner, rng_states, metadata)
        _write_directory(path, files, metadata)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # no process reads or moves on before the checkpoint is complete
    return path


def _refuse_sharded(learner: Learner, action: str) -> None:
    kind = getattr(learner.accelerator, "distributed_type", None)
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise NotImplementedError(
            f"{action}: fitorch checkpoints hold full tensors, and gathering the sharded model and optimizer "
            f"state of a {kind.value} run into them is not supported yet. Use accelerator.save_state() / "
            "load_state() for now, or train with plain data parallel."
        )


def load_checkpoint(learner_or_model: Learner | nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Restore a checkpoint into a learner (everything) or into a model (its weights).

    For a learner, restores the model, the optimizers, the grad scaler, the callbacks' states, the
    loop counters and the RNG states, so that the running `fit` continues exactly where the
    checkpoint was saved (this is what `fit(resume=path)` and `BackupAndRestore` call; the counters
    only take effect inside a `fit`). Everything is read and checked before anything is changed:
    a checkpoint that does not fit leaves the model and the optimizers untouched.

    Args:
        learner_or_model: a `Learner` with a model and optimizers, or an `nn.Module`.
        path: a checkpoint directory written by `save_checkpoint`.

    Returns:
        The checkpoint's metadata (the parsed `checkpoint.json`): `metadata["loop"]["epoch"]` is the
        next epoch to train, `metadata["loop"]["global_step"]` the optimizer steps taken.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: not a checkpoint, a damaged file, a newer format version, a checkpoint that does
            not fit the model or the optimizers, or a weights-only checkpoint given to a learner.
        TypeError: neither a `Learner` nor an `nn.Module`.
        NotImplementedError: the learner trains under FSDP or DeepSpeed (sharded state).

    Example:
        >>> metadata = load_checkpoint(model, "runs/exp1/best")  # doctest: +SKIP
        >>> metadata["loop"]["epoch"]  # doctest: +SKIP
        17
    """
    if isinstance(learner_or_model, nn.Module):
        checkpoint = _read(path, training_state=False)
        _check_weights(learner_or_model, checkpoint.weights, checkpoint.path, strict=True)
        learner_or_model.load_state_dict(checkpoint.weights)
        return checkpoint.metadata
    learner = learner_or_model
    model = _learner_model(learner, "load_checkpoint", "a fitorch.Learner or a torch.nn.Module")
    _refuse_sharded(learner, "load_checkpoint")
    checkpoint = _read(path, training_state=True)
    _check_weights(model, checkpoint.weights, checkpoint.path, strict=True)
    optimizer_states = _check_optimizers(learner, checkpoint)
    callback_states = _decode(checkpoint.metadata["callbacks"], checkpoint.state, checkpoint.path)
    model.load_state_dict(checkpoint.weights)
    for optimizer, state in zip(learner.optimizers, optimizer_states):
        optimizer.load_state_dict(state)
    _restore_scaler(learner, checkpoint)
    _restore_callbacks(learner, callback_states)
    learner.load_loop_state(checkpoint.metadata["loop"])
    _restore_rng_states(learner, checkpoint)  # last: nothing after this may draw random numbers
    return checkpoint.metadata


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> Any:
    """Load weights into `model` from a checkpoint directory or a bare `.safetensors` file.

    Tied weights saved once (as safetensors requires) are filled into every name that shares them.
    All keys are checked before the model is touched.

    Args:
        model: the model to load into, in place.
        path: a checkpoint directory, or any `.safetensors` file of a state dict.
        strict: require the checkpoint's keys to match the model's exactly; with False, missing and
            unexpected keys are skipped (mis-shaped keys are always an error).

    Returns:
        What `model.load_state_dict` returns: `missing_keys` and `unexpected_keys`.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a damaged file, a newer format version, or weights that do not fit `model`
            (the message lists missing, unexpected and mis-shaped keys).
        TypeError: `model` is not an `nn.Module`.

    Example:
        >>> model = make_model()  # doctest: +SKIP
        >>> load_weights(model, "runs/exp1/best")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_weights: model must be a torch.nn.Module, got {type(model).__name__}.")
    if os.path.isfile(path):
        weights = _fill_tied(model, _load_tensors(os.fspath(path)))
    else:
        weights = _read(path, training_state=False).weights
    _check_weights(model, weights, os.fspath(path), strict)
    return model.load_state_dict(weights, strict=strict)


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The newest checkpoint at or under `directory` (by save time), or None when there is none.

    `directory` may itself be a checkpoint. A copy left aside by a save that was killed between its
    two renames counts in place of the checkpoint it stands for; unfinished writes never count.

    Args:
        directory: a checkpoint directory, or a folder to search (all depths), such as a run's folder.

    Raises:
        ValueError: a checkpoint found there has an unreadable `checkpoint.json`.
    """
    directory = os.fspath(directory)
    if _is_checkpoint(directory) or (not os.path.exists(directory) and _is_checkpoint(_aside_path(directory))):
        return directory
    found = []
    for parent, names, _ in os.walk(directory):
        descend = []
        for name in names:
            logical = _logical_name(parent, name)
            if logical is not None and _is_checkpoint(os.path.join(parent, name)):
                found.append(os.path.join(parent, logical))
            elif not name.startswith("."):  # hidden: unfinished writes, deletions, other tools' state
                descend.append(name)
        names[:] = descend
    if not found:
        return None
    return max(found, key=lambda path: datetime.fromisoformat(_read_metadata(_resolve(path))["created"]))


def delete_checkpoint(path: str | os.PathLike) -> bool:
    """Delete the checkpoint directory `path` (and any copy of it left aside by an interrupted save).

    The directory is first renamed to a hidden name, so a crash during the deletion never leaves a
    half-deleted checkpoint that looks loadable.

    Args:
        path: a checkpoint directory.

    Returns:
        Whether anything was deleted (False when there was no checkpoint at `path`).

    Raises:
        ValueError: `path` exists but is not a checkpoint (it is left alone).
    """
    path = os.fspath(path)
    aside, deleted = _aside_path(path), False
    if os.path.exists(path):
        _check_replaceable(path)
        trash = os.path.join(os.path.dirname(os.path.abspath(path)), _hidden(path, f"del-{secrets.token_hex(4)}"))
        os.replace(path, trash)
        shutil.rmtree(trash)
        deleted = True
    if os.path.isdir(aside):
        shutil.rmtree(aside)
        deleted = True
    return deleted


def resume_learner(learner: Learner, resume: str | os.PathLike | bool | None) -> dict[str, Any] | None:
    """Restore `learner` at the start of `fit`: from a callback's backup, the checkpoint `resume`, or neither.

    `Learner.fit` calls this after the model and optimizers are prepared and the callbacks attached,
    before `on_train_begin`, so every callback starts from the restored state. A callback offers a
    checkpoint by defining `resume_checkpoint()` returning a path or None (`BackupAndRestore` returns
    its backup when there is one); an offered checkpoint takes precedence over `resume`, since it
    is the newer state of this same fit.

    Args:
        learner: the learner inside `fit`.
        resume: a checkpoint directory, True for the newest checkpoint under `learner.run_dir`, or
            None / False for none.

    Returns:
        The restored checkpoint's metadata, as `load_checkpoint` returns it; None when nothing was restored.

    Raises:
        TypeError: `resume` is neither a path, a bool nor None.
        ValueError: `resume=True` without `run_dir`, or no checkpoint under it; and every error of
            `load_checkpoint`.
        FileNotFoundError, ValueError: under several processes, on every process, when they would not
            all resume from the same checkpoint (nodes that do not share a filesystem).
    """
    path = _offered_checkpoint(learner)
    if path is None and resume is not None and resume is not False:
        path = _checkpoint_to_resume(learner, resume)
    check_same_checkpoint(learner.accelerator, path)  # a node that cannot see it fails on every process
    if path is None and resume is True:
        raise ValueError(
            f"fit(resume=True): no checkpoint under run_dir {learner.run_dir!r}. Save some with "
            "ModelCheckpoint or BackupAndRestore, or pass the checkpoint's path to resume."
        )
    if path is None:
        return None
    metadata = load_checkpoint(learner, path)
    loop = metadata["loop"]
    logger.info(
        "Resumed from %s at epoch %d, batch %d, global step %d.",
        path,
        loop["epoch"] + 1,
        loop["batch"],
        loop["global_step"],
    )
    return metadata


def _offered_checkpoint(learner: Learner) -> str | None:
    for callback in learner.event_callbacks or []:
        path = callback.resume_checkpoint()
        if path is not None:
            return os.fspath(path)
    return None


def _checkpoint_to_resume(learner: Learner, resume: str | os.PathLike | bool) -> str | None:
    if isinstance(resume, (str, os.PathLike)):
        return os.fspath(resume)
    if resume is not True:
        raise TypeError(f"resume must be a checkpoint path or True, got {resume!r}.")
    if learner.run_dir is None:
        raise ValueError(
            "fit(resume=True) looks for the newest checkpoint under run_dir, but run_dir is None. "
            "Set Learner(run_dir=...) or pass the checkpoint's path: fit(..., resume='runs/x/backup')."
        )
    return latest_checkpoint(learner.run_dir) if os.path.isdir(learner.run_dir) else None


# ---------------------------------------------------------------------------- what is saved


def _learner_model(learner: Any, caller: str, accepted: str = "a fitorch.Learner") -> nn.Module:
    if not isinstance(learner, Learner):
        raise TypeError(f"{caller}: expected {accepted}, got {type(learner).__name__}.")
    if learner.model is None:
        raise ValueError(
            f"{caller}: the learner has no model yet; call it during or after learner.fit(model, ...), "
            "or pass the model itself to load_checkpoint / load_weights."
        )
    return learner.model


def _describe(
    learner: Learner, model: nn.Module, weights: Mapping[str, torch.Tensor], weights_only: bool
) -> dict[str, Any]:
    """The JSON part that is known before any tensor is written."""
    from fitorch import __version__  # read late: this module is imported while fitorch/__init__ runs

    parameters = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for name, t in weights.items()
    }
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(),
        "fitorch_version": __version__,
        "torch_version": torch.__version__,
        "weights_only": weights_only,
        "loop": learner.loop_state(),
        "model": {"class": type(model).__qualname__, "parameters": parameters},
        "config": learner.config(),
        "files": {},
    }


def _training_state(
    learner: Learner, rng_states: list[dict[str, Any]], metadata: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Encode optimizers, scaler, RNG and callback states into `metadata`; return their tensors."""
    tensors: dict[str, torch.Tensor] = {}
    metadata["optimizers"] = [
        {
            "class": type(_unwrap_optimizer(optimizer)).__name__,
            "state_dict": _encode(optimizer.state_dict(), f"optimizer.{i}", tensors),
        }
        for i, optimizer in enumerate(learner.optimizers)
    ]
    scaler = learner.accelerator.scaler if learner.accelerator is not None else None
    metadata["scaler"] = _encode(scaler.state_dict(), "scaler", tensors) if scaler is not None else None
    metadata["rng"] = [_encode(state, f"rng.{rank}", tensors) for rank, state in enumerate(rng_states)]
    metadata["callbacks"] = {
        key: _encode(state, f"callbacks.{key}", tensors) for key, state in _callback_states(learner).items()
    }
    return tensors


def _unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the real one


def _callback_keys(learner: Learner) -> dict[str, Any]:
    """Stable keys for the running call's callbacks: class name and index among that class (`History[0]`).

    Counting within a class keeps keys stable when unrelated callbacks are added or removed.
    """
    keys, seen = {}, {}
    for callback in learner.event_callbacks or []:
        name = type(callback).__name__
        keys[f"{name}[{seen.get(name, 0)}]"] = callback
        seen[name] = seen.get(name, 0) + 1
    return keys


def _callback_states(learner: Learner) -> dict[str, Any]:
    states = {}
    for key, callback in _callback_keys(learner).items():
        state = callback.state_dict()
        if state:
            states[key] = state
    return states


# ---------------------------------------------------------------------------- RNG states


def _local_rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), position, has_gauss, gauss),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _gather_rng_states(accelerator: Any) -> list[dict[str, Any]]:
    """Every process's RNG states, in process order (each process draws its own dropout masks)."""
    states = _local_rng_states()
    if accelerator is None or accelerator.num_processes == 1:
        return [states]
    from accelerate.utils import gather_object

    # In-memory exchange between this run's own processes; nothing from disk is unpickled.
    return gather_object([states])


def _restore_rng_states(learner: Learner, checkpoint: _Checkpoint) -> None:
    states = _decode(checkpoint.metadata["rng"], checkpoint.state, checkpoint.path)
    rank = learner.accelerator.process_index if learner.accelerator is not None else 0
    state = states[rank] if rank < len(states) else states[0]  # fewer processes saved: share the first's
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state["torch_cuda"]:
        for device, cuda_state in enumerate(state["torch_cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# ---------------------------------------------------------------------------- restoring


def _check_optimizers(learner: Learner, checkpoint: _Checkpoint) -> list[dict[str, Any]]:
    """The optimizer state dicts, after checking they fit the learner's optimizers."""
    saved = checkpoint.metadata["optimizers"]
    where = f"Checkpoint {checkpoint.path!r}"
    if len(saved) != len(learner.optimizers):
        raise ValueError(
            f"{where} holds {len(saved)} optimizer(s), the learner has {len(learner.optimizers)}. "
            "Resume with the same optimizer setup it was saved with. Nothing was loaded."
        )
    states = []
    for optimizer, entry in zip(learner.optimizers, saved):
        name = type(_unwrap_optimizer(optimizer)).__name__
        if entry["class"] != name:
            raise ValueError(
                f"{where} holds the state of a {entry['class']} optimizer, the learner uses {name}. "
                "Resume with the optimizer it was saved with. Nothing was loaded."
            )
        state = _decode(entry["state_dict"], checkpoint.state, checkpoint.path)
        saved_sizes = [len(group["params"]) for group in state["param_groups"]]
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        if saved_sizes != sizes:
            raise ValueError(
                f"{where}: the {name} parameter groups hold {saved_sizes} parameters, the learner's "
                f"hold {sizes}. Resume with the same model and parameter groups. Nothing was loaded."
            )
        states.append(state)
    return states


def _restore_scaler(learner: Learner, checkpoint: _Checkpoint) -> None:
    saved = checkpoint.metadata["scaler"]
    scaler = learner.accelerator.scaler if learner.accelerator is not None else None
    if scaler is not None and saved:  # an empty state is that of a disabled scaler
        scaler.load_state_dict(_decode(saved, checkpoint.state, checkpoint.path))


def _restore_callbacks(learner: Learner, states: Mapping[str, Any]) -> None:
    # A callback without a saved state keeps its own; a saved state without its callback is unused
    # (resuming with a callback added or removed is legitimate).
    for key, callback in _callback_keys(learner).items():
        if key in states:
            callback.load_state_dict(states[key])


def _check_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], path: str, strict: bool) -> None:
    """Raise, naming the first few keys of each kind, unless `weights` fit `model`."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    misshaped = [
        f"{key} (checkpoint {list(weights[key].shape)}, model {list(tensor.shape)})"
        for key, tensor in expected.items()
        if key in weights and weights[key].shape != tensor.shape
    ]
    if not misshaped and (not strict or not (missing or unexpected)):
        return
    parts = [
        f"{label} ({len(keys)}): {', '.join(keys[:_LISTED])}{', ...' if len(keys) > _LISTED else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        if keys
    ]
    hint = "" if misshaped or not strict else ", or pass strict=False to load_weights to load only the matching keys"
    raise ValueError(
        f"Checkpoint {path!r} does not fit {type(model).__qualname__}: {'; '.join(parts)}. "
        f"The model was not changed. Load a checkpoint saved from the same architecture{hint}."
    )


def _fill_tied(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every tied name of `model` missing from a bare file the tensor saved under a name it shares."""
    names_by_view: dict[tuple, list[str]] = {}
    for name, tensor in model.state_dict().items():
        if tensor.numel():
            names_by_view.setdefault(_view_key(tensor), []).append(name)
    for names in names_by_view.values():
        present = next((name for name in names if name in weights), None)
        for name in names if present is not None else []:
            weights.setdefault(name, weights[present])
    return weights


# ---------------------------------------------------------------------------- tensors <-> JSON


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able `value`, with its tensors moved into `tensors` under names starting with `name`."""
    if isinstance(value, torch.Tensor):
        while name in tensors:  # keys containing dots could collide; keep both
            name += "_"
        tensors[name] = value.detach()
        return {_TENSOR: name}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: _encode(item, f"{name}.{key}", tensors) for key, item in value.items()}
        return {
            _ITEMS: [[_encode(key, name, {}), _encode(item, f"{name}.{key}", tensors)] for key, item in value.items()]
        }
    if isinstance(value, (tuple, list)):
        items = [_encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"Cannot store {name} in a checkpoint: a {type(value).__name__} is neither JSON nor a tensor. "
        "state_dict() must return JSON-able values and tensors (convert it, e.g. to a list or a str)."
    )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor] | None, path: str) -> Any:
    """The inverse of `_encode`."""
    if isinstance(value, list):
        return [_decode(item, tensors, path) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and _TENSOR in value:
        if tensors is None or value[_TENSOR] not in tensors:
            raise ValueError(
                f"Checkpoint {path!r} is damaged: {STATE_FILE} lacks the tensor {value[_TENSOR]!r} "
                f"that {METADATA_FILE} refers to. Use another checkpoint."
            )
        return tensors[value[_TENSOR]]
    if len(value) == 1 and _TUPLE in value:
        return tuple(_decode(item, tensors, path) for item in value[_TUPLE])
    if len(value) == 1 and _ITEMS in value:
        return {_decode(key, tensors, path): _decode(item, tensors, path) for key, item in value[_ITEMS]}
    return {key: _decode(item, tensors, path) for key, item in value.items()}


def _view_key(tensor: torch.Tensor) -> tuple:
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))


def _writable(tensors: dict[str, torch.Tensor], what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What safetensors can write, which refuses shared memory: each exact duplicate (a tied weight)
    becomes an alias of the first name holding it; a tensor overlapping another's memory is copied."""
    unique, aliases, first_name, storages = {}, {}, {}, set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"Cannot save {what} entry {name!r}: a {type(tensor).__name__}, not a tensor.")
        view = _view_key(tensor)
        if tensor.numel() and view in first_name:
            aliases[name] = first_name[view]
            continue
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        shares = tensor.numel() and storage in storages
        unique[name] = tensor.clone() if shares else tensor.contiguous()
        first_name[view] = name
        storages.add(storage)
    return unique, aliases


# ---------------------------------------------------------------------------- files on disk


def _hidden(path: str, kind: str) -> str:
    return f".{os.path.basename(os.path.abspath(path))}.{kind}"


def _aside_path(path: str) -> str:
    """Where the previous checkpoint waits while a new one is renamed into its place."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), _hidden(path, "old"))


def _is_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, METADATA_FILE))


def _logical_name(parent: str, name: str) -> str | None:
    """The checkpoint name a folder entry stands for: itself, or for a copy left aside whose checkpoint is
    gone (a kill between the two renames of a save), the name it was moved from; None for other hidden ones."""
    if not name.startswith("."):
        return name
    original = name[1 : -len(".old")]
    if name.endswith(".old") and original and not os.path.exists(os.path.join(parent, original)):
        return original
    return None


def _check_replaceable(path: str) -> None:
    """Refuse to replace or delete something that is not a checkpoint (an empty folder is fine)."""
    if os.path.isdir(path) and (not os.listdir(path) or os.path.isfile(os.path.join(path, METADATA_FILE))):
        return
    raise ValueError(
        f"{path!r} exists and is not a fitorch checkpoint (no {METADATA_FILE}); refusing to replace "
        "or delete it. Choose another path, or remove it yourself."
    )


def _clean_leftovers(path: str) -> None:
    """Finish or undo what a killed save or delete of `path` left behind (main process only)."""
    parent, aside = os.path.dirname(os.path.abspath(path)), _aside_path(path)
    if os.path.isdir(aside):
        if os.path.exists(path):
            shutil.rmtree(aside)  # killed after the new copy was in place: the old one is done with
        else:
            os.replace(aside, path)  # killed between the two renames: the old copy is the checkpoint
    for prefix in (_hidden(path, "tmp-"), _hidden(path, "del-")):
        for entry in os.scandir(parent):
            if entry.name.startswith(prefix):
                shutil.rmtree(entry.path, ignore_errors=True)


def _write_directory(path: str, files: dict[str, dict[str, torch.Tensor]], metadata: dict[str, Any]) -> None:
    """Write a complete checkpoint beside `path`, fsync it, then rename it into place.

    To replace an existing checkpoint: rename it aside, rename the new one in, delete the old one.
    A kill between the two renames leaves only the aside copy, which loading falls back to and the
    next save moves back; see docs/checkpoints.md.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    _clean_leftovers(path)
    if os.path.exists(path):
        _check_replaceable(path)
    temp = os.path.join(parent, _hidden(path, f"tmp-{os.getpid()}-{secrets.token_hex(4)}"))
    os.mkdir(temp)  # not tempfile.mkdtemp: its private 0o700 mode would stay on the renamed checkpoint
    try:
        for name, tensors in files.items():
            writable, aliases = _writable(tensors, name)
            metadata["files"][name] = {**_write_tensors(os.path.join(temp, name), writable), "aliases": aliases}
        _write_json(os.path.join(temp, METADATA_FILE), metadata)  # last: names every file above
        _fsync_directory(temp)
        if os.path.exists(path):
            os.replace(path, _aside_path(path))
        os.replace(temp, path)
        _fsync_directory(parent)  # the renames themselves reach the disk
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(_aside_path(path), ignore_errors=True)


# safetensors' names for torch dtypes (https://github.com/huggingface/safetensors, the format spec).
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_tensors(file: str, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Write a safetensors file straight from the tensors' memory, checksumming the bytes as they go, and fsync it.

    `safetensors.torch.save_file` first copies every tensor into one bytes object; writing each
    tensor's own buffer saves that copy and the read-back for the checksum (docs/performance.md).
    The result is a standard safetensors file: `load_file` reads it, and the tests check that.
    """
    if any(tensor.dtype not in _SAFETENSORS_DTYPES for tensor in tensors.values()):
        save_file(tensors, file, metadata={"format": "pt"})  # rarer dtypes: let safetensors encode them
        with open(file, "r+b") as handle:  # writable: Windows cannot fsync a read-only handle
            checksum = _crc32(handle)
            os.fsync(handle.fileno())
        return {"bytes": os.path.getsize(file), "crc32": checksum}
    buffers, header, offset = [], {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in tensors.items():
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape)}
        header[name]["data_offsets"] = [offset, offset + data.nbytes]
        buffers.append(data)
        offset += data.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
    checksum, size = 0, 0
    with open(file, "wb") as handle:
        for chunk in (len(encoded).to_bytes(8, "little"), encoded, *buffers):
            handle.write(chunk)
            checksum, size = zlib.crc32(chunk, checksum), size + len(chunk)  # bytes, or 1-D uint8 arrays
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": size, "crc32": checksum}


def _crc32(handle: Any) -> int:
    """CRC-32 of an open file, read through a memory map: no copy, just the pages of the page cache."""
    if os.fstat(handle.fileno()).st_size == 0:
        return zlib.crc32(b"")
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return zlib.crc32(view)


def _write_json(file: str, data: dict[str, Any]) -> None:
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: str) -> None:
    if os.name == "nt":  # Windows cannot open a directory; its renames are durable without this
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------- reading


def _resolve(path: str | os.PathLike) -> str:
    """The directory to read for `path`: itself, or the aside copy a killed save left."""
    path = os.fspath(path)
    if _is_checkpoint(path):
        return path
    if not os.path.exists(path):
        if _is_checkpoint(_aside_path(path)):
            return _aside_path(path)
        raise FileNotFoundError(f"No checkpoint at {path!r}: the path does not exist.")
    raise ValueError(
        f"{path!r} is not a fitorch checkpoint: it has no {METADATA_FILE}. "
        "Pass a directory written by save_checkpoint, or a .safetensors file to load_weights."
    )


def _read_metadata(directory: str) -> dict[str, Any]:
    file = os.path.join(directory, METADATA_FILE)
    try:
        with open(file, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Checkpoint {directory!r}: cannot read {METADATA_FILE} ({error}). "
            "The file is damaged; use another checkpoint."
        ) from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"Checkpoint {directory!r}: {METADATA_FILE} is not a fitorch checkpoint description.")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint {directory!r} has format version {version!r}, written by a newer fitorch "
            f"(fitorch {metadata.get('fitorch_version')}); this fitorch reads format version "
            f"{FORMAT_VERSION} and older. Upgrade fitorch: pip install -U fitorch."
        )
    return metadata


def _read(path: str | os.PathLike, training_state: bool) -> _Checkpoint:
    """Read and check a checkpoint directory's files; touches no model."""
    directory = _resolve(path)
    metadata = _read_metadata(directory)
    if training_state and metadata.get("weights_only"):
        raise ValueError(
            f"Checkpoint {directory!r} holds weights only (save_weights_only=True), not the training "
            "state needed to resume. Load it with load_weights, or resume from a full checkpoint."
        )
    absent = [key for key in _TRAINING_KEYS if key not in metadata] if training_state else []
    if absent:
        raise ValueError(f"Checkpoint {directory!r} is damaged: {METADATA_FILE} lacks {', '.join(absent)}.")
    weights = _read_file(directory, MODEL_FILE, metadata)
    saved_order = metadata.get("model", {}).get("parameters", {})  # safetensors sorts names; messages follow the model
    weights = {**{name: weights[name] for name in saved_order if name in weights}, **weights}
    state = _read_file(directory, STATE_FILE, metadata, own=True) if training_state else None
    return _Checkpoint(directory, metadata, weights, state)


def _read_file(directory: str, name: str, metadata: dict[str, Any], own: bool = False) -> dict[str, torch.Tensor]:
    """Load one safetensors file of a checkpoint after checking its size and checksum.

    safetensors maps the file into memory; `own=True` copies the tensors out, for what is kept (the
    optimizer's state) rather than copied into a model: a mapped file that a later save deletes would
    keep its disk space until the process ends, and Windows could not delete it at all.
    """
    file, expected = os.path.join(directory, name), metadata["files"].get(name)
    if expected is None or not os.path.isfile(file):
        raise ValueError(f"Checkpoint {directory!r} is incomplete: {name} is missing. Use another checkpoint.")
    size = os.path.getsize(file)
    if size != expected["bytes"]:
        raise ValueError(
            f"Checkpoint {directory!r}: {name} has {size} bytes, {METADATA_FILE} recorded "
            f"{expected['bytes']}; the file is truncated or damaged. Use another checkpoint."
        )
    with open(file, "rb") as handle:
        checksum = _crc32(handle)
    if checksum != expected["crc32"]:
        raise ValueError(
            f"Checkpoint {directory!r}: {name} does not match the checksum recorded in {METADATA_FILE}; "
            "the file is corrupted or was modified. Use another checkpoint."
        )
    tensors = _load_tensors(file)
    if own:
        tensors = {key: value.clone() for key, value in tensors.items()}
    for alias, name_held in expected.get("aliases", {}).items():
        tensors[alias] = tensors[name_held]
    return tensors


def _load_tensors(file: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, ValueError, OSError) as error:
        raise ValueError(
            f"{file!r} is not a readable safetensors file ({error}); it is truncated or corrupted. "
            "Use another checkpoint."
        ) from None
