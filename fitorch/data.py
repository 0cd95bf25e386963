"""Turning what users pass as data into `DataLoader`s, and batches into model inputs and targets.

Accepted data: a `DataLoader` (used as is), a map-style or iterable `Dataset`, a tuple of tensors or
NumPy arrays `(x, y)` / `(x1, x2, ..., y)`, or a bare `x` (for `predict`). Accepted batches:
`(inputs, targets)`, `(input1, ..., targets)`, a single tensor (inputs only) or a dict, Hugging Face
style, passed to the model as keyword arguments with the targets under `"labels"`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

DEFAULT_BATCH_SIZE = 32

DataLike = Any
"""A `DataLoader`, a `Dataset`, a tuple of tensors or arrays, or a single tensor or array."""


@dataclass
class LoaderOptions:
    """How fitorch builds a loader when it is given tensors or a dataset rather than a DataLoader."""

    batch_size: int | None = None
    shuffle: bool | None = None
    num_workers: int | None = None
    pin_memory: bool = False
    generator: torch.Generator | None = None


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        # NumPy's default float is float64 while models are float32; Keras casts the same way.
        return tensor.float() if tensor.dtype == torch.float64 else tensor
    raise TypeError(
        f"{name} must be a torch.Tensor or a NumPy array, got {type(value).__name__}. "
        "Pass (x, y) as tensors or arrays, or give a Dataset or DataLoader."
    )


def tensors_to_dataset(data: Any, name: str) -> TensorDataset:
    """Build a `TensorDataset` from a tensor, an array, or a tuple of them of equal length.

    Raises:
        TypeError: an element is neither a tensor nor an array.
        ValueError: the elements have different lengths, or hold no samples.
    """
    parts = data if isinstance(data, (tuple, list)) else (data,)
    labels = ["x", "y"] if len(parts) == 2 else [f"{name}[{i}]" for i in range(len(parts))]
    tensors = [_as_tensor(part, label) for part, label in zip(parts, labels)]
    for tensor, label in zip(tensors, labels):
        if tensor.ndim == 0:
            raise ValueError(f"{label} must have a leading sample dimension, got a scalar. Use x.reshape(-1, 1).")
    lengths = [len(t) for t in tensors]
    if len(set(lengths)) > 1:
        shown = ", ".join(f"{label}: {n}" for label, n in zip(labels, lengths))
        raise ValueError(
            f"{name}: every array must hold the same number of samples, got {shown}. "
            "Check that inputs and targets line up."
        )
    if lengths[0] == 0:
        raise ValueError(f"{name} holds no samples; pass at least one.")
    return TensorDataset(*tensors)


def is_tensor_data(data: Any) -> bool:
    """Whether `data` is a tensor, an array, or a tuple/list of them."""
    parts = data if isinstance(data, (tuple, list)) else (data,)
    return len(parts) > 0 and all(isinstance(p, (torch.Tensor, np.ndarray)) for p in parts)


def to_dataset(data: DataLike, name: str) -> Dataset | None:
    """Return `data` as a Dataset, or None when it is already a DataLoader."""
    if isinstance(data, DataLoader):
        return None
    if isinstance(data, Dataset):
        return data
    if is_tensor_data(data):
        return tensors_to_dataset(data, name)
    raise TypeError(
        f"{name} must be a DataLoader, a Dataset, or a tuple (x, y) of tensors or NumPy arrays, "
        f"got {type(data).__name__}."
    )


def split_for_validation(dataset: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Split off the last `fraction` of a sized dataset for validation, before any shuffling (as Keras).

    Raises:
        ValueError: the split leaves either part empty.
    """
    total = len(dataset)  # type: ignore[arg-type]
    n_val = int(total * fraction)
    if n_val == 0 or n_val == total:
        raise ValueError(
            f"validation_split={fraction} of {total} samples leaves an empty part; "
            "use a fraction that leaves at least one sample on each side."
        )
    return Subset(dataset, range(total - n_val)), Subset(dataset, range(total - n_val, total))


def _tensor_dataset(dataset: Dataset) -> TensorDataset | None:
    """The `TensorDataset` behind `dataset` (itself, or the one a validation split holds), else None."""
    if isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, TensorDataset) else None


