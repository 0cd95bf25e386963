"""Checkpoints of a learner: what one holds, how it is saved, and how a learner is restored from one.

A checkpoint is a directory: `model.safetensors` (the unwrapped model's weights, loadable with
nothing but `safetensors.torch.load_file`), `training_state.safetensors` (optimizer state, grad
scaler and RNG tensors) and `checkpoint.json` (everything else). This module decides what goes in
(the model, the optimizers, the scaler, the loop position, the RNG states, the callbacks' states)
and restores it, checking everything before anything changes. How the files are written atomically
and read back verified is `fitorch.storage`'s job; RNG states are `fitorch.seed`'s. It depends on
what it saves (a model, optimizers, state mappings), not on the `Learner` class.
See docs/checkpoints.md for the format and the crash protocol.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from fitorch import restore, storage
from fitorch.compiled import strip_compiled_prefix, unwrap_compiled
from fitorch.seed import gather_rng_states, set_rng_states
from fitorch.storage import METADATA_FILE, MODEL_FILE, STATE_FILE
from fitorch.version import __version__

if TYPE_CHECKING:
    from fitorch.learner import Learner

logger = logging.getLogger("fitorch")

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
    # Collectives, so every process makes them: each process's RNG states and running epoch sums.
    rng_states = None if weights_only else gather_rng_states(accelerator)
    loop = learner.loop_state()
    if learner.is_main_process:
        weights = dict(model.state_dict())
        metadata = _describe(learner, model, weights, weights_only, loop)
        files = {MODEL_FILE: weights}
        if not weights_only:
            files[STATE_FILE] = _training_state(learner, rng_states, metadata)
        storage.write_directory(path, files, metadata)
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
        learner_or_model = unwrap_compiled(learner_or_model)  # plain names, as every checkpoint holds them
        checkpoint = _read(path, training_state=False)
        _check_weights(learner_or_model, checkpoint.weights, checkpoint.path, strict=True)
        learner_or_model.load_state_dict(checkpoint.weights)
        return checkpoint.metadata
    learner = learner_or_model
    model = _learner_model(learner, "load_checkpoint", "a fitorch.Learner or a torch.nn.Module")
    _refuse_sharded(learner, "load_checkpoint")
    checkpoint = _read(path, training_state=True)
    restored = _check_training_state(learner, model, checkpoint)  # everything, before anything changes
    _restore_callbacks(learner, restored.callbacks, checkpoint.path)  # first: the one part that can refuse
    model.load_state_dict(checkpoint.weights)
    for optimizer, state in zip(learner.optimizers, restored.optimizers):
        optimizer.load_state_dict(state)
    if restored.scaler is not None:
        learner.accelerator.scaler.load_state_dict(restored.scaler)
    learner.load_loop_state(checkpoint.metadata["loop"])
    set_rng_states(restored.rng)  # last: nothing after this may draw random numbers
    return checkpoint.metadata


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> Any:
    """Load weights into `model` from a checkpoint directory or a bare `.safetensors` file.

    Tied weights saved once (as safetensors requires) are filled into every name that shares them.
    All keys are checked before the model is touched. A model compiled with `torch.compile` loads the
    plain names, and a bare file saved from a compiled model's `state_dict()` (every key prefixed
    `_orig_mod.`) loads into a plain model.

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
    model = unwrap_compiled(model)  # a compiled model loads plain names; a file saved from one loses its prefix
    if os.path.isfile(path):
        weights = _fill_tied(model, strip_compiled_prefix(storage.load_tensor_file(os.fspath(path))))
    else:
        weights = _read(path, training_state=False).weights
    _check_weights(model, weights, os.fspath(path), strict)
    return model.load_state_dict(weights, strict=strict)


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The newest readable checkpoint at or under `directory` (by save time), or None when there is none.

    `directory` may itself be a checkpoint. A copy left aside by a save that was killed between its
    two renames counts in place of the checkpoint it stands for; unfinished writes never count, and
    neither does a checkpoint whose `checkpoint.json` is damaged (a warning names it).

    Args:
        directory: a checkpoint directory, or a folder to search (all depths), such as a run's folder.
    """
    dated = []
    for path in storage.find_checkpoints(os.fspath(directory)):
        try:
            created = storage.read_metadata(storage.resolve(path)).get("created")
            dated.append((datetime.fromisoformat(created), path))
        except (ValueError, TypeError) as error:
            logger.warning("latest_checkpoint: skipping %s: %s", path, error)
    return max(dated)[1] if dated else None


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read every file of the checkpoint at `path` and check it (sizes, checksums, JSON); change nothing.

    Args:
        path: a checkpoint directory written by `save_checkpoint`.

    Returns:
        The checkpoint's metadata, as `load_checkpoint` returns it.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: not a checkpoint, or a file of it is missing, truncated or damaged.

    Example:
        >>> verify_checkpoint("runs/exp1/checkpoints/last")["loop"]["epoch"]  # doctest: +SKIP
        10
    """
    return _read(path, training_state=not storage.read_metadata(storage.resolve(path)).get("weights_only")).metadata


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
    return storage.delete_directory(os.fspath(path))


