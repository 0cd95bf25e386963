"""Keras's terminate_on_nan_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from fitorch import Callback, Learner
from fitorch.callbacks import BackupAndRestore, TerminateOnNaN
from keras_conformance.helpers import dense, keras_data, one_hot, ports

FILE = "terminate_on_nan_test.py::TerminateOnNaNTest::"


def exploding_model() -> nn.Sequential:
    """Keras's five Dense(2, relu) with every kernel weight 1e5, then Dense(2): the loss overflows at once."""
    model = dense(3, 2, 2, 2, 2, 2, 2, activation=nn.ReLU)
    with torch.no_grad():
        for layer in list(model)[:-1]:
            if isinstance(layer, nn.Linear):
                layer.weight.fill_(1e5)
                layer.bias.zero_()
    return model


def one_unit(x, y, callbacks, epochs=1, batch_size=1):
    """Keras's Sequential([Dense(1)]) with SGD and mse on the given points."""
    learner = Learner(loss="mse", optimizer="sgd", lr=0.01, verbose=0)
    inputs, targets = torch.tensor(x), torch.tensor(y)
    return learner.fit(dense(1, 1), (inputs, targets), epochs=epochs, batch_size=batch_size, callbacks=callbacks)


@ports(FILE + "test_TerminateOnNaN")
def test_terminate_on_nan():
    (x_train, y_train), (x_test, y_test) = keras_data(10, 10, 3, 2)
    learner = Learner(loss="mse", optimizer="sgd", lr=0.01, verbose=0)
    history = learner.fit(
        exploding_model(),
        (x_train, one_hot(y_train, 2)),
        epochs=20,
        batch_size=4,
        validation_data=(x_test, one_hot(y_test, 2)),
        callbacks=[TerminateOnNaN()],
    )
    loss = history.history["loss"]
    assert len(loss) == 1
    assert math.isnan(loss[0]) or math.isinf(loss[0])


@ports(FILE + "test_terminate_on_nan_graceful_stop")
def test_terminate_on_nan_graceful_stop():
    history = one_unit([[1.0], [2.0]], [[math.inf], [math.inf]], [TerminateOnNaN(raise_error=False)], epochs=2)
    assert len(history.history["loss"]) < 4


@ports(FILE + "test_terminate_on_nan_raise_error_raises_error")
def test_terminate_on_nan_raise_error_raises_error():
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered"):
        one_unit([[1.0], [2.0]], [[math.inf], [math.inf]], [TerminateOnNaN(raise_error=True)])


class Tracking(Callback):
    def __init__(self) -> None:
        self.train_end_called, self.exception = False, None

    def on_train_end(self, logs):
        self.train_end_called, self.exception = True, self.learner.exception


@ports(FILE + "test_raise_error_terminate_does_not_trigger_on_train_end", "different")
def test_raise_error_still_runs_on_train_end_with_the_failure_in_view():
    # fitorch runs on_train_end in a `finally`, as after any failure, with learner.exception set, so
    # callbacks can clean up and see why (docs/migrating.md); Keras skips on_train_end.
    tracking = Tracking()
    with pytest.raises(RuntimeError):
        one_unit([[1.0]], [[math.inf]], [tracking, TerminateOnNaN(raise_error=True)])
    assert tracking.train_end_called
    assert isinstance(tracking.exception, RuntimeError)


@ports(FILE + "test_raise_error_terminate_preserves_backup")
def test_raise_error_terminate_preserves_backup(tmp_path):
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    fake_file = backup_dir / "checkpoint.txt"
    fake_file.write_text("dummy checkpoint")
    # No need to disable BackupAndRestore's clean-up as the Keras test does: after a failure it keeps the backup.
    with pytest.raises(RuntimeError):
        one_unit([[1.0]], [[math.inf]], [BackupAndRestore(backup_dir), TerminateOnNaN(raise_error=True)])
    assert os.path.exists(backup_dir) and fake_file.read_text() == "dummy checkpoint"


@ports(FILE + "test_normal_training_does_not_raise[raise_error_false]")
def test_normal_training_does_not_raise_when_stopping():
    history = one_unit([[1.0], [2.0]], [[1.0], [2.0]], [TerminateOnNaN(raise_error=False)], epochs=2, batch_size=32)
    assert len(history.history["loss"]) == 2


@ports(FILE + "test_normal_training_does_not_raise[raise_error_true]")
def test_normal_training_does_not_raise_when_raising():
    history = one_unit([[1.0], [2.0]], [[1.0], [2.0]], [TerminateOnNaN(raise_error=True)], epochs=2, batch_size=32)
    assert len(history.history["loss"]) == 2


@ports(FILE + "test_raise_error_terminate_stops_on_later_batch")
def test_raise_error_terminate_stops_on_later_batch():
    with pytest.raises(RuntimeError) as raised:
        one_unit([[1.0], [2.0]], [[1.0], [math.inf]], [TerminateOnNaN(raise_error=True)])
    assert any(f"batch {i}" in str(raised.value) for i in (0, 1))
