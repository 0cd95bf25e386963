"""The built-in callbacks, installed as `fitorch.callbacks`.

Each one is written against the public `fitorch` API only, exactly as a user's callback would be.
"""

from fitorch.callbacks.backup_and_restore import BackupAndRestore
from fitorch.callbacks.csv_logger import CSVLogger
from fitorch.callbacks.early_stopping import EarlyStopping
from fitorch.callbacks.file_logger import FileLogger
from fitorch.callbacks.history import History
from fitorch.callbacks.label_smoothing import LabelSmoothing
from fitorch.callbacks.lambda_callback import LambdaCallback
from fitorch.callbacks.learning_rate_scheduler import LearningRateScheduler
from fitorch.callbacks.lr_scheduler import LRScheduler
from fitorch.callbacks.model_checkpoint import ModelCheckpoint
from fitorch.callbacks.model_summary import ModelSummary
from fitorch.callbacks.progress import ProgressBar
from fitorch.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from fitorch.callbacks.tensorboard import TensorBoard
from fitorch.callbacks.terminate_on_nan import TerminateOnNaN
from fitorch.callbacks.throughput import Throughput
from fitorch.callbacks.weight_averaging import WeightAveraging

__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "EarlyStopping",
    "FileLogger",
    "History",
    "LRScheduler",
    "LabelSmoothing",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
    "ReduceLROnPlateau",
    "TensorBoard",
    "TerminateOnNaN",
    "Throughput",
    "WeightAveraging",
]