# ---------------------------------------------------------------------------- what is saved


def _learner_model(learner: Any, caller: str, accepted: str = "a fitorch.Learner") -> nn.Module:
    if not all(hasattr(learner, name) for name in ("model", "optimizers", "loop_state", "load_loop_state")):
        raise TypeError(f"{caller}: expected {accepted}, got {type(learner).__name__}.")
    if learner.model is None:
        raise ValueError(
            f"{caller}: the learner has no model yet; call it during or after learner.fit(model, ...), "
            "or pass the model itself to load_checkpoint / load_weights."
        )
    return learner.model


def _describe(
    learner: Learner, model: nn.Module, weights: Mapping[str, torch.Tensor], weights_only: bool, loop: dict[str, Any]
) -> dict[str, Any]:
    """The JSON part that is known before any tensor is written."""
    parameters = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for name, t in weights.items()
    }
    return {
        "format": storage.FORMAT_NAME,
        "format_version": storage.FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(),
        "fitorch_version": __version__,
        "torch_version": torch.__version__,
        "weights_only": weights_only,
        "loop": loop,
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
            "state_dict": storage.encode(optimizer.state_dict(), f"optimizer.{i}", tensors),
        }
        for i, optimizer in enumerate(learner.optimizers)
    ]
    scaler = learner.accelerator.scaler if learner.accelerator is not None else None
    metadata["scaler"] = storage.encode(scaler.state_dict(), "scaler", tensors) if scaler is not None else None
    metadata["rng"] = [storage.encode(state, f"rng.{rank}", tensors) for rank, state in enumerate(rng_states)]
    metadata["callbacks"] = {
        key: storage.encode(state, f"callbacks.{key}", tensors) for key, state in _callback_states(learner).items()
    }
    return tensors


def _unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the real one


def _callback_keys(learner: Learner) -> dict[str, Any]:
    """Stable keys for the running call's callbacks: class name and index among that class (`History[0]`).

    Counting within a class keeps keys stable when unrelated callbacks are added or removed.
    """
    keys, seen = {}, {}
    for callback in learner.active_callbacks or []:
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


# ---------------------------------------------------------------------------- restoring


@dataclass
class _Restore:
    """What a checked checkpoint puts back into a learner, decoded: nothing of it is applied yet."""

    optimizers: list[dict[str, Any]]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    callbacks: dict[str, Any]


def _check_training_state(learner: Learner, model: nn.Module, checkpoint: _Checkpoint) -> _Restore:
    """Decode and check every part of a checkpoint against the learner; raise before anything changes."""
    metadata, where = checkpoint.metadata, f"Checkpoint {checkpoint.path!r}"
    _check_weights(model, checkpoint.weights, checkpoint.path, strict=True, exact_dtypes=True)
    accelerator = learner.accelerator
    processes = accelerator.num_processes if accelerator is not None else 1
    config = metadata.get("config") if isinstance(metadata.get("config"), Mapping) else {}
    restore.check_loop(
        metadata["loop"],
        where,
        epochs=learner.epochs or None,
        num_batches=learner.num_batches,
        saved_processes=config.get("num_processes", 1),
        processes=processes,
    )
    try:
        decoded = {key: storage.decode(metadata[key], checkpoint.state, checkpoint.path) for key in _TRAINING_KEYS}
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as error:
        raise ValueError(f"{where}: {METADATA_FILE} is malformed ({type(error).__name__}: {error}).") from None
    restore.check_rng_states(decoded["rng"], where)
    restore.check_callback_states(decoded["callbacks"], where)
    rank = accelerator.process_index if accelerator is not None else 0
    states = decoded["rng"]
    return _Restore(
        optimizers=_check_optimizers(learner, decoded["optimizers"], where),
        scaler=_check_scaler(learner, decoded["scaler"], where),
        rng=states[rank] if rank < len(states) else states[0],  # fewer processes saved it: the first's
        callbacks=dict(decoded["callbacks"]),
    )


def _check_optimizers(learner: Learner, saved: Any, where: str) -> list[dict[str, Any]]:
    """The optimizer state dicts, after checking they fit the learner's optimizers."""
    if not isinstance(saved, list) or len(saved) != len(learner.optimizers):
        count = len(saved) if isinstance(saved, list) else "no list of"
        raise ValueError(
            f"{where} holds {count} optimizer(s), the learner has {len(learner.optimizers)}. "
            "Resume with the same optimizer setup it was saved with. Nothing was loaded."
        )
    states = []
    for optimizer, entry in zip(learner.optimizers, saved):
        name = type(_unwrap_optimizer(optimizer)).__name__
        saved_class = entry.get("class") if isinstance(entry, Mapping) else None
        if saved_class != name:
            raise ValueError(
                f"{where} holds the state of a {saved_class} optimizer, the learner uses {name}. "
                "Resume with the optimizer it was saved with. Nothing was loaded."
            )
        restore.check_optimizer_state(_unwrap_optimizer(optimizer), entry.get("state_dict"), where, name)
        states.append(entry["state_dict"])
    return states


