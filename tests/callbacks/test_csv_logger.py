"""CSVLogger: one row per epoch equal to History, appending, continuing a run, new columns."""

from __future__ import annotations

import csv

import pytest

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import CSVLogger


def read(path, separator=","):
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter=separator))


def fit(logger, epochs=3, initial_epoch=0, extra=()):
    x, y = make_classification(n=32)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, metrics=["accuracy"], verbose=0)
    return learner.fit(
        make_mlp(),
        (x[:24], y[:24]),
        epochs=epochs,
        initial_epoch=initial_epoch,
        batch_size=8,
        validation_data=(x[24:], y[24:]),
        callbacks=[*extra, logger],
    )


def test_rows_equal_history_at_full_precision(tmp_path):
    path = tmp_path / "deep" / "metrics.csv"
    history = fit(CSVLogger(path, separator=";"))
    rows = read(path, ";")
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert [int(row["epoch"]) for row in rows] == history.epoch == [0, 1, 2]
    for key, values in history.history.items():
        assert [float(row[key]) for row in rows] == values


def test_append_false_replaces_append_true_adds(tmp_path):
    path = tmp_path / "metrics.csv"
    fit(CSVLogger(path), epochs=2)
    fit(CSVLogger(path), epochs=2)
    assert [row["epoch"] for row in read(path)] == ["0", "1"]
    fit(CSVLogger(path, append=True), epochs=2)
    assert [row["epoch"] for row in read(path)] == ["0", "1", "0", "1"]


def test_a_continued_run_replaces_the_rows_of_epochs_it_trains_again(tmp_path):
    path = tmp_path / "metrics.csv"
    fit(CSVLogger(path), epochs=3)  # epochs 0, 1, 2; say the run is resumed after epoch 1
    history = fit(CSVLogger(path), epochs=4, initial_epoch=2)
    rows = read(path)
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    assert [float(row["loss"]) for row in rows[2:]] == history.history["loss"]


def test_a_key_that_appears_later_adds_a_column(tmp_path):
    class LateKey(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                logs["late"] = 7.5

    path = tmp_path / "metrics.csv"
    fit(CSVLogger(path), epochs=3, extra=[LateKey()])
    rows = read(path)
    assert [row["late"] for row in rows] == ["", "7.5", ""]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"filename": 3}, TypeError, r"filename must be a path \(str or os.PathLike\), got 3"),
        ({"filename": "m.csv", "separator": ";;"}, ValueError, "separator must be one character"),
        ({"filename": "m.csv", "append": "yes"}, TypeError, "append must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        CSVLogger(**kwargs)