def default_num_workers(dataset: Dataset) -> int:
    """Workers for a loader fitorch builds: none for in-memory tensors, a few otherwise."""
    if _tensor_dataset(dataset) is not None:
        return 0  # indexing tensors is faster than any worker round trip
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def pins_memory(device: torch.device) -> bool:
    """Whether batches bound for `device` come from pinned memory, copied without blocking: on CUDA only.

    A copy from pinned host memory runs while the GPU computes and needs no host sync per step. The
    learner asks Accelerate for non-blocking copies on CUDA for every loader; from ordinary (pageable)
    memory such a copy is still correct, since CUDA stages it before the call returns.
    """
    return device.type == "cuda"


def _on_host(dataset: Dataset) -> bool:
    """False for tensors that already live on a device, which cannot be pinned; True for any other dataset."""
    tensors = _tensor_dataset(dataset)
    return tensors is None or all(tensor.device.type == "cpu" for tensor in tensors.tensors)


def make_loader(data: DataLike, name: str, options: LoaderOptions, *, train: bool) -> DataLoader:
    """Return a DataLoader for `data`, building one with `options` unless `data` is one already.

    Raises:
        ValueError: `batch_size` or `shuffle` were given together with a DataLoader, or the data is empty.
    """
    dataset = to_dataset(data, name)
    if dataset is None:
        if options.batch_size is not None or options.shuffle is not None:
            raise ValueError(
                f"{name} is a DataLoader, so batch_size and shuffle are its own; set them when you "
                "build the DataLoader and leave them out of this call."
            )
        return data
    iterable = isinstance(dataset, IterableDataset)
    if not iterable and len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} holds no samples; pass at least one.")
    shuffle = train if options.shuffle is None else options.shuffle
    if iterable and shuffle and options.shuffle:
        raise ValueError(f"{name} is an IterableDataset, which cannot be shuffled by index; pass shuffle=False.")
    batch_size = options.batch_size or DEFAULT_BATCH_SIZE  # the learner checked it where it was given
    workers = default_num_workers(dataset) if options.num_workers is None else options.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and not iterable,
        num_workers=workers,
        persistent_workers=False,  # workers restart each epoch, seeded from (seed, epoch): exact resume
        pin_memory=options.pin_memory and _on_host(dataset),
        generator=options.generator,
    )


def unpack_batch(batch: Any) -> tuple[Any, Any]:
    """Split a batch into `(inputs, targets)`, the way the learner's steps do.

    `(x, y)` and `(x1, ..., y)` give a tuple of positional model arguments and the last element; a
    single tensor (or a one-element tuple) gives inputs only; a dict, Hugging Face style, is passed
    whole as keyword arguments, its targets under `"labels"`. `targets` is None when the batch
    carries none (prediction data). With `call_model`, a callback runs the model on any batch.

    Args:
        batch: one batch as a loader yields it.

    Returns:
        `(inputs, targets)`: inputs as a tuple or a mapping, targets or None.

    Example:
        >>> inputs, targets = unpack_batch((torch.zeros(4, 3), torch.ones(4)))
        >>> len(inputs), targets.shape
        (1, torch.Size([4]))
    """
    if isinstance(batch, Mapping):
        return batch, batch.get("labels")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return tuple(batch), None
        return tuple(batch[:-1]), batch[-1]
    return (batch,), None


def call_model(model: torch.nn.Module, inputs: Any) -> Any:
    """Call `model` with inputs from `unpack_batch`: keyword arguments for a mapping, positional otherwise.

    Args:
        model: the model to call.
        inputs: the first element of what `unpack_batch` returned.

    Returns:
        What the model returns.
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def batch_length(value: Any) -> int:
    """Number of samples in a batch element (the leading dimension of its first tensor)."""
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.ndim else 1
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            if isinstance(item, (torch.Tensor, Mapping, Sequence)):
                return batch_length(item)
    raise TypeError(f"cannot tell the batch size of {type(value).__name__}; batches must hold tensors.")


def concat_outputs(chunks: list[Any]) -> Any:
    """Concatenate per-batch outputs along the batch dimension, keeping tuples and dicts."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, Mapping):
        return {key: concat_outputs([c[key] for c in chunks]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concat_outputs(list(parts)) for parts in zip(*chunks))
    return chunks
