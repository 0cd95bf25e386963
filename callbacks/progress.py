"""`ProgressBar`: a tqdm bar per epoch (verbose=1) or one line per epoch (verbose=2, or no terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from tqdm.auto import tqdm

from fitorch import Callback
from fitorch.checks import check_number


def format_logs(logs: Mapping[str, Any]) -> str:
    """Keras-style `loss: 0.1234 - accuracy: 0.9512` from a logs mapping."""
    return " - ".join(
        f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}" for key, value in logs.items()
    )


class ProgressBar(Callback):
    """Shows training progress on the main process; the learner adds one unless you pass your own.

    With the learner's `verbose=1`, one tqdm bar per epoch with the running loss and metrics
    (read only when the bar redraws, so the device is not synced every step) and the validation
    values at the end; with `verbose=2`, one line per epoch; with `verbose=0`, nothing.
    `evaluate` and `predict` get a bar too when `verbose=1`.

    Where no terminal shows the bar (output piped to a file, CI and cluster logs), `verbose=1` writes
    one line per epoch instead of redrawing a bar (as Keras does): a log gets one line an epoch, not a
    redraw every fraction of a second. Jupyter keeps its bar.

    Args:
        file: where to write. By default the bar goes to standard error (as tqdm) and the
            one-line-per-epoch output to standard output (as Keras).
        refresh_seconds: at least this long between two redraws of the running values.
    """

    def __init__(self, file: IO[str] | None = None, refresh_seconds: float = 0.25) -> None:
        self.file = file
        self.refresh_seconds = check_number(refresh_seconds, "refresh_seconds", minimum=0, owner="ProgressBar")
        self._bar: tqdm | None = None
        self._last_refresh = 0.0
        self._epoch_started = 0.0

    @property
    def _mode(self) -> int:
        learner = self.learner
        mode = learner.verbose if learner is not None and learner.is_main_process else 0
        return 2 if mode == 1 and not _shows_a_bar(self.file or sys.stderr) else mode

    def _print(self, line: str) -> None:
        print(line, file=self.file or sys.stdout, flush=True)

    def _open(self, description: str) -> None:
        self._bar = tqdm(
            total=self.learner.num_batches,
            desc=description,
            file=self.file or sys.stderr,
            dynamic_ncols=True,
            leave=True,
            unit="batch",
            mininterval=self.refresh_seconds,
        )
        self._last_refresh = time.monotonic()

    def _advance(self, logs: Mapping[str, Any] | None) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if logs is not None and now - self._last_refresh >= self.refresh_seconds:
            self._bar.set_postfix_str(format_logs(logs), refresh=False)  # reading logs syncs the device
            self._last_refresh = now
        self._bar.update(1)

    def _close(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._bar is not None:
            if logs:
                self._bar.set_postfix_str(format_logs(logs), refresh=False)
            self._bar.close()
            self._bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        self._epoch_started = time.monotonic()
        if self._mode == 1:
            self._open(f"Epoch {epoch + 1}/{self.learner.epochs}")

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        self._advance(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._close(logs)
        if self._mode == 2:
            seconds = time.monotonic() - self._epoch_started
            self._print(f"Epoch {epoch + 1}/{self.learner.epochs} - {seconds:.1f}s - {format_logs(logs)}")

    def on_test_begin(self, logs: dict[str, Any]) -> None:
        if self._mode == 1 and not self.learner.fitting:
            self._open("Evaluate")

    def on_test_batch_end(self, batch: int, logs: Any) -> None:
        if not self.learner.fitting:
            self._advance(logs)

    def on_test_end(self, logs: dict[str, Any]) -> None:
        if not self.learner.fitting:
            self._close(logs)
            if self._mode == 2 and self.learner.verbose == 1:  # no terminal for the bar: one line instead
                self._print(f"Evaluate - {format_logs(logs)}")

    def on_predict_begin(self, logs: dict[str, Any]) -> None:
        if self._mode == 1:
            self._open("Predict")

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self._advance(None)

    def on_predict_end(self, logs: dict[str, Any]) -> None:
        self._close()

    def on_exception(self, exception: BaseException) -> None:
        self._close()


def _shows_a_bar(stream: Any) -> bool:
    """Whether `stream` can redraw a bar in place: a terminal, or a Jupyter kernel (tqdm draws a widget)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules
