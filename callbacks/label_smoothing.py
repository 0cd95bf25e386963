"""`LabelSmoothing`: train with label-smoothed cross-entropy, evaluate with the true labels.

It owns the swap of `learner.loss_fn`: the smoothed loss during training batches, the learner's
own loss during validation and after `fit`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from fitorch import Callback
from fitorch.checks import check_number


class LabelSmoothing(Callback):
    """Label smoothing for a cross-entropy loss, during training only.

    While training, the loss is `F.cross_entropy(outputs, targets, label_smoothing=smoothing)`:
    for class-index targets, each target puts `1 - smoothing` on its class and spreads `smoothing`
    evenly over all classes; for one-hot (or probability) targets, torch smooths the target
    distribution the same way. The logged training `loss` is therefore the smoothed loss (the
    one optimised); `val_loss`, `evaluate` and every metric use the true labels. The loss's
    `weight`, `ignore_index` and `reduction` are kept.

    Args:
        smoothing: the probability mass moved off the true class, in [0, 1).

    Raises:
        ValueError: `smoothing` outside [0, 1); at the start of `fit`, a loss that is not
            cross-entropy, or one that is already smoothed.

    Example:
        >>> learner = Learner(loss="cross_entropy", callbacks=[LabelSmoothing(0.1)])
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = check_number(
            smoothing, "smoothing", minimum=0, maximum=1, open_max=True, owner="LabelSmoothing"
        )
        self.original_loss_fn: Any = None
        self.smoothed_loss_fn: nn.CrossEntropyLoss | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        loss_fn = self.learner.loss_fn
        self.original_loss_fn = loss_fn
        self.smoothed_loss_fn = _smoothed(loss_fn, self.smoothing)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        self.learner.loss_fn = self.smoothed_loss_fn

    def on_test_begin(self, logs: dict[str, Any]) -> None:
        if self.original_loss_fn is not None:
            self.learner.loss_fn = self.original_loss_fn  # validation reports the true-label loss

    def on_test_end(self, logs: dict[str, Any]) -> None:
        if self.original_loss_fn is not None and self.learner.fitting:
            self.learner.loss_fn = self.smoothed_loss_fn  # training goes on after a validation inside an epoch

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.original_loss_fn is not None:
            self.learner.loss_fn = self.original_loss_fn
            self.original_loss_fn = None


def _smoothed(loss_fn: Any, smoothing: float) -> nn.CrossEntropyLoss:
    if loss_fn is F.cross_entropy:
        return nn.CrossEntropyLoss(label_smoothing=smoothing)
    if not isinstance(loss_fn, nn.CrossEntropyLoss):
        name = type(loss_fn).__name__ if loss_fn is not None else "None (the model's own loss)"
        raise ValueError(
            f"LabelSmoothing applies to a cross-entropy loss only; this learner's loss is {name}. "
            "Use Learner(loss='cross_entropy'), or smooth the targets in your own loss."
        )
    if loss_fn.label_smoothing:
        raise ValueError(
            f"LabelSmoothing: the loss already smooths labels (label_smoothing={loss_fn.label_smoothing}); "
            "keep one of the two."
        )
    return nn.CrossEntropyLoss(
        weight=loss_fn.weight, ignore_index=loss_fn.ignore_index, reduction=loss_fn.reduction, label_smoothing=smoothing
    )
