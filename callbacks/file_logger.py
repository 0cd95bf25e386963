"""`FileLogger`: the run's `train.log`, through Python `logging` under the `fitorch` logger.

It owns the handlers it attaches for one fit (a file, and the console when nothing else prints the
`fitorch` logger) and the lines it writes: the configuration and hyperparameters at the start, one
line per epoch, the failure if `fit` fails, the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from fitorch import Callback
from fitorch.checks import check_path

logger = logging.getLogger("fitorch")
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
FILE_ONLY = {"file_only": True}  # `extra` of records the console skips (the progress bar shows them already)


def format_epoch(logs: Mapping[str, Any]) -> str:
    """`loss: 0.693147 - accuracy: 0.5 - lr: 0.1`: six significant digits, readable and greppable."""
    return " - ".join(
        f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}" for key, value in logs.items()
    )


class _Console(logging.Handler):
    """Prints through tqdm, so that a message in the middle of an epoch does not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler reports itself and never raises
            self.handleError(record)


class FileLogger(Callback):
    """Writes `train.log`: timestamped lines from the `fitorch` logger, on the main process only.

    At the start of `fit` it records the learner's configuration (`learner.config()`, as JSON) and
    the hyperparameters (`Learner(hparams=...)` updated with `fit(hparams=...)`); then one line per
    epoch (`epoch 2/10 - loss: 0.4127 - val_loss: 0.4518 - lr: 0.001`), every message other parts of
    fitorch log (early stopping, learning-rate reductions, non-finite losses), the error when `fit`
    fails, and the end. The file is opened in append mode, so a resumed run continues its log.

    Console: with the learner's `verbose` at 1 or 2, and when the `fitorch` logger has no handler
    of yours (nor does the root logger), the same messages also go to standard error, except the
    configuration and the epoch lines, which the progress bar already shows. With `verbose=0`,
    nothing goes to the console. The learner adds a `FileLogger` when `run_dir` is set.

    Args:
        filename: the log file; None means `run_dir/train.log`.

    Raises:
        TypeError: `filename` is not a path.
        ValueError: at the start of `fit`, no `filename` and no `run_dir`.

    Example:
        >>> learner = Learner(loss="mse", run_dir="runs/exp1", hparams={"width": 64})  # adds a FileLogger
        >>> learner.fit(model, (x, y), epochs=3, callbacks=[FileLogger("logs/exp1.log")])  # doctest: +SKIP
    """

    def __init__(self, filename: str | os.PathLike | None = None) -> None:
        self.filename = check_path(filename, "filename", allow_none=True, owner="FileLogger")
        self.path: str | None = None
        self._handlers: list[logging.Handler] = []
        self._previous_level: int | None = None
        self._started = 0.0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        learner = self.learner
        if not learner.is_main_process:
            return
        self.path = self._resolve_path()
        self._attach(console=learner.verbose > 0 and not logger.hasHandlers())
        self._started = time.monotonic()
        logger.info(
            "fit: epochs %d to %d, run_dir %s", learner.epoch + 1, learner.epochs, learner.run_dir, extra=FILE_ONLY
        )
        logger.info("config: %s", json.dumps(learner.config(), sort_keys=True), extra=FILE_ONLY)
        logger.info("hparams: %s", json.dumps(learner.config()["hparams"], sort_keys=True), extra=FILE_ONLY)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._handlers:
            logger.info("epoch %d/%d - %s", epoch + 1, self.learner.epochs, format_epoch(logs), extra=FILE_ONLY)

    def on_exception(self, exception: BaseException) -> None:
        if self._handlers:
            logger.error("fit failed: %r", exception, exc_info=exception, extra=FILE_ONLY)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if not self._handlers:
            return
        seconds = time.monotonic() - self._started
        logger.info("fit ended after epoch %d (%.1f s)", self.learner.epoch + 1, seconds, extra=FILE_ONLY)
        self._detach()

    def _resolve_path(self) -> str:
        if self.filename is not None:
            return self.filename
        if self.learner.run_dir is None:
            raise ValueError("FileLogger() needs a filename, or Learner(run_dir=...) to write run_dir/train.log.")
        return os.path.join(self.learner.run_dir, "train.log")

    def _attach(self, console: bool) -> None:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        to_file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        to_file.setFormatter(logging.Formatter(FILE_FORMAT))
        self._handlers = [to_file]
        if console:
            to_console = _Console()
            to_console.addFilter(lambda record: not getattr(record, "file_only", False))
            self._handlers.append(to_console)
        for handler in self._handlers:
            logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            self._previous_level = logger.level
            logger.setLevel(logging.INFO)

    def _detach(self) -> None:
        for handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()
        self._handlers = []
        if self._previous_level is not None:
            logger.setLevel(self._previous_level)
            self._previous_level = None
