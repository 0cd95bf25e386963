"""Loss functions by name, what a loss reads from a model's outputs, and the checks of targets against it.

PyTorch reports a wrong target dtype or shape deep inside a kernel ("expected scalar type Long"),
or not at all: `mse_loss` broadcasts `(N, 1)` against `(N,)` into an `(N, N)` matrix and trains on
nonsense. `check_targets` runs once, on the first batch, and says what is wrong and how to fix it;
`Criterion` applies the loss to every batch: it reads the prediction tensor out of outputs that are
not one (`outputs.logits`, the first element of a tuple), accepts class indices of any integer
dtype, weighs samples (`class_weight`, `sample_weight`, as Keras does) and names the batch whose
class indices are out of range, without a host sync per step on a GPU.
"""

from __future__ import annotations

import copy
import weakref
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

# What a loss compares: metrics that cannot apply to its targets are refused (fitorch.metrics).
CLASS_INDEX, BINARY, REGRESSION, DISTRIBUTION = "class indices", "binary labels", "regression", "distributions"
_KIND_OF_MODULE: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.CrossEntropyLoss, nn.NLLLoss), CLASS_INDEX),
    ((nn.BCEWithLogitsLoss, nn.BCELoss), BINARY),
    ((nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss), REGRESSION),
    ((nn.KLDivLoss,), DISTRIBUTION),
)


def resolve_loss(loss: str | nn.Module | type | LossFn | None) -> tuple[LossFn | None, str | None]:
    """Return `(loss_fn, name)` for a loss name, module, module class or callable; `(None, None)` for None.

    A torch loss class (`loss=nn.CrossEntropyLoss`) is instantiated with its defaults.

    Raises:
        ValueError: an unknown loss name; the message lists the known ones.
        TypeError: `loss` is neither a name nor callable, or a class that needs arguments.
    """
    if loss is None:
        return None, None
    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}. Known losses: {', '.join(sorted(LOSSES))}; or pass a callable.")
        return LOSSES[key](), key
    if isinstance(loss, type):
        return _instantiate(loss), None
    if callable(loss):
        return loss, None
    raise TypeError(f"loss must be a name, an nn.Module or a callable (outputs, targets) -> loss, got {loss!r}.")


def _instantiate(loss: type) -> nn.Module:
    if not issubclass(loss, nn.Module):
        raise TypeError(
            f"loss={loss.__name__} is a class but not an nn.Module; pass a loss name, an nn.Module instance "
            "or a function (outputs, targets) -> loss."
        )
    try:
        return loss()
    except TypeError as error:
        raise TypeError(
            f"loss={loss.__name__} is a class that cannot be built without arguments ({error}); "
            f"pass an instance: loss={loss.__name__}(...)."
        ) from None


def loss_kind(loss_fn: Any, name: str | None) -> str | None:
    """What the loss compares (`CLASS_INDEX`, `BINARY`, `REGRESSION`, `DISTRIBUTION`), or None for a custom loss."""
    if name is not None:
        return CLASS_INDEX if name in _CLASS_INDEX_LOSSES else _kind_of_module(LOSSES[name]())
    return _kind_of_module(loss_fn)


def _kind_of_module(loss_fn: Any) -> str | None:
    return next((kind for classes, kind in _KIND_OF_MODULE if isinstance(loss_fn, classes)), None)


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
    """What `predict` returns for a batch: `outputs.logits` for model outputs that carry one, else the outputs."""
    if isinstance(outputs, torch.Tensor):  # the common case, without a failing attribute lookup per batch
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    return outputs if logits is None else logits


def prediction_tensor(outputs: Any) -> Any:
    """The tensor that a named loss and the metrics compare with the targets.

    `outputs.logits` or `outputs["logits"]` (a Hugging Face `ModelOutput`, a dict); the first element
    of a tuple or list that is not a scalar (`(logits, hidden_states)`, and Hugging Face's tuples
    `(loss, logits, ...)` when the model got labels); or the outputs themselves.
    """
    predictions = model_predictions(outputs)
    if predictions is outputs and isinstance(outputs, (tuple, list)) and outputs:
        return next((item for item in outputs if not _is_scalar(item)), outputs[0])
    return predictions


