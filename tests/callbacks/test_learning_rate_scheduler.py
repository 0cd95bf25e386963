"""LearningRateScheduler: Keras's schedule functions set the rate they return; groups, composition, resume."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import Script, make_classification, make_mlp
from fitorch import Learner
from fitorch.callbacks import LearningRateScheduler, LRScheduler, ModelCheckpoint, ReduceLROnPlateau


def fit(schedule, epochs=3, lr=0.1, optimizer="sgd", extra=(), **options):
    x, y = make_classification(n=16)
    learner = Learner(loss="cross_entropy", optimizer=optimizer, lr=lr, verbose=0, seed=0)
    return learner.fit(make_mlp(), (x, y), epochs=epochs, batch_size=4, callbacks=[schedule, *extra], **options)


def test_a_two_argument_function_gets_the_current_rate_and_sets_what_it_returns():
    history = fit(LearningRateScheduler(lambda epoch, lr: lr / 2), lr=0.03)
    assert history.history["lr"] == [0.015, 0.0075, 0.00375]


def test_a_one_argument_function_sets_the_rate_of_the_epoch():
    history = fit(LearningRateScheduler(lambda epoch: 1.0 / (2.0 + epoch)))
    assert history.history["lr"] == [0.5, 1 / 3, 0.25]  # the rate itself, not a factor of the base rate 0.1


def test_learning_rate_is_logged_as_keras_names_it():
    history = fit(LearningRateScheduler(lambda epoch, lr: 0.5), epochs=2)
    assert history.history["learning_rate"] == history.history["lr"] == [0.5, 0.5]


def test_parameter_groups_each_get_their_rate_or_keep_their_ratio():
    def two_groups(model):
        return torch.optim.SGD(
            [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters()}], lr=0.01
        )

    halved = fit(LearningRateScheduler(lambda epoch, lr: lr / 2), optimizer=two_groups, epochs=2)
    assert (halved.history["lr"], halved.history["lr_1"]) == ([0.05, 0.025], [0.005, 0.0025])
    fixed = fit(LearningRateScheduler(lambda epoch: 0.2), optimizer=two_groups, epochs=2)
    assert (fixed.history["lr"], fixed.history["lr_1"]) == ([0.2, 0.2], [pytest.approx(0.02)] * 2)


def test_a_plateau_reduction_is_applied_on_top_of_the_returned_rate():
    schedule = LearningRateScheduler(lambda epoch: 0.1)  # in Keras this would overwrite every reduction
    plateau = ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5)
    history = fit(schedule, epochs=4, extra=[Script("val_loss", [1.0] * 4), plateau])
    assert history.history["lr"] == [0.1, 0.1, 0.05, 0.025]


def test_a_resume_inside_an_epoch_does_not_call_the_function_twice_for_that_epoch(tmp_path):
    calls = []

    def schedule(epoch, lr):
        calls.append(epoch)
        return lr / 2

    straight = fit(LearningRateScheduler(schedule), epochs=3)
    fit(LearningRateScheduler(schedule), epochs=3, extra=[ModelCheckpoint(tmp_path / "s{step}", save_freq=6)])
    calls.clear()
    resumed = fit(LearningRateScheduler(schedule), epochs=3, resume=tmp_path / "s6")  # epoch 1, batch 2 of 4
    assert calls == [2] and resumed.history["lr"] == straight.history["lr"]


def test_verbose_logs_each_rate_as_keras_prints_it(caplog):
    with caplog.at_level(logging.INFO, logger="fitorch"):
        fit(LearningRateScheduler(lambda epoch: 1.0 / (1.0 + epoch), verbose=1), epochs=2)
    assert "Epoch 1: LearningRateScheduler setting learning rate to 1.0." in caplog.text
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.5." in caplog.text


@pytest.mark.parametrize(
    ("schedule", "error", "message"),
    [
        (lambda epoch: "fast", TypeError, "the rate schedule returned for epoch 0 must be a number >= 0, got 'fast'"),
        (lambda epoch: -0.1, ValueError, "the rate schedule returned for epoch 0 must be a number >= 0, got -0.1"),
        (lambda epoch: float("nan"), ValueError, "must be finite"),
    ],
)
def test_a_bad_rate_fails_naming_the_epoch(schedule, error, message):
    with pytest.raises(error, match=message):
        fit(LearningRateScheduler(schedule))


def test_not_a_function_fails_at_construction_and_lrscheduler_points_two_argument_functions_here():
    with pytest.raises(TypeError, match="schedule must be a function \\(epoch, lr\\) -> rate or epoch -> rate, got 3"):
        LearningRateScheduler(3)
    with pytest.raises(TypeError, match="LearningRateScheduler"):
        LRScheduler(lambda epoch, lr: lr)