def _check_scaler(learner: Learner, saved: Any, where: str) -> dict[str, Any] | None:
    """The grad scaler's state to load, or None when there is none to load (or no scaler to take it)."""
    scaler = learner.accelerator.scaler if learner.accelerator is not None else None
    if scaler is None or not saved:  # an empty state is that of a disabled scaler
        return None
    if not isinstance(saved, Mapping) or not all(
        isinstance(value, (int, float)) and math.isfinite(value) for value in saved.values()
    ):
        raise ValueError(f"{where}: the grad scaler state {saved!r} is not a mapping of numbers. Nothing was loaded.")
    return dict(saved)


def _restore_callbacks(learner: Learner, states: Mapping[str, Any], path: str) -> None:
    """Give each callback its saved state; if one refuses it, put back the ones done and raise.

    A callback without a saved state keeps its own; a saved state without its callback is unused
    (resuming with a callback added or removed is legitimate).
    """
    done: list[tuple[Any, dict[str, Any]]] = []
    for key, callback in _callback_keys(learner).items():
        if key not in states:
            continue
        previous = callback.state_dict()
        try:
            callback.load_state_dict(states[key])
        except Exception as error:
            for earlier, state in reversed(done):
                earlier.load_state_dict(state)
            raise ValueError(
                f"Checkpoint {path!r}: {key} refused its saved state ({type(error).__name__}: {error}). "
                "Nothing was loaded."
            ) from error
        done.append((callback, previous))


def _check_weights(
    model: nn.Module, weights: Mapping[str, torch.Tensor], path: str, strict: bool, exact_dtypes: bool = False
) -> None:
    """Raise, naming the first few keys of each kind, unless `weights` fit `model`.

    With `exact_dtypes` (a resume), a dtype that differs from the model's is refused: loading float64
    weights into a float32 model, or float32 into bfloat16, would round them without a word.
    Otherwise (`load_weights`) floating-point weights are cast to the model's dtype with a warning,
    and any other dtype change is refused.
    """
    expected = model.state_dict()
    _check_dtypes(expected, weights, path, exact_dtypes)
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


def _check_dtypes(
    expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], path: str, exact: bool
) -> None:
    changed = {
        key: (weights[key].dtype, tensor.dtype)
        for key, tensor in expected.items()
        if key in weights and weights[key].dtype != tensor.dtype
    }
    if not changed:
        return
    listed = ", ".join(
        f"{key} ({str(saved).removeprefix('torch.')} -> {str(model).removeprefix('torch.')})"
        for key, (saved, model) in list(changed.items())[:_LISTED]
    )
    castable = all(saved.is_floating_point and model.is_floating_point for saved, model in changed.values())
    if exact or not castable:
        reason = "a resume must continue with the exact weights" if exact else "only floating-point weights are cast"
        raise ValueError(
            f"Checkpoint {path!r} holds {len(changed)} weight(s) of another dtype than the model's: {listed}; "
            f"{reason}. Convert the model first (model.to(dtype)). The model was not changed."
        )
    logger.warning("load_weights: casting %d weight(s) of %s to the model's dtype: %s.", len(changed), path, listed)


def _fill_tied(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every tied name of `model` missing from a bare file the tensor saved under a name it shares."""
    names_by_view: dict[tuple, list[str]] = {}
    for name, tensor in model.state_dict().items():
        if tensor.numel():
            names_by_view.setdefault(storage.view_key(tensor), []).append(name)
    for names in names_by_view.values():
        present = next((name for name in names if name in weights), None)
        for name in names if present is not None else []:
            weights.setdefault(name, weights[present])
    return weights


# ---------------------------------------------------------------------------- files on disk


# safetensors' names for torch dtypes (https://github.com/huggingface/safetensors, the format spec).


# ---------------------------------------------------------------------------- reading


def _read(path: str | os.PathLike, training_state: bool) -> _Checkpoint:
    """Read and check a checkpoint directory's files; touches no model."""
    directory = storage.resolve(path)
    metadata = storage.read_metadata(directory)
    if training_state and metadata.get("weights_only"):
        raise ValueError(
            f"Checkpoint {directory!r} holds weights only (save_weights_only=True), not the training "
            "state needed to resume. Load it with load_weights, or resume from a full checkpoint."
        )
    absent = [key for key in _TRAINING_KEYS if key not in metadata] if training_state else []
    if absent:
        raise ValueError(f"Checkpoint {directory!r} is damaged: {METADATA_FILE} lacks {', '.join(absent)}.")
    weights = storage.read_tensors(directory, MODEL_FILE, metadata)
    saved_order = metadata.get("model", {}).get("parameters", {})  # safetensors sorts names; messages follow the model
    weights = {**{name: weights[name] for name in saved_order if name in weights}, **weights}
    state = storage.read_tensors(directory, STATE_FILE, metadata, own=True) if training_state else None
    return _Checkpoint(directory, metadata, weights, state)
