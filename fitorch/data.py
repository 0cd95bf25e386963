"""Turning what users pass as data into `DataLoader`s, and batches into model inputs and targets.

Accepted data (the guide's "Data" section lists every form):

- a `DataLoader`, used as it is;
- tensors or NumPy arrays (pandas frames too, read as their values): `x`, `(x, y)`, `(x1, ..., y)`,
  or `({"a": xa, "b": xb}, y)` with a dict of inputs; fitorch builds the loader over an
  `ArrayDataset`, which fetches a whole batch by indexing each array once with the batch's indices
  (Keras slices arrays the same way);
- a map-style `Dataset` (anything with `__len__` and `__getitem__`, Hugging Face `datasets` too);
  one whose `__getitems__(indices)` returns a whole batch is fetched a batch at a time as well;
- an `IterableDataset`, or any other iterable of ready batches (a generator, a list of batches).

Accepted batches: `(inputs, targets)`, `(input1, ..., targets)`, `(dict of inputs, targets)`, a single
tensor (inputs only) or a dict, Hugging Face style, passed to the model as keyword arguments with the
targets under `"labels"` (or `"label"`, as `datasets` rows name them).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

DEFAULT_BATCH_SIZE = 32

DataLike = Any
"""A `DataLoader`, a `Dataset`, tensors or arrays (alone, in a tuple, or in a dict), or an iterable of batches."""

Array = torch.Tensor | np.ndarray


@dataclass
class LoaderOptions:
    """How fitorch builds a loader when it is given tensors, a dataset or batches rather than a DataLoader.

    Attributes:
        batch_size: samples per batch (default 32); not for iterables of batches.
        shuffle: reshuffle every epoch (default: True for training, False otherwise).
        num_workers: worker processes; None means none (in-memory data is fastest without).
        pin_memory: pin batches in page-locked memory, for faster copies to a GPU.
        generator: the generator the shuffle draws from (the learner reseeds it every epoch).
        float_dtype: floating-point tensors are cast to it (the model's parameter dtype).
        steps: batches per pass of an iterable of batches (`steps_per_epoch`, `validation_steps`).
    """

    batch_size: int | None = None
    shuffle: bool | None = None
    num_workers: int | None = None
    pin_memory: bool = False
    generator: torch.Generator | None = None
    float_dtype: torch.dtype | None = None
    steps: int | None = None


# ---------------------------------------------------------------------------------------- arrays


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point dtype of `model`'s first floating parameter or buffer (float32 if it has none)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())


def _as_tensor(value: Any, label: str, float_dtype: torch.dtype | None) -> torch.Tensor:
    if _is_frame(value):  # a pandas or polars DataFrame or Series: its values, as Keras takes them
        value = value.to_numpy()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{label} is a NumPy array of Python objects; give numbers (e.g. np.stack the rows).")
        with warnings.catch_warnings():  # read-only arrays (pandas 3, memory maps): fitorch only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{label} must be a torch.Tensor or a NumPy array, got {type(value).__name__}. "
            "Pass (x, y) as tensors or arrays, or give a Dataset or DataLoader."
        )
    if value.ndim == 0:
        raise ValueError(f"{label} must have a leading sample dimension, got a scalar. Use x.reshape(-1, 1).")
    # NumPy's default float is float64 while models are float32: cast floats to the model's dtype, as Keras does.
    return value.to(float_dtype) if float_dtype is not None and value.is_floating_point() else value


def _is_frame(value: Any) -> bool:
    return hasattr(value, "to_numpy") and not isinstance(value, (torch.Tensor, np.ndarray))


def _is_array_part(part: Any) -> bool:
    if isinstance(part, Mapping):
        return len(part) > 0 and all(
            isinstance(value, (torch.Tensor, np.ndarray)) or _is_frame(value) for value in part.values()
        )
    return isinstance(part, (torch.Tensor, np.ndarray)) or _is_frame(part)


def is_tensor_data(data: Any) -> bool:
    """Whether `data` is a tensor, an array, a dict of them, or a tuple/list of those."""
    parts = data if isinstance(data, (tuple, list)) else (data,)
    return len(parts) > 0 and all(_is_array_part(part) for part in parts)


def _take(part: torch.Tensor | Mapping[str, torch.Tensor], index: Any) -> Any:
    if not isinstance(part, torch.Tensor):  # a dict of tensors
        return {key: _take(value, index) for key, value in part.items()}
    return part.index_select(0, index) if isinstance(index, torch.Tensor) else part[index]


class ArrayDataset(Dataset):
    """In-memory tensors fetched a whole batch at a time.

    `__getitems__` indexes every tensor once with the batch's indices (`index_select`), where torch's
    default path calls `__getitem__` per sample and stacks the samples again: about 45 µs instead of
    300 µs for a batch of 64 rows of 64 floats. The `DataLoader` fitorch builds calls it with each
    batch's indices from its usual sampler, so the shuffle order, `drop_last`, sharding across
    processes and resuming mid-epoch are exactly those of a `DataLoader` over a `TensorDataset`.

    Args:
        parts: tensors or dicts of tensors, all with the same number of samples (the first dimension).
            One dict alone yields dict batches; anything else yields tuples.
    """

    def __init__(self, parts: Sequence[torch.Tensor | Mapping[str, torch.Tensor]]) -> None:
        self.parts = tuple(parts)
        first = self.parts[0]
        self.length = len(next(iter(first.values())) if isinstance(first, Mapping) else first)
        self.device = next(iter(_tensors(self.parts))).device

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self._batch(index)

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """The batch of the samples at `indices`, as one tuple (or dict) of tensors."""
        # Through NumPy: torch.tensor() of a list of 64 ints takes 20 µs, this 4 µs.
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        if self.device.type == "cuda":  # a plain copy would wait for the GPU's queue: a sync per batch
            index = index.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            index = index.to(self.device)
        return self._batch(index)

    def _batch(self, index: Any) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], Mapping):
            return _take(self.parts[0], index)
        return tuple(_take(part, index) for part in self.parts)

    def split(self, first: int) -> tuple[ArrayDataset, ArrayDataset]:
        """The first `first` samples and the rest, as two datasets over views of the same tensors."""
        return ArrayDataset([_take(p, slice(None, first)) for p in self.parts]), ArrayDataset(
            [_take(p, slice(first, None)) for p in self.parts]
        )

    @property
    def on_cpu(self) -> bool:
        """Whether the tensors are in CPU memory (and may be pinned)."""
        return self.device.type == "cpu"


def _tensors(parts: Iterable[Any]) -> Iterator[torch.Tensor]:
    for part in parts:
        yield from (part.values() if isinstance(part, Mapping) else [part])


def arrays_to_dataset(
    data: Any, name: str, float_dtype: torch.dtype | None = None, labels: Sequence[str] | None = None
) -> ArrayDataset:
    """Build an `ArrayDataset` from tensors or arrays (alone, in a tuple, or in dicts) of equal length.

    Args:
        data: `x`, `(x, y)`, `(x1, ..., y)`, `({"a": xa, ...}, y)` or a dict of arrays.
        name: the argument's name, for messages.
        float_dtype: floating-point arrays are cast to it (NumPy's float64 to a float32 model, say).
        labels: a name for each element, for messages (default `x`, `y` or `data[i]`).

    Raises:
        TypeError: an element is neither a tensor nor an array.
        ValueError: the elements have different lengths, or hold no samples.
    """
    parts = list(data) if isinstance(data, (tuple, list)) else [data]
    labels = labels or (["x", "y"] if len(parts) == 2 else [f"{name}[{i}]" for i in range(len(parts))])
    converted, lengths = [], {}
    for part, label in zip(parts, labels):
        if isinstance(part, Mapping):
            part = {key: _as_tensor(value, f"{label}[{key!r}]", float_dtype) for key, value in part.items()}
            lengths.update({f"{label}[{key!r}]": len(value) for key, value in part.items()})
        else:
            part = _as_tensor(part, label, float_dtype)
            lengths[label] = len(part)
        converted.append(part)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{label}: {n}" for label, n in lengths.items())
        raise ValueError(
            f"{name}: every array must hold the same number of samples, got {shown}. "
            "Check that inputs and targets line up."
        )
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"{name} holds no samples; pass at least one.")
    devices = {tensor.device for tensor in _tensors(converted)}
    if len(devices) > 1:
        raise ValueError(f"{name}: every tensor must be on one device, got {sorted(map(str, devices))}.")
    return ArrayDataset(converted)


def tensors_to_dataset(data: Any, name: str) -> ArrayDataset:
    """Build an `ArrayDataset` from a tensor, an array, or a tuple of them of equal length (no casting)."""
    return arrays_to_dataset(data, name)


# ---------------------------------------------------------------------------------------- batches from iterables


class IterableBatches(IterableDataset):
    """An iterable of ready batches (a generator, a list of batches) as a dataset of batches.

    A re-iterable source (a list, or an object whose `__iter__` starts afresh) starts over every
    pass; a one-shot iterator (a generator) continues where the last pass stopped, as Keras reads
    a generator across epochs. With `steps`, a pass takes at most `steps` batches, so an endless
    generator gives `steps` batches per epoch and none is drawn and lost.

    Args:
        source: the iterable of batches.
        name: the argument's name, for messages.
        steps: batches per pass, or None for all.
    """

    def __init__(self, source: Iterable[Any], name: str, steps: int | None = None) -> None:
        self.source, self.name, self.steps = source, name, steps
        self.one_shot = iter(source) is source
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        iterator = self.source if self.one_shot else iter(self.source)
        empty = True
        for batch in itertools.islice(iterator, self.steps):
            if empty and not isinstance(batch, (torch.Tensor, np.ndarray, tuple, list, Mapping)):
                raise TypeError(
                    f"{self.name}: an iterable of batches must yield tuples (inputs..., targets), dicts or tensors, "
                    f"got {type(batch).__name__}."
                )
            empty = False
            yield batch
        if empty:  # said here: Accelerate's loader would report an empty pass as "Batch does not contain any data"
            raise ValueError(
                f"{self.name} ran out of batches: a generator is read once, so it has none left for this pass. "
                "Make it endless (while True: ... yield batch) and pass steps_per_epoch (validation_steps for "
                "validation_data), or give a list of batches, a Dataset or tensors, which are read again every time."
            )

    def __len__(self) -> int:
        known = len(self.source) if isinstance(self.source, Sized) and not self.one_shot else None
        if known is None and self.steps is None:
            raise TypeError(f"{self.name}: a generator has no length.")  # DataLoader's len() turns this into None
        return min(n for n in (known, self.steps) if n is not None)


def _is_map_style(data: Any) -> bool:
    """Anything with `__len__` and `__getitem__` that is not a container of arrays: `datasets.Dataset`, say."""
    if isinstance(data, (str, bytes, Mapping, tuple, list, torch.Tensor, np.ndarray)) or _is_frame(data):
        return False
    return hasattr(data, "__len__") and hasattr(data, "__getitem__")


def _is_batch_iterable(data: Any) -> bool:
    if isinstance(data, (str, bytes, Mapping, torch.Tensor, np.ndarray)) or _is_frame(data):
        return False
    if isinstance(data, (tuple, list)):  # a list of batches: each element a batch, not a number
        return len(data) > 0 and all(isinstance(b, (tuple, list, Mapping, torch.Tensor)) for b in data)
    return isinstance(data, Iterable)


# ---------------------------------------------------------------------------------------- collation


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """`value` with floating-point tensors cast to `dtype` and NumPy arrays made tensors (tuples and dicts kept)."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and dtype is not None else value
    if isinstance(value, Mapping):
        return {key: cast_floats(item, dtype) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(cast_floats(item, dtype) for item in value)
    return value


class Collate:
    """The collate function of the loaders fitorch builds (a class, so worker processes can pickle it).

    A list is a list of samples (torch's contract for `__getitems__` and the per-sample path) and is
    stacked by torch's `default_collate`; anything else is a batch a dataset fetched whole
    (`ArrayDataset`, or a user's `__getitems__` returning a tuple, dict or tensor) and passes through.
    For iterables of batches (`whole=True`) every element is a ready batch. Floating-point tensors are
    then cast to `float_dtype`.

    Args:
        float_dtype: the dtype floating tensors are cast to; None keeps them.
        whole: every element the loader fetches is already a batch.
    """

    def __init__(self, float_dtype: torch.dtype | None = None, whole: bool = False) -> None:
        self.float_dtype, self.whole = float_dtype, whole

    def __call__(self, data: Any) -> Any:
        batch = default_collate(data) if isinstance(data, list) and not self.whole else data
        return batch if self.float_dtype is None and not self.whole else cast_floats(batch, self.float_dtype)


# ---------------------------------------------------------------------------------------- loaders


def to_dataset(data: DataLike, name: str, float_dtype: torch.dtype | None = None) -> Dataset | None:
    """Return `data` as a Dataset, or None when it is already a DataLoader.

    Tensors and arrays become an `ArrayDataset` (cast to `float_dtype`), and so does a
    `TensorDataset` (and a `Subset` of one), so that they are fetched a batch at a time.

    Raises:
        TypeError: `data` is none of the accepted forms.
    """
    if isinstance(data, DataLoader):
        return None
    if isinstance(data, TensorDataset):
        return ArrayDataset(data.tensors)
    if isinstance(data, Subset) and isinstance(data.dataset, TensorDataset):
        return Subset(ArrayDataset(data.dataset.tensors), data.indices)
    if isinstance(data, Dataset) or _is_map_style(data):
        return data
    if is_tensor_data(data):
        return arrays_to_dataset(data, name, float_dtype)
    if _is_batch_iterable(data):
        return IterableBatches(data, name)
    raise TypeError(
        f"{name} must be a DataLoader, a Dataset, or a tuple (x, y) of tensors or NumPy arrays, "
        f"or an iterable of batches, got {_describe(data)}."
    )


def _describe(data: Any) -> str:
    if isinstance(data, (tuple, list)) and data:
        return f"{type(data).__name__} of {type(data[0]).__name__}"
    return type(data).__name__


def split_for_validation(dataset: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Split off the last `fraction` of a sized dataset for validation, before any shuffling (as Keras).

    Raises:
        ValueError: the split leaves either part empty, or the dataset has no length.
    """
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"validation_split needs data with a length (tensors, arrays or a map-style Dataset), got "
            f"{type(dataset).__name__}, which is iterated without one; pass validation_data instead."
        )
    total = len(dataset)  # type: ignore[arg-type]
    n_val = int(total * fraction)
    if n_val == 0 or n_val == total:
        raise ValueError(
            f"validation_split={fraction} of {total} samples leaves an empty part; "
            "use a fraction that leaves at least one sample on each side."
        )
    if isinstance(dataset, ArrayDataset):
        return dataset.split(total - n_val)
    return Subset(dataset, range(total - n_val)), Subset(dataset, range(total - n_val, total))


def pins_memory(device: torch.device) -> bool:
    """Whether batches bound for `device` come from pinned memory, copied without blocking: on CUDA only.

    A copy from pinned host memory runs while the GPU computes and needs no host sync per step. The
    learner asks Accelerate for non-blocking copies on CUDA for every loader; from ordinary (pageable)
    memory such a copy is still correct, since CUDA stages it before the call returns.
    """
    return device.type == "cuda"


def make_loader(data: DataLike, name: str, options: LoaderOptions, *, train: bool) -> DataLoader:
    """Return a DataLoader for `data`, building one with `options` unless `data` is one already.

    Raises:
        ValueError: `batch_size` or `shuffle` were given together with a DataLoader (or `batch_size`
            with an iterable of batches, `shuffle=True` with an iterable), or the data is empty.
    """
    dataset = to_dataset(data, name, options.float_dtype)
    if dataset is None:
        if options.batch_size is not None or options.shuffle is not None:
            raise ValueError(
                f"{name} is a DataLoader, so batch_size and shuffle are its own; set them when you "
                "build the DataLoader and leave them out of this call."
            )
        return data
    if isinstance(dataset, IterableBatches):
        return _batches_loader(dataset, name, options)
    iterable = isinstance(dataset, IterableDataset)
    if not iterable and len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} holds no samples; pass at least one.")
    shuffle = train if options.shuffle is None else options.shuffle
    if iterable and shuffle and options.shuffle:
        raise ValueError(f"{name} is an IterableDataset, which cannot be shuffled by index; pass shuffle=False.")
    workers = options.num_workers or 0
    arrays = dataset.dataset if isinstance(dataset, Subset) else dataset
    return DataLoader(
        dataset,
        batch_size=options.batch_size or DEFAULT_BATCH_SIZE,  # the learner checked it where it was given
        shuffle=shuffle and not iterable,
        num_workers=workers,
        persistent_workers=False,  # workers restart each epoch, seeded from (seed, epoch): exact resume
        pin_memory=options.pin_memory and getattr(arrays, "on_cpu", True),
        generator=options.generator,
        # ArrayDataset casts once, when it is built; other datasets are cast batch by batch.
        collate_fn=Collate(None if isinstance(arrays, ArrayDataset) else options.float_dtype),
    )


def _batches_loader(dataset: IterableBatches, name: str, options: LoaderOptions) -> DataLoader:
    if options.batch_size is not None:
        raise ValueError(f"{name} yields whole batches, so batch_size does not apply; leave it out of this call.")
    if options.shuffle:
        raise ValueError(f"{name} is an iterable of batches, which cannot be shuffled; pass shuffle=False.")
    dataset.steps = options.steps
    # No workers: a generator cannot be sent to another process, and each would yield every batch.
    return DataLoader(
        dataset, batch_size=None, pin_memory=options.pin_memory, collate_fn=Collate(options.float_dtype, whole=True)
    )


def loader_batches(loader: DataLoader) -> int | None:
    """The number of batches one pass of `loader` yields, or None when it has no length."""
    try:
        return len(loader)
    except TypeError:  # an iterable dataset without __len__
        return None


def describe_empty(loader: DataLoader, name: str) -> str:
    """Why `loader` yields no batches, for the error raised before training on it."""
    dataset = loader.dataset
    samples = len(dataset) if hasattr(dataset, "__len__") else None
    if loader.drop_last and samples is not None and loader.batch_size:
        return (
            f"{name} gives no batches: {samples} samples with batch_size={loader.batch_size} and drop_last=True "
            "drops the only, incomplete batch. Use a smaller batch_size, or drop_last=False."
        )
    return f"{name} gives no batches ({type(dataset).__name__} of {samples} samples); pass data with at least one."


# ---------------------------------------------------------------------------------------- batches


def unpack_batch(batch: Any) -> tuple[Any, Any]:
    """Split a batch into `(inputs, targets)`, the way the learner's steps do.

    `inputs` is a tuple of positional model arguments, or a mapping of keyword arguments for dict
    batches and for `(dict of inputs, targets)`. `targets` is None when the batch carries none
    (prediction data); a dict batch's targets are under `"labels"`, else `"label"`. With
    `call_model`, a callback runs the model on any batch.

    Args:
        batch: one batch as a loader yields it.

    Returns:
        `(inputs, targets)`: inputs as a tuple or a mapping, targets or None.

    Example:
        >>> inputs, targets = unpack_batch((torch.zeros(4, 3), torch.ones(4)))
        >>> len(inputs), targets.shape
        (1, torch.Size([4]))
    """
    # Tuples and tensors first: they are never mappings, and the Mapping check is the slow one.
    if isinstance(batch, (tuple, list)):
        inputs, targets = (tuple(batch), None) if len(batch) == 1 else (tuple(batch[:-1]), batch[-1])
        if len(inputs) == 1 and not isinstance(inputs[0], torch.Tensor) and isinstance(inputs[0], Mapping):
            return inputs[0], targets  # ({"a": xa, "b": xb}, y): keyword arguments
        return inputs, targets
    if isinstance(batch, Mapping):
        return batch, batch["labels"] if "labels" in batch else batch.get("label")
    return (batch,), None


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call `model` with inputs from `unpack_batch`: keyword arguments for a mapping, positional otherwise.

    A `"label"` key (the name `datasets` rows use) goes to the model as `label` when its `forward`
    takes `label`, as `labels` when it takes `labels` (as transformers' collators rename it), and
    otherwise not at all: it is then only the targets of the learner's loss.

    Args:
        model: the model to call.
        inputs: the first element of what `unpack_batch` returned.

    Returns:
        What the model returns.
    """
    if isinstance(inputs, Mapping):
        if "label" in inputs and "labels" not in inputs:
            inputs = _rename_label(model, inputs)
        return model(**inputs)
    return model(*inputs)


def _rename_label(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
    inner = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    keyword = _label_keyword(type(inner).forward)
    renamed = {key: value for key, value in inputs.items() if key != "label"}
    if keyword is not None:
        renamed[keyword] = inputs["label"]
    return renamed


@functools.cache
def _label_keyword(forward: Any) -> str | None:
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return "label"
    return next((name for name in ("label", "labels") if name in parameters), None)


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
