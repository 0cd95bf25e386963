"""Keras's reduce_lr_on_plateau_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import logging

import pytest
from torch.optim import lr_scheduler

from fitorch import Learner
from fitorch.callbacks import LRScheduler, ReduceLROnPlateau
from keras_conformance.helpers import dense, keras_data, one_hot, ports

FILE = "reduce_lr_on_plateau_test.py::ReduceLROnPlateauTest::"


def fit(*callbacks, epochs):
    """Keras's set-up: 10 samples of 3 features, one-hot targets of 2 classes, mse, Adam(0.1), one batch."""
    (x_train, y_train), (x_test, y_test) = keras_data(10, 10, 3, 2)
    learner = Learner(loss="mse", optimizer="adam", lr=0.1, verbose=0)
    learner.fit(
        dense(3, 5, 2),
        (x_train, one_hot(y_train, 2)),
        epochs=epochs,
        validation_data=(x_test, one_hot(y_test, 2)),
        callbacks=list(callbacks),
    )
    return learner


def rate(learner):
    return learner.optimizer.param_groups[0]["lr"]


@ports(FILE + "test_reduces_lr_with_model_fit")
def test_reduces_lr_with_model_fit():
    learner = fit(ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100), epochs=2)
    assert rate(learner) == pytest.approx(0.01)


@ports(FILE + "test_throws_when_optimizer_has_schedule", "different")
def test_a_schedule_and_a_plateau_compose_instead_of_failing():
    # Keras refuses a plateau on an optimizer whose rate is a schedule; fitorch's schedules live in
    # LRScheduler, and a reduction scales the rest of the schedule (docs/migrating.md).
    decay = LRScheduler(lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=10, power=1.0), interval="step")
    learner = fit(decay, ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100), epochs=2)
    # One step an epoch: the second (last) step trained at 0.1 * (1 - 1/10), which stays after the fit;
    # the plateau reduced it 10-fold at the end of the second epoch.
    assert rate(learner) == pytest.approx(0.1 * 0.9 * 0.1)


@ports(FILE + "test_verbose_logging", "different")
def test_a_reduction_is_always_logged_and_there_is_no_verbose(caplog):
    with pytest.raises(TypeError, match="verbose"):
        ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100, verbose=1)
    with caplog.at_level(logging.INFO, logger="fitorch"):
        fit(ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100), epochs=2)
    assert "ReduceLROnPlateau reducing learning rate to 0.01" in caplog.text


@ports(FILE + "test_honors_min_lr")
def test_honors_min_lr():
    plateau = ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=10, min_lr=0.005)
    assert rate(fit(plateau, epochs=4)) == 0.005


@ports(FILE + "test_cooldown")
def test_cooldown():
    plateau = ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss", min_delta=100, cooldown=2)
    # A reduction at most every other epoch: two in four epochs.
    assert rate(fit(plateau, epochs=4)) == pytest.approx(0.001)


@ports(FILE + "test_state_reset_across_fit_calls")
def test_state_reset_across_fit_calls():
    plateau = ReduceLROnPlateau(patience=1, factor=0.1, monitor="loss", min_delta=0, cooldown=2)
    plateau.set_learner(Learner(loss="mse", verbose=0))
    plateau.on_train_begin({})
    plateau.monitored.best = 0.5  # `best` is read-only in fitorch: the Monitor holds it
    plateau.wait, plateau.cooldown_counter = 3, 2
    plateau.on_train_begin({})
    assert plateau.best is None
    assert (plateau.wait, plateau.cooldown_counter) == (0, 0)
