"""fitorch: Keras-short training for PyTorch, on Hugging Face Accelerate.

Example:
    >>> from fitorch import Learner
    >>> learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-3, metrics=["accuracy"])
    >>> history = learner.fit(model, (x, y), epochs=10, validation_split=0.2)  # doctest: +SKIP

The public API is what this module exports, plus `fitorch.checks` (argument checks for your own
callbacks); built-in callbacks live in `fitorch.callbacks`.
"""

from fitorch.callback import EVENTS, Callback, CallbackList, Every
from fitorch.checkpoint import (
    delete_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    verify_checkpoint,
)
from fitorch.data import call_model, unpack_batch
from fitorch.learner import Learner
from fitorch.losses import LOSSES
from fitorch.lr_finder import LRFindResult
from fitorch.metrics import (
    Accuracy,
    BatchMean,
    EpochLogs,
    LazyLogs,
    MeanAbsoluteError,
    MeanMetric,
    MeanSquaredError,
    MetricProtocol,
    TopKAccuracy,
)
from fitorch.monitor import Monitor
from fitorch.optimizers import OPTIMIZERS
from fitorch.preemption import Preempted
from fitorch.run_lock import RunDirLocked
from fitorch.seed import seed_everything
from fitorch.summary import Summary, summary
from fitorch.version import __version__ as __version__

__all__ = [
    "EVENTS",
    "LOSSES",
    "OPTIMIZERS",
    "Preempted",
    "Accuracy",
    "BatchMean",
    "Callback",
    "CallbackList",
    "EpochLogs",
    "Every",
    "LRFindResult",
    "LazyLogs",
    "Learner",
    "MeanAbsoluteError",
    "MeanMetric",
    "MeanSquaredError",
    "MetricProtocol",
    "Monitor",
    "RunDirLocked",
    "TopKAccuracy",
    "call_model",
    "delete_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "Summary",
    "seed_everything",
    "summary",
    "verify_checkpoint",
    "unpack_batch",
]
