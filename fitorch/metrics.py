"""Metrics with exact epoch values, and the tracker that aggregates loss and metrics over an epoch.

Epoch values are means over samples, not over batches: a short last batch counts for what it
holds. Running sums stay on the device, so nothing forces a host sync per step; values become
Python floats only when someone reads them (the progress bar when it redraws, the epoch end).

A metric is a name (`"accuracy"`, `"top_k_accuracy"`, `"mae"`, `"mse"`), a callable
`(outputs, targets) -> tensor` (a per-batch mean, weighted by batch size), or any object with
`update(outputs, targets)`, `compute()` and `reset()` (the torchmetrics protocol).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fitorch.checks import check_bool, check_int, check_number


@runtime_checkable
class MetricProtocol(Protocol):
    """What fitorch needs of a metric object (the torchmetrics protocol)."""

    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> Any: ...

    def reset(self) -> None: ...


def sum_dtype(device: torch.device) -> torch.dtype:
    """Float64 for running sums, so long epochs lose no precision; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class MeanMetric:
    """A metric that is a mean of per-sample values: keeps a device-side sum and a host-side count.

    Subclasses implement `values(outputs, targets)` returning one value per sample (or a scalar
    sum and a count via `batch_sum`). Under several processes the learner all-reduces `total`
    and `count` before `compute()`.
    """

    name = "mean"

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def batch_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Return (sum of per-sample values, number of samples) for one batch."""
        values = self.values(outputs, targets)
        return values.sum(), values.numel()

    def values(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample values (booleans count as 0 and 1); subclasses override this or `batch_sum`."""
        raise NotImplementedError

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch."""
        batch_total, batch_count = self.batch_sum(outputs, targets)
        if self.total is None:
            self.total = torch.zeros((), dtype=sum_dtype(batch_total.device), device=batch_total.device)
        self.total.add_(batch_total.detach())  # in place: one kernel per batch, no new tensor
        self.count += batch_count

    def compute(self) -> torch.Tensor:
        """The mean over every sample seen since the last reset (NaN before any)."""
        if self.total is None or self.count == 0:
            return torch.tensor(float("nan"))
        return self.total / self.count

    def reset(self) -> None:
        """Forget every sample seen."""
        self.total, self.count = None, 0


class Accuracy(MeanMetric):
    """Fraction of correct predictions.

    Multi-class outputs `(N, C)` are compared by argmax with class-index or one-hot targets.
    Binary outputs `(N,)` or `(N, 1)` are thresholded: logits at 0, probabilities at `threshold`.

    Args:
        threshold: decision threshold for probabilities in the binary case.
        from_logits: whether binary outputs are logits. None lets the learner decide from the
            loss (`"bce"` means probabilities; anything else, logits).
    """

    name = "accuracy"
    regression_loss: str | None = None  # set by resolve_metrics: then only one-hot targets make sense

    def __init__(self, threshold: float = 0.5, from_logits: bool | None = None) -> None:
        super().__init__()
        self.threshold = check_number(threshold, "threshold", minimum=0, maximum=1, owner="Accuracy")
        self.from_logits = None if from_logits is None else check_bool(from_logits, "from_logits", owner="Accuracy")

    def values(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression_loss is not None:
            _check_one_hot(self.name, self.regression_loss, outputs, targets)
        if outputs.ndim >= 2 and outputs.shape[1] > 1:
            predicted = outputs.argmax(dim=1)
            if targets.shape == outputs.shape:  # one-hot or probability targets
                targets = targets.argmax(dim=1)
            return predicted == targets  # booleans: their sum is the number correct
        threshold = 0.0 if self.from_logits in (None, True) else self.threshold
        predicted = outputs.reshape(-1) > threshold
        return predicted == targets.reshape(-1).bool()


class TopKAccuracy(MeanMetric):
    """Fraction of samples whose target is among the `k` highest scores.

    Args:
        k: how many of the top classes count as a hit; it must be below the number of classes
            (with `k` classes or more every sample is a hit, and the metric says nothing).

    Raises:
        ValueError: on the first batch, outputs with `k` classes or fewer.
    """

    name = "top_k_accuracy"
    regression_loss: str | None = None  # set by resolve_metrics: then only one-hot targets make sense

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k = check_int(k, "k", minimum=1, owner="TopKAccuracy")

    def values(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression_loss is not None:
            _check_one_hot(self.name, self.regression_loss, outputs, targets)
        if outputs.ndim < 2 or self.k >= outputs.shape[1]:
            classes = outputs.shape[1] if outputs.ndim >= 2 else 1
            raise ValueError(
                f"top_k_accuracy with k={self.k} and {classes} classes counts every sample as a hit (always 1.0); "
                f"use TopKAccuracy(k) with k below {classes}, or 'accuracy'."
            )
        if targets.shape == outputs.shape:
            targets = targets.argmax(dim=1)
        top = outputs.topk(self.k, dim=1).indices
        return (top == targets.unsqueeze(1)).any(dim=1)


def _check_one_hot(metric: str, loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse a class metric under a regression loss unless the targets are one-hot (one column per class)."""
    if outputs.ndim == 2 and outputs.shape[1] > 1 and targets.shape == outputs.shape:
        return  # a regression onto one-hot targets: the largest output is the predicted class
    raise ValueError(
        f"metric {metric!r} compares predicted classes, but loss={loss} is a regression loss and the targets "
        f"(shape {tuple(targets.shape)}) are values, not one-hot classes (outputs {tuple(outputs.shape)}): "
        "the result would mean nothing. Use 'mae' or 'mse' as metrics, or a classification loss."
    )


