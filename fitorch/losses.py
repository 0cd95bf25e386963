"""Loss functions by name, and the check that targets can work with the chosen loss.

PyTorch reports a wrong target dtype or shape deep inside a kernel ("expected scalar type Long"),
or not at all: `mse_loss` broadcasts `(N, 1)` against `(N,)` into an `(N, N)` matrix and trains on
nonsense. `check_targets` runs once, on the first batch, and says what is wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

LossFn = Callable[[Any, Any], torch.Tensor]

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
    "bce": nn.BCELoss,
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "mae": nn.L1Loss,
    "smooth_l1": nn.SmoothL1Loss,
    "huber": nn.HuberLoss,
    "kl_div": lambda: nn.KLDivLoss(reduction="batchmean"),
}
IGNORE_INDEX = -100
_CLASS_INDEX_LOSSES = {"cross_entropy", "nll"}
_SAME_SHAPE_LOSSES = {"bce_with_logits", "bce", "mse", "l1", "mae", "smooth_l1", "huber", "kl_div"}


def resolve_loss(loss: str | nn.Module | LossFn | None) -> tuple[LossFn | None, str | None]:
    """Return `(loss_fn, name)` for a loss name, module or callable; `(None, None)` for None.

    Raises:
        ValueError: an unknown loss name; the message lists the known ones.
        TypeError: `loss` is neither a name nor callable.
    """
    if loss is None:
        return None, None
    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}. Known losses: {', '.join(sorted(LOSSES))}; or pass a callable.")
        return LOSSES[key](), key
    if callable(loss):
        return loss, None
    raise TypeError(f"loss must be a name, an nn.Module or a callable (outputs, targets) -> loss, got {loss!r}.")


def loss_from_outputs(outputs: Any) -> torch.Tensor:
    """Read the loss a model computed itself (Hugging Face style: `outputs.loss` or `outputs["loss"]`).

    Raises:
        ValueError: the outputs carry no loss.
    """
    loss = getattr(outputs, "loss", None)
    if loss is None and isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    if loss is None:
        raise ValueError(
            "No loss was given to Learner and the model's outputs carry none (no .loss or ['loss']). "
            "Pass loss='cross_entropy' (or another loss) to Learner, or return the loss from the model."
        )
    return loss


def model_predictions(outputs: Any) -> Any:
    """The tensor that metrics compare with targets: `outputs.logits` for model outputs that carry one."""
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    return outputs if logits is None else logits


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).replace('torch.', '')} of shape {tuple(tensor.shape)}"


def check_targets(name: str | None, outputs: Any, targets: Any) -> None:
    """Check that `outputs` and `targets` fit the named loss; do nothing for custom losses.

    Raises:
        ValueError: a shape does not fit, or a class index is out of range.
        TypeError: a dtype does not fit.
    """
    if name is None or not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return
    got = f"got outputs {_describe(outputs)} and targets {_describe(targets)}"
    if name in _CLASS_INDEX_LOSSES:
        _check_class_targets(name, outputs, targets, got)
    elif name in _SAME_SHAPE_LOSSES:
        if targets.shape != outputs.shape:
            fix = (
                "reshape the targets with y.reshape(outputs.shape) (often y.unsqueeze(1) or y.squeeze(1))"
                if targets.numel() == outputs.numel()
                else "make the model's last layer produce one value per target"
            )
            raise ValueError(f"loss={name!r} needs targets of the same shape as the outputs; {got}. Fix: {fix}.")
        if not targets.is_floating_point():
            raise TypeError(f"loss={name!r} needs floating-point targets; {got}. Fix: convert with y.float().")


def _check_class_targets(name: str, outputs: torch.Tensor, targets: torch.Tensor, got: str) -> None:
    if outputs.ndim < 2:
        raise ValueError(
            f"loss={name!r} needs outputs of shape (N, C) with one score per class; {got}. "
            "For a single logit per sample use loss='bce_with_logits'."
        )
    if targets.is_floating_point():
        if name == "cross_entropy" and targets.shape == outputs.shape:
            return  # class probabilities (soft or one-hot targets) are valid for cross-entropy
        raise TypeError(
            f"loss={name!r} needs class indices as integers (int64) of shape {tuple(outputs.shape[:1])} "
            f"or class probabilities of shape {tuple(outputs.shape)}; {got}. Fix: convert with y.long()."
        )
    expected = (outputs.shape[0], *outputs.shape[2:])
    if tuple(targets.shape) != expected:
        fix = "use y.squeeze(1)" if targets.numel() == outputs.shape[0] else "pass one class index per sample"
        raise ValueError(f"loss={name!r} needs class indices of shape {expected}; {got}. Fix: {fix}.")
    num_classes = outputs.shape[1]
    labelled = targets[targets != IGNORE_INDEX]  # PyTorch's default ignore_index marks padding
    if labelled.numel() == 0:
        return
    # One host sync, on the first batch only.
    low, high = int(labelled.min()), int(labelled.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"loss={name!r}: class indices must lie in [0, {num_classes - 1}] for {num_classes} outputs, "
            f"got values from {low} to {high}. Fix: give the model {high + 1} outputs, or relabel the classes."
        )