def _is_scalar(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 0


def reads_predictions(loss_fn: Any, name: str | None) -> bool:
    """Whether the loss gets `prediction_tensor(outputs)`: named losses and torch's loss modules do; a
    function of your own gets the outputs exactly as the model returned them."""
    return name is not None or isinstance(loss_fn, nn.modules.loss._Loss)


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
    labelled = targets[targets != IGNORE_INDEX]  # PyTorch's default ignore_index marks padding
    if labelled.numel() == 0:
        return
    # One host sync, on the first batch only.
    low, high = int(labelled.min()), int(labelled.max())
    message = out_of_range_message(name, outputs.shape[1], low, high)
    if message:
        raise ValueError(message)


def out_of_range_message(name: str | None, num_classes: int, low: int, high: int, where: str = "") -> str | None:
    """What is wrong with class indices from `low` to `high` for `num_classes` outputs, or None if nothing is."""
    if 0 <= low and high < num_classes:
        return None
    fixes = []
    if high >= num_classes:
        fixes.append(f"give the model {high + 1} outputs, or relabel the classes from 0")
    if low < 0:
        fixes.append(f"mark samples to ignore with {IGNORE_INDEX} (PyTorch's ignore_index), or relabel the classes")
    loss = f"loss={name!r}" if name else "the loss"
    return (
        f"{loss}: class indices must lie in [0, {num_classes - 1}] for {num_classes} outputs, got values from "
        f"{low} to {high}{where}. Fix: {'; '.join(fixes)}."
    )


class Criterion:
    """The learner's loss applied to one batch, with everything around it that a named loss implies.

    - Named losses and torch loss modules read `prediction_tensor(outputs)`; other callables get
      the outputs as they are.
    - Class-index losses take integer targets of any dtype (int8 ... uint8, NumPy's int32): they
      are cast to int64 on the way in.
    - With sample weights (`class_weight`, `sample_weight`), the loss is Keras's: the per-sample
      losses times their weights, summed and divided by the batch's sample count, so that epoch
      values and accumulation windows stay exact means over samples.
    - Class indices out of range after the first batch (which `check_targets` covers): on the CPU
      torch raises an `IndexError`, re-raised naming the batch and the values; on an accelerator
      the indices are checked on the device (`DeviceLabelGuard`), with no host sync per step.
    """

    def __init__(self) -> None:
        self._unreduced: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
        self.guard = DeviceLabelGuard()

    def __call__(
        self,
        loss_fn: LossFn,
        name: str | None,
        outputs: Any,
        targets: Any,
        weights: torch.Tensor | None = None,
        where: tuple[str, int, int] = ("training", 0, 0),
    ) -> torch.Tensor:
        """The batch's loss; `weights` are per-sample weights or None; `where` (phase, epoch, batch) is for messages."""
        predictions = prediction_tensor(outputs) if reads_predictions(loss_fn, name) else outputs
        class_indices = loss_kind(loss_fn, name) == CLASS_INDEX and isinstance(targets, torch.Tensor)
        if class_indices and not targets.is_floating_point():
            targets = targets if targets.dtype == torch.int64 else targets.long()
            if targets.device.type != "cpu" and isinstance(predictions, torch.Tensor) and predictions.ndim > 1:
                targets = self.guard.check(targets, predictions.shape[1], _ignore_index(loss_fn), where, name)
        try:
            if weights is None:
                return loss_fn(predictions, targets)
            return self.weighted(loss_fn, predictions, targets, weights)
        except IndexError as error:  # the CPU kernels' "Target 5 is out of bounds."
            if not class_indices or not isinstance(predictions, torch.Tensor):
                raise
            labelled = targets[targets != _ignore_index(loss_fn)]
            message = out_of_range_message(
                name, predictions.shape[1], int(labelled.min()), int(labelled.max()), describe_batch(where)
            )
            raise ValueError(message or str(error)) from error

    def weighted(self, loss_fn: LossFn, predictions: Any, targets: Any, weights: torch.Tensor) -> torch.Tensor:
        """Keras's weighted loss: `sum(weight_i * loss_i) / N` over the batch's N samples."""
        per_sample = self.unreduced(loss_fn)(predictions, targets)
        if per_sample.ndim > 1:  # one value per sample: mean over its elements (sum for KL's batchmean)
            flat = per_sample.flatten(1)
            per_sample = flat.sum(1) if getattr(loss_fn, "reduction", None) == "batchmean" else flat.mean(1)
        return (per_sample * weights.to(per_sample.dtype)).sum() / per_sample.shape[0]

    def unreduced(self, loss_fn: LossFn) -> nn.Module:
        """A copy of a torch loss module that returns one value per element (`reduction="none"`).

        Raises:
            TypeError: the loss is not a torch loss module, so per-sample values cannot be had from it.
        """
        if not isinstance(loss_fn, nn.modules.loss._Loss):
            raise TypeError(
                "class_weight and sample_weight need a loss fitorch can evaluate per sample: a loss name "
                f"('cross_entropy', 'mse', ...) or a torch loss module (nn.CrossEntropyLoss(), ...); got {loss_fn!r}. "
                "Weigh the samples inside your own loss instead."
            )
        if loss_fn not in self._unreduced:
            unreduced = copy.copy(loss_fn)
            unreduced.reduction = "none"
            self._unreduced[loss_fn] = unreduced
        return self._unreduced[loss_fn]


def _ignore_index(loss_fn: Any) -> int:
    return getattr(loss_fn, "ignore_index", IGNORE_INDEX)


class DeviceLabelGuard:
    """Class indices out of range on an accelerator, found without a host sync per step.

    Out-of-range indices would make a CUDA loss kernel fail a device-side assert, which kills the
    process's CUDA context and surfaces later, at some unrelated line. Instead, each batch's
    indices are checked on the device: bad ones are replaced by the ignore index (so no kernel
    asserts), and the first bad batch's position and values are recorded on the device. A flag is
    copied into pinned host memory without waiting and read on the next batch (the copy has landed
    by then): the host reads the device only when an error is already certain, or at the end of a
    phase, where the learner reads its results anyway.
    """

    def __init__(self) -> None:
        self.found: torch.Tensor | None = None  # [any bad yet, phase, epoch, batch, lowest, highest], on the device
        self.flag: torch.Tensor | None = None  # found[0], copied to pinned host memory
        self.phases: list[str] = []
        self.num_classes, self.loss_name = 0, None

    def reset(self) -> None:
        """Forget everything (the learner calls it at the start of every call)."""
        self.found, self.flag, self.phases = None, None, []

    def check(
        self,
        targets: torch.Tensor,
        num_classes: int,
        ignore_index: int,
        where: tuple[str, int, int],
        loss_name: str | None = None,
    ) -> torch.Tensor:
        """`targets` with out-of-range indices replaced by `ignore_index`; raises for an earlier batch's.

        Args:
            targets: the batch's class indices (int64, on the device).
            num_classes: the number of model outputs.
            ignore_index: the loss's ignore index, which is never out of range.
            where: the phase (`"training"`, ...), the epoch and the batch index, for the message.
            loss_name: the loss's name, for the message.

        Raises:
            ValueError: a batch checked earlier held class indices out of range.
        """
        if self.found is None:
            self.found = torch.zeros(6, dtype=torch.int64, device=targets.device)
            self.flag = torch.zeros(1, dtype=torch.int64, pin_memory=torch.cuda.is_available())
        self.verify(certain_only=True)
        phase, epoch, batch = where
        if phase not in self.phases:
            self.phases.append(phase)
        self.num_classes, self.loss_name = num_classes, loss_name
        outside = ((targets < 0) | (targets >= num_classes)) & (targets != ignore_index)
        low, high = torch.aminmax(torch.where(outside, targets, 0))
        first = outside.any() & (self.found[0] == 0)
        update = torch.stack(
            [
                torch.ones_like(low),
                *(torch.full_like(low, n) for n in (self.phases.index(phase), epoch, batch)),
                low,
                high,
            ]
        )
        self.found.copy_(torch.where(first, update, self.found))
        self.flag.copy_(self.found[:1], non_blocking=True)
        return torch.where(outside, ignore_index, targets)

    def verify(self, certain_only: bool = False) -> None:
        """Raise if a checked batch held indices out of range (reading the device unless `certain_only`).

        Raises:
            ValueError: naming the first such batch and its out-of-range values.
        """
        if self.found is None or (certain_only and not int(self.flag[0])):
            return
        bad, phase, epoch, batch, low, high = self.found.tolist()  # a host sync: an error is certain, or a phase ended
        if bad:
            where = describe_batch((self.phases[phase], epoch, batch))
            num_classes, name = self.num_classes, self.loss_name
            self.reset()
            raise ValueError(out_of_range_message(name, num_classes, low, high, where))


def describe_batch(where: tuple[str, int, int]) -> str:
    """`" in training batch 3 of epoch 2"`: where a batch is, for messages (batch and epoch counted from 0 and 1)."""
    phase, epoch, batch = where
    return f" in {phase} batch {batch}" + (f" of epoch {epoch + 1}" if phase != "evaluation" else "")
