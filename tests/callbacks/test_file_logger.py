"""FileLogger and the run_dir defaults: train.log, metrics.csv and History agree; no run_dir, no files."""

from __future__ import annotations

import csv
import json
import logging
import re
import tempfile

import pytest

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import CSVLogger, EarlyStopping, FileLogger, TensorBoard

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO epoch (\d+)/(\d+) - (.*)$")


def fit(learner, epochs=3, callbacks=(), **fit_options):
    x, y = make_classification(n=32)
    return learner.fit(
        make_mlp(),
        (x[:24], y[:24]),
        epochs=epochs,
        batch_size=8,
        validation_data=(x[24:], y[24:]),
        callbacks=list(callbacks),
        **fit_options,
    )


def epoch_lines(path):
    lines = [LINE.match(line) for line in path.read_text().splitlines()]
    return [(int(m[1]), dict(part.split(": ") for part in m[3].split(" - "))) for m in lines if m]


def test_run_dir_writes_train_log_metrics_csv_and_tensorboard_that_agree(tmp_path):
    learner = Learner(
        loss="cross_entropy",
        optimizer="sgd",
        lr=0.1,
        metrics=["accuracy"],
        verbose=0,
        run_dir=tmp_path / "run",
        hparams={"width": 16, "depth": 2},
    )
    history = fit(learner, hparams={"depth": 3})
    run = tmp_path / "run"
    assert {path.name for path in run.iterdir()} == {"train.log", "metrics.csv", "tensorboard", "checkpoints"}
    assert {path.name for path in (run / "checkpoints").iterdir()} == {"best", "last"}
    assert {path.name for path in (run / "tensorboard").iterdir()} == {"train", "validation"}

    lines = epoch_lines(run / "train.log")
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [number for number, _ in lines] == [1, 2, 3] and len(rows) == 3
    for epoch, ((_, logged), row) in enumerate(zip(lines, rows)):
        assert list(logged) == list(history.history) == list(row)[1:]
        for key, values in history.history.items():
            assert float(row[key]) == values[epoch]
            assert float(logged[key]) == pytest.approx(values[epoch], rel=1e-5)

    text = (run / "train.log").read_text()
    config = json.loads(re.search(r"INFO config: (.*)", text)[1])
    assert config["hparams"] == {"width": 16, "depth": 3} == learner.run_hparams  # fit's override the learner's
    assert config["loss"] == "cross_entropy" and config["optimizer"] == "sgd" and config["epochs"] == 3
    assert "fit ended after epoch 3" in text


def test_a_callback_of_the_same_kind_replaces_the_default(tmp_path):
    learner = Learner(loss="cross_entropy", verbose=0, run_dir=tmp_path / "run")
    fit(learner, epochs=1, callbacks=[CSVLogger(tmp_path / "mine.csv"), TensorBoard(tmp_path / "tb")])
    assert {path.name for path in (tmp_path / "run").iterdir()} == {"train.log", "checkpoints"}
    assert (tmp_path / "mine.csv").exists() and (tmp_path / "tb" / "train").exists()


def test_without_run_dir_nothing_is_written(tmp_path, monkeypatch):
    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0)
    fit(learner, epochs=2, callbacks=[EarlyStopping(patience=5)])
    learner.evaluate(make_mlp(), make_classification(n=8))
    assert list(work.iterdir()) == [] and list(scratch.iterdir()) == []


def test_a_failing_fit_is_recorded_and_the_handlers_are_removed(tmp_path):
    class Boom(Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("boom")

    fitorch_logger = logging.getLogger("fitorch")
    handlers, level = list(fitorch_logger.handlers), fitorch_logger.level
    learner = Learner(loss="cross_entropy", verbose=0)
    with pytest.raises(RuntimeError, match="boom"):
        fit(learner, callbacks=[FileLogger(tmp_path / "logs" / "x.log"), Boom()])
    text = (tmp_path / "logs" / "x.log").read_text()
    assert "ERROR fit failed: RuntimeError('boom')" in text and "Traceback" in text
    assert fitorch_logger.handlers == handlers and fitorch_logger.level == level


def test_console_gets_messages_but_not_epoch_lines(tmp_path, monkeypatch, capsys):
    # Logging that nobody configured: the fitorch logger has no handler on the way to the root.
    monkeypatch.setattr(logging.getLogger("fitorch"), "propagate", False)

    class Message(Callback):
        def on_epoch_end(self, epoch, logs):
            logging.getLogger("fitorch").info("a message for the console")

    learner = Learner(loss="cross_entropy", verbose=2)
    fit(learner, epochs=1, callbacks=[FileLogger(tmp_path / "train.log"), Message()])
    err = capsys.readouterr().err
    assert err.count("a message for the console") == 1
    assert "config:" not in err and "INFO epoch" not in err
    assert "a message for the console" in (tmp_path / "train.log").read_text()


def test_file_logger_without_filename_or_run_dir_fails_clearly():
    with pytest.raises(ValueError, match=r"FileLogger\(\) needs a filename, or Learner\(run_dir=...\)"):
        fit(Learner(loss="cross_entropy", verbose=0), epochs=1, callbacks=[FileLogger()])
    with pytest.raises(TypeError, match=r"filename must be a path \(str or os.PathLike\) or None, got 3"):
        FileLogger(3)


def test_fit_hparams_must_be_a_mapping():
    with pytest.raises(TypeError, match="hparams must be a mapping of names to values, got list"):
        fit(Learner(loss="cross_entropy", verbose=0), epochs=1, hparams=[1, 2])