def _difference(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # (N, 1) outputs against (N,) targets would broadcast to (N, N); compare element by element.
    return outputs.reshape(targets.shape) - targets if outputs.numel() == targets.numel() else outputs - targets


class MeanAbsoluteError(MeanMetric):
    """Mean absolute error over every element of every sample."""

    name = "mae"

    def batch_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        difference = _difference(outputs, targets)
        return difference.abs().sum(), difference.numel()


class MeanSquaredError(MeanMetric):
    """Mean squared error over every element of every sample."""

    name = "mse"

    def batch_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        difference = _difference(outputs, targets)
        return difference.square().sum(), difference.numel()


class BatchMean(MeanMetric):
    """Wraps a function `(outputs, targets) -> scalar` computed per batch, weighted by batch size.

    Args:
        fn: the function; its value is taken as the batch's mean.
        name: the key in the logs (the function's name by default).
    """

    def __init__(self, fn: Callable[[Any, Any], Any], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def batch_sum(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, int]:
        n = len(targets) if targets is not None else len(outputs)
        value = torch.as_tensor(self.fn(outputs, targets))
        return value.reshape(()) * n, n


METRICS: dict[str, Callable[[], Any]] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "mae": MeanAbsoluteError,
    "mse": MeanSquaredError,
}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# The built-in metrics that compare predicted classes, and those that compare values: each makes no
# sense with the other kind of loss (accuracy of a regression is a number, and a meaningless one).
_CLASS_METRICS = (Accuracy, TopKAccuracy)
_VALUE_METRICS = (MeanAbsoluteError, MeanSquaredError)


def _check_applies(name: str, metric: Any, loss_name: str | None, loss_kind: str | None) -> None:
    loss = repr(loss_name) if loss_name else "this loss"
    if isinstance(metric, _CLASS_METRICS) and loss_kind == "regression":
        metric.regression_loss = loss  # checked on the first batch: only one-hot targets make sense
    if isinstance(metric, _VALUE_METRICS) and loss_kind == "class indices":
        raise ValueError(
            f"metric {name!r} compares values, but loss={loss} takes class indices as targets, so the difference "
            "between class scores and class numbers means nothing. Use 'accuracy' or 'top_k_accuracy'."
        )


def resolve_metrics(
    metrics: Sequence[Any] | None, loss_name: str | None = None, loss_kind: str | None = None
) -> dict[str, Any]:
    """Turn the `metrics` argument into `{log name: metric object}`.

    Args:
        metrics: the `metrics` argument of `Learner`.
        loss_name: the loss's name, when it was given by name (`"bce"` makes accuracy read probabilities).
        loss_kind: what the loss compares (`fitorch.losses.loss_kind`); built-in metrics that cannot
            apply to it are refused.

    Raises:
        ValueError: an unknown metric name (the message lists the known ones), two metrics with one
            name, or a built-in metric that cannot apply to the loss (accuracy with `"mse"`).
        TypeError: an entry that is neither a name, a callable nor a metric object.
    """
    if metrics is None:
        return {}
    if isinstance(metrics, (str, Mapping)) or not isinstance(metrics, Sequence):
        metrics = [metrics]
    resolved: dict[str, Any] = {}
    for metric in metrics:
        if isinstance(metric, str):
            if metric.lower() not in METRICS:
                raise ValueError(
                    f"Unknown metric {metric!r}. Known metrics: {', '.join(METRICS)}; "
                    "or pass a callable (outputs, targets) -> value, or an object with update/compute/reset."
                )
            name, obj = ("accuracy" if metric.lower() == "acc" else metric.lower()), METRICS[metric.lower()]()
        elif isinstance(metric, MetricProtocol):
            obj = metric
            name = getattr(metric, "name", None) or _snake_case(type(metric).__name__)
        elif callable(metric):
            obj = BatchMean(metric)
            name = obj.name
        else:
            raise TypeError(
                f"metrics entries must be names, callables or objects with update/compute/reset, got {metric!r}."
            )
        if isinstance(obj, Accuracy) and obj.from_logits is None:
            obj.from_logits = loss_name != "bce"
        _check_applies(name, obj, loss_name, loss_kind)
        if name in resolved or name == "loss":
            raise ValueError(f"Two metrics would be logged as {name!r}; give one of them another name.")
        resolved[name] = obj
    return resolved


class Tracker:
    """Running loss and metrics over one phase of an epoch (training, validation or evaluation).

    Args:
        metrics: `{log name: metric}` as returned by `resolve_metrics`.
    """

    def __init__(self, metrics: Mapping[str, Any]) -> None:
        self.metrics = dict(metrics)
        self.loss_total: torch.Tensor | None = None
        self.loss_count = 0

    def reset(self) -> None:
        """Start a new phase."""
        self.loss_total, self.loss_count = None, 0
        for metric in self.metrics.values():
            metric.reset()

    def update(self, loss: torch.Tensor | None, outputs: Any, targets: Any, count: int) -> None:
        """Add one batch: `loss` is the batch mean over `count` samples."""
        if loss is not None:
            if self.loss_total is None:
                self.loss_total = torch.zeros((), dtype=sum_dtype(loss.device), device=loss.device)
            self.loss_total.add_(loss.detach(), alpha=count)  # in place: one kernel per batch
            self.loss_count += count
        if targets is not None:
            for metric in self.metrics.values():
                metric.update(outputs, targets)

    def sums(self) -> dict[str, list[float]]:
        """The running sums and sample counts of the loss and the mean metrics, JSON-able (one host sync).

        Mid-epoch checkpoints store them, so that a run resumed inside an epoch reports that epoch's
        values over all of its batches.
        """
        pairs = {"loss": (self.loss_total, self.loss_count)}
        pairs.update({n: (m.total, m.count) for n, m in self.metrics.items() if isinstance(m, MeanMetric)})
        return {name: [float(total), count] for name, (total, count) in pairs.items() if total is not None}

    def add_sums(self, sums: Mapping[str, Sequence[float]], device: torch.device) -> None:
        """Start from sums that `sums()` returned; keys this tracker does not have are ignored."""
        for name, (total, count) in sums.items():
            tensor = torch.tensor(total, dtype=sum_dtype(device), device=device)
            if name == "loss":
                self.loss_total, self.loss_count = tensor, int(count)
            elif isinstance(self.metrics.get(name), MeanMetric):
                self.metrics[name].total, self.metrics[name].count = tensor, int(count)

    def results(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: torch.device | None = None
    ) -> dict[str, float]:
        """The phase's values as Python floats (one host sync).

        Args:
            reduce: sums a tensor over all processes; given under distributed training so that
                every process gets the global values from one collective call.
            device: where to build the reduced tensor (the accelerator's device).
        """
        sums = {"loss": (self.loss_total, self.loss_count)}
        sums.update({n: (m.total, m.count) for n, m in self.metrics.items() if isinstance(m, MeanMetric)})
        if reduce is None:
            sums = {name: pair for name, pair in sums.items() if pair[1] > 0}
        values: dict[str, float] = {}
        if sums:
            device = device or next((t.device for t, _ in sums.values() if t is not None), torch.device("cpu"))
            dtype = sum_dtype(device)
            zero = torch.zeros((), dtype=dtype, device=device)
            totals = torch.stack([zero if total is None else total.to(device, dtype) for total, _ in sums.values()])
            counts = [float(count) for _, count in sums.values()]
            if reduce is not None:  # one collective for every sum and count, then one read
                counts_tensor = torch.tensor(counts, dtype=dtype).to(device, non_blocking=True)
                totals, counts = reduce(torch.stack([totals, counts_tensor])).tolist()
            else:
                totals = totals.tolist()  # the one host sync: the counts are on the host already
            for name, total, count in zip(sums, totals, counts):
                if count > 0:
                    values[name] = total / count
        ordered = {"loss": values["loss"]} if "loss" in values else {}
        for name, metric in self.metrics.items():
            if isinstance(metric, MeanMetric):
                if name in values:
                    ordered[name] = values[name]
            else:  # a dict result expands into its entries, in the metric's place
                _add_results(ordered, name, metric.compute())
        return ordered


def _add_results(values: dict[str, float], name: str, result: Any) -> None:
    """Add a metric object's `compute()` result: one key for a scalar, one key per entry of a dict.

    Raises:
        ValueError: a result that is not a scalar (a confusion matrix, a per-class vector), or an
            entry whose key another value already has.
    """
    entries = result.items() if isinstance(result, Mapping) else [(name, result)]
    for key, value in entries:
        if key in values:
            raise ValueError(
                f"metric {name!r}: its result {key!r} has the name of another logged value; rename one of them."
            )
        values[key] = _scalar(key, value, name)


def _scalar(key: str, value: Any, metric: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {metric!r} returned a tensor of shape {tuple(value.shape)} for {key!r}; logs hold scalars. "
                "Log a matrix or a per-class vector from a callback of your own (on_epoch_end, via "
                "metric.compute()), or give a metric that reduces it to one number (average='macro', say)."
            )
        return float(value.detach())
    if isinstance(value, Mapping):
        raise ValueError(f"metric {metric!r} returned nested dicts for {key!r}; return one level of name -> number.")
    return float(value)


class EpochLogs(dict):
    """The logs of one epoch, as `on_epoch_end` receives them: a dict, and whether validation ran.

    Args:
        values: the epoch's values (`loss`, metrics, `val_*`, `lr`).
        validated: False when the fit validates but did not in this epoch (`validation_freq`); its
            logs then hold no `val_*`, and `fitorch.Monitor` skips the epoch instead of raising.
    """

    def __init__(self, values: Mapping[str, Any] = (), validated: bool = True) -> None:
        super().__init__(values)
        self.validated = check_bool(validated, "validated", owner="EpochLogs")


class LazyLogs(MutableMapping):
    """Batch logs computed only when read, so a step whose logs nobody reads forces no host sync.

    The learner passes one to `on_train_batch_end` and `on_test_batch_end`, wrapping `Tracker.results`.
    A callback may keep it: the learner computes a kept one before the next batch changes the sums
    (see `RunningLogs`), so it always reads its own batch's values. Keys a callback sets are added
    to the values (as in Keras, where batch logs are a dict).
    """

    def __init__(self, compute: Callable[[], dict[str, float]]) -> None:
        self._compute = compute
        self._values: dict[str, float] | None = None

    def settle(self) -> None:
        """Compute the values now (one host sync), if nothing read them yet."""
        if self._values is None:
            self._values = self._compute()

    def _read(self) -> dict[str, float]:
        self.settle()
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._read()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._read()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return f"LazyLogs({self._read()!r})"


class RunningLogs:
    """Hands out one `LazyLogs` per batch over a tracker, and computes the last one if a callback kept it.

    Call `settle_kept()` before the tracker takes the next batch: a `LazyLogs` that anything but
    this object still references was kept (a list of batch logs, say), so it is computed then, with
    the values of its own batch. One nobody kept is dropped uncomputed: no host sync.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._last: LazyLogs | None = None

    def __call__(self) -> LazyLogs:
        self._last = LazyLogs(self.tracker.results)
        return self._last

    def settle_kept(self) -> None:
        """Compute the last batch's logs if a callback kept a reference to them."""
        # Two references are ours: this attribute and getrefcount's own argument.
        if self._last is not None and sys.getrefcount(self._last) > 2:
            self._last.settle()
        self._last = None
