"""`CSVLogger`: one row per epoch of the logs in a CSV file (`run_dir/metrics.csv` by default)."""

from __future__ import annotations

import csv
import os
from typing import Any

from fitorch import Callback
from fitorch.checks import check_bool, check_path, check_str


class CSVLogger(Callback):
    """Writes the logs of every epoch as a row of a CSV file (main process only).

    The first column is `epoch` (0-based, as in Keras and `History.epoch`), then every log key in
    the order the logs hold them; values are written at full precision, so a row reads back equal
    to `History`. A key that first appears in a later epoch adds a column (earlier rows get an
    empty cell). Each row is written when its epoch ends, so a crash keeps every finished epoch.

    With `append=False` a new fit replaces the file, with `append=True` it adds rows. A fit that
    continues a run (`initial_epoch > 0`, or `resume`) always appends, and drops the rows of the
    epochs it trains again, so a resumed run keeps one row per epoch.

    Args:
        filename: the CSV file; its folder is created when needed.
        separator: the field separator, one character.
        append: keep the rows of an existing file rather than replacing it.

    Raises:
        TypeError: `filename` is not a path, `append` is not a bool.
        ValueError: `separator` is not a single character.

    Example:
        >>> learner.fit(model, train, epochs=5, callbacks=[CSVLogger("runs/exp1/metrics.csv")])  # doctest: +SKIP
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        self.filename = check_path(filename, "filename", owner="CSVLogger")
        if len(check_str(separator, "separator", owner="CSVLogger")) != 1:
            raise ValueError(f"CSVLogger: separator must be one character such as ',' or ';', got {separator!r}.")
        self.separator, self.append = separator, check_bool(append, "append", owner="CSVLogger")
        self.header: list[str] | None = None
        self._continue_from: int | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.header = None
        epoch = self.learner.epoch
        self._continue_from = epoch if epoch > 0 else None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self.learner.is_main_process:
            return
        row = {"epoch": epoch, **logs}
        if self.header is None:
            self._start(row)
        elif any(key not in self.header for key in row):
            header, rows = self._read()
            self._write(header + [key for key in row if key not in header], [*rows, row])
        else:
            self._append_row(row)

    def _start(self, row: dict[str, Any]) -> None:
        header, rows = ["epoch"], []
        appending = self.append or self._continue_from is not None
        if appending and os.path.exists(self.filename):
            header, rows = self._read()
            if self._continue_from is not None:  # those epochs are trained again: their new rows replace them
                rows = [old for old in rows if not _epoch_at_least(old, self._continue_from)]
        self._write(header + [key for key in row if key not in header], [*rows, row])

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.filename, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file, delimiter=self.separator)
            rows = list(reader)
            return list(reader.fieldnames or ["epoch"]), rows

    def _write(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        folder = os.path.dirname(self.filename)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(self.filename, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, header, restval="", delimiter=self.separator)
            writer.writeheader()
            writer.writerows(rows)
        self.header = header

    def _append_row(self, row: dict[str, Any]) -> None:
        with open(self.filename, "a", newline="", encoding="utf-8") as file:
            csv.DictWriter(file, self.header, restval="", delimiter=self.separator).writerow(row)


def _epoch_at_least(row: dict[str, str], epoch: int) -> bool:
    try:
        return int(row.get("epoch", "")) >= epoch
    except ValueError:  # a row this logger did not write; keep it
        return False
