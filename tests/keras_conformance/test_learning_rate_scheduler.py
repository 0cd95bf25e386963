"""Keras's learning_rate_scheduler_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import logging

import pytest

from fitorch import Learner
from fitorch.callbacks import LearningRateScheduler, LRScheduler
from keras_conformance.helpers import dense, keras_data, one_hot, ports

FILE = "learning_rate_scheduler_test.py::LearningRateSchedulerTest::"


def fit(*callbacks, epochs, optimizer="sgd", lr=0.01):
    """Keras's set-up: 10 samples of 3 features, one-hot targets of 2 classes, mse, SGD (Keras's rate 0.01)."""
    (x_train, y_train), _ = keras_data(10, 10, 3, 2)
    learner = Learner(loss="mse", optimizer=optimizer, lr=lr, verbose=0)
    history = learner.fit(dense(3, 5, 2), (x_train, one_hot(y_train, 2)), epochs=epochs, callbacks=list(callbacks))
    return learner, history


def rate(learner):
    return learner.optimizer.param_groups[0]["lr"]


@ports(FILE + "test_updates_learning_rate")
def test_updates_learning_rate():
    learner, _ = fit(LearningRateScheduler(lambda step: 1.0 / (2.0 + step), verbose=1), epochs=1)
    assert rate(learner) == 0.5


@ports(FILE + "test_verbose_logging")
def test_verbose_logging(caplog):
    with caplog.at_level(logging.INFO, logger="fitorch"):
        fit(LearningRateScheduler(lambda step: 1.0 / (1.0 + step), verbose=1), epochs=1)
    assert "LearningRateScheduler setting learning rate to 1.0" in caplog.text


@ports(FILE + "test_schedule_dependent_on_previous_learning_rate")
def test_schedule_dependent_on_previous_learning_rate():
    learner, _ = fit(LearningRateScheduler(lambda step, lr: lr / 2), epochs=2, optimizer="adam", lr=0.03)
    assert rate(learner) == 0.03 / 4.0


@ports(FILE + "test_throws_when_optimizer_has_schedule", "different")
def test_a_second_schedule_is_refused_at_the_start_of_fit():
    # A torch optimizer has no schedule of its own; the one place a schedule lives is an LRScheduler,
    # and two schedules in one fit are refused before training, with a ValueError (Keras: TypeError).
    with pytest.raises(ValueError, match="Two learning-rate schedules in one fit"):
        fit(LRScheduler("linear", interval="step"), LearningRateScheduler(lambda step, lr: lr / 2), epochs=2)


@ports(FILE + "test_learning_rate_in_history")
def test_learning_rate_in_history():
    _, history = fit(LearningRateScheduler(lambda step, lr: 0.5), epochs=1)
    assert "learning_rate" in history.history
    assert type(history.history["learning_rate"][0]) is float
    assert history.history["learning_rate"][0] == 0.5
