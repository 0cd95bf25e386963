"""Sample weights, as Keras's `fit` takes them: `class_weight={class: weight}` and `sample_weight`.

`sample_weight` is an array with one weight per sample of `(x, y)` arrays (split with them by
`validation_split`), or `True` to say that every batch of the data (and of `validation_data`) ends
with its weights: `(inputs..., targets, weights)`. `class_weight` weighs each training sample by its
class. A batch's loss is then Keras's: `sum(weight_i * loss_i) / N` over its N samples (the
criterion in `fitorch.losses` computes it), so the logged epoch loss is the exact mean over samples
of the weighted losses, and accumulation windows stay exact. Metrics are not weighted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fitorch.checks import check_number
from fitorch.data import arrays_to_dataset, is_tensor_data


class SampleWeighting:
    """The weights of one fit: which batches carry weights, and the class weights.

    Args:
        class_weight: `{class index: weight}` for every class, or None.
        sample_weight: an array or tensor of per-sample weights (for `(x, y)` arrays), True when
            every batch ends with its weights, or None.

    Raises:
        TypeError, ValueError: a `class_weight` that is not a mapping of every class `0..K-1` to a
            number >= 0, or a `sample_weight` that is neither an array, True nor None.
    """

    def __init__(self, class_weight: Mapping[int, float] | None = None, sample_weight: Any = None) -> None:
        self.class_weight = _class_weight_list(class_weight)
        if sample_weight is not None and sample_weight is not True and not is_tensor_data(sample_weight):
            raise TypeError(
                "sample_weight must be an array or tensor with one weight per sample, True (every batch ends with "
                f"its weights), or None, got {type(sample_weight).__name__}."
            )
        self.array = None if sample_weight is None or sample_weight is True else sample_weight
        self.in_batches = sample_weight is True
        self.train_batches = self.in_batches or self.array is not None
        self.validation_batches = self.in_batches  # a split of weighted arrays sets it too (add_to)
        self._table: torch.Tensor | None = None
        self._checked = False

    @property
    def active(self) -> bool:
        """Whether this fit weighs anything."""
        return self.class_weight is not None or self.train_batches

    def add_to(self, data: Any, validation_split: float, float_dtype: torch.dtype | None = None) -> Any:
        """`data` with the `sample_weight` array as the last element of every sample (an `ArrayDataset`).

        Raises:
            ValueError: an array of weights with data that is not `(x, y)` arrays, or of another length.
        """
        if self.array is None:
            return data
        if not is_tensor_data(data) or not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError(
                "sample_weight as an array needs data given as arrays (x, y), one weight per sample; with a "
                "Dataset or DataLoader, yield (inputs, targets, weights) batches and pass sample_weight=True."
            )
        self.validation_batches = self.validation_batches or bool(validation_split)
        inputs = ["x"] if len(data) == 2 else [f"data[{i}]" for i in range(len(data) - 1)]
        labels = [*inputs, "y", "sample_weight"]
        return arrays_to_dataset((*data, self.array), "data", float_dtype, labels=labels)

    def split(self, batch: Any, weighted: bool) -> tuple[Any, torch.Tensor | None]:
        """`(batch without its weights, weights)` for a batch of a loader whose batches end with weights.

        Raises:
            ValueError: a batch that is not a tuple ending with weights.
        """
        if not weighted:
            return batch, None
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ValueError(
                "sample_weight=True: every batch must be (inputs..., targets, weights), got "
                f"{type(batch).__name__} of {len(batch) if isinstance(batch, (tuple, list)) else 1} elements."
            )
        return tuple(batch[:-1]), batch[-1]

    def weights(
        self, sample_weights: torch.Tensor | None, targets: Any, predictions: Any, training: bool
    ) -> torch.Tensor | None:
        """The per-sample weights of one batch: its sample weights times its class weights (training only)."""
        use_classes = training and self.class_weight is not None
        if sample_weights is None and not use_classes:
            return None
        weights = sample_weights.reshape(-1) if sample_weights is not None else None
        if use_classes:
            by_class = self._class_weights(targets, predictions)
            weights = by_class if weights is None else weights * by_class
        return weights

    def _class_weights(self, targets: torch.Tensor, predictions: Any) -> torch.Tensor:
        classes = _class_of_each_sample(targets, predictions)
        if not self._checked:
            self._check_classes(predictions)
        if self._table is None or self._table.device != classes.device:
            self._table = torch.tensor(self.class_weight, dtype=torch.float32, device=classes.device)
        # Clamped: ignore_index padding (-100) must not index the table; its loss is 0 anyway, and
        # out-of-range classes are reported by the loss (fitorch.losses.Criterion).
        return self._table[classes.clamp(0, len(self.class_weight) - 1)]

    def _check_classes(self, predictions: Any) -> None:
        outputs = predictions.shape[1] if isinstance(predictions, torch.Tensor) and predictions.ndim > 1 else 1
        classes = 2 if outputs == 1 else outputs  # one logit: two classes, 0 and 1
        if classes != len(self.class_weight):
            raise ValueError(
                f"class_weight gives weights for {len(self.class_weight)} classes (0 to {len(self.class_weight) - 1}) "
                f"but the model's outputs have {classes}; give one weight per class."
            )
        self._checked = True


def _class_weight_list(class_weight: Mapping[int, float] | None) -> list[float] | None:
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping):
        raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}.")
    keys = sorted(class_weight)
    if any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) for k in keys) or keys != list(range(len(keys))):
        raise ValueError(
            f"class_weight must map every class index 0..K-1 to a weight, got keys {keys}; "
            "give a weight to each class (1.0 keeps a class as it is)."
        )
    return [check_number(class_weight[key], f"class_weight[{key}]", minimum=0) for key in keys]


def _class_of_each_sample(targets: Any, predictions: Any) -> torch.Tensor:
    """Class indices from class-index targets, one-hot or probability targets, or 0/1 binary targets."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"class_weight needs tensor targets, got {type(targets).__name__}.")
    if not targets.is_floating_point():
        if targets.ndim != 1:
            raise ValueError(
                f"class_weight needs one class index per sample, got targets of shape {tuple(targets.shape)}; "
                "for per-position classes, weigh inside your own loss."
            )
        return targets.long()
    if (
        isinstance(predictions, torch.Tensor)
        and targets.shape == predictions.shape
        and targets.ndim == 2
        and (targets.shape[1] > 1)
    ):
        return targets.argmax(dim=1)  # one-hot or probability targets
    return targets.reshape(len(targets), -1)[:, 0].round().long()  # binary 0/1 targets of shape (N,) or (N, 1)
