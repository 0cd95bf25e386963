"""Keras's csv_logger_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import csv
import math
import re

import torch
from torch import nn

from fitorch import Learner
from fitorch.callbacks import CSVLogger, TerminateOnNaN
from keras_conformance.helpers import dense, keras_data, one_hot, ports

FILE = "csv_logger_test.py::CSVLoggerTest::"
SEP = "\t"


def regression_data():
    generator = torch.Generator().manual_seed(1337)
    return [(torch.rand(10, 3, generator=generator), torch.rand(10, 1, generator=generator)) for _ in range(2)]


def fit(model, callbacks, epochs=1, **options):
    """Keras's set-up: 10 samples of 3 features, batches of 4, mse with an mse metric, SGD."""
    train, test = regression_data()
    learner = Learner(loss="mse", optimizer="sgd", lr=0.01, metrics=["mse"], verbose=0)
    return learner.fit(model, train, epochs=epochs, batch_size=4, validation_data=test, callbacks=callbacks, **options)


def make_model():
    return dense(3, 2, 1, activation=nn.ReLU, seed=1337)


@ports(FILE + "test_CSVLogger (case 1)")
def test_a_new_file_with_the_separator(tmp_path):
    path = tmp_path / "log.tsv"
    fit(make_model(), [CSVLogger(path, separator=SEP)])
    assert csv.Sniffer().sniff(path.read_text()).delimiter == SEP


@ports(FILE + "test_CSVLogger (case 2)", "different")
@ports(FILE + "test_CSVLogger (case 3)", "different")
def test_appending_to_a_file_and_reusing_the_logger_keep_one_header(tmp_path):
    path = tmp_path / "log.tsv"
    fit(make_model(), [CSVLogger(path, separator=SEP)])
    model, logger = make_model(), CSVLogger(path, separator=SEP, append=True)
    fit(model, [logger])  # case 2: a new fit appends below the first one's row
    fit(model, [logger], epochs=2)  # case 3: the same logger in a second fit
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and len(re.findall("epoch", " ".join(lines))) == 1
    # fitorch logs the learning rate of every epoch: one more column than Keras's 4 separators.
    assert all(line.count(SEP) == 5 for line in lines)
    assert lines[0].split(SEP) == ["epoch", "loss", "mse", "val_loss", "val_mse", "lr"]


@ports(FILE + "test_CSVLogger (case 3b)", "different")
def test_validation_values_are_registered_at_the_validation_frequency(tmp_path):
    path = tmp_path / "log.tsv"
    history = fit(make_model(), [CSVLogger(path, separator=SEP)], epochs=5, validation_freq=3)
    rows = list(csv.DictReader(path.open(), delimiter=SEP))
    assert len(rows) == 5 and all("val_loss" in row for row in rows)
    assert float(rows[2]["val_loss"]) == history.history["val_loss"][0]
    assert all(row["val_loss"] == "" for index, row in enumerate(rows) if index != 2)  # Keras writes "NA"


@ports(FILE + "test_stop_training_csv")
def test_stop_training_csv(tmp_path):
    path = tmp_path / "csv_logger.csv"
    (x_train, y_train), (x_test, y_test) = keras_data(10, 10, 3, 2)
    model = dense(3, 2, 2, 2, 2, 2, 2, activation=nn.ReLU)
    with torch.no_grad():
        for layer in list(model)[:-1]:
            if isinstance(layer, nn.Linear):
                layer.weight.fill_(1e5)  # Keras's Constant(1e5) kernels: the loss overflows at once
    learner = Learner(loss="mse", optimizer="sgd", lr=0.01, verbose=0)
    history = learner.fit(
        model,
        (x_train, one_hot(y_train, 2)),
        epochs=20,
        batch_size=4,
        validation_data=(x_test, one_hot(y_test, 2)),
        callbacks=[TerminateOnNaN(), CSVLogger(path)],
    )
    loss = history.history["loss"]
    assert len(loss) == 1 and (math.isnan(loss[0]) or math.isinf(loss[0]))
    values = [row for row in csv.reader(path.open()) if row]
    assert "nan" in values[-1], values
