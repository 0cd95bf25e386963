"""Keras's early_stopping_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Script
from fitorch import Learner
from fitorch.callbacks import EarlyStopping
from keras_conformance.helpers import dense, ports

FILE = "early_stopping_test.py::EarlyStoppingTest::"


def regression(samples=10, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.random((samples, features)), dtype=torch.float32)
    return x, torch.tensor(rng.random((samples, 1)), dtype=torch.float32)


def relu_model(features=5):
    return nn.Sequential(*dense(features, 1, 1, activation=nn.ReLU), nn.ReLU())  # two Dense(1, activation="relu")


def attached(callback, model=None):
    """A callback driven by hand, as the Keras tests drive theirs, attached to a learner holding `model`."""
    learner = Learner(loss="mse", verbose=0)
    learner.model = model
    callback.set_learner(learner)
    return callback, learner


@ports(FILE + "test_early_stopping")
def test_early_stopping_infers_each_mode_and_refuses_an_unknown_monitor():
    x, y = regression()
    learner = Learner(loss="mae", optimizer="adam", metrics=["mse"], verbose=0)
    # Keras logs acc, accuracy, hinge and f1_score from its metrics; here a callback writes them.
    extra = [Script(key, [0.5] * 2) for key in ("acc", "val_accuracy", "hinge", "f1_score")]
    cases = [
        ("max", "val_mse", "max"),
        ("min", "val_loss", "min"),
        ("auto", "val_mse", "min"),
        ("auto", "loss", "min"),
        ("auto", "acc", "max"),
        ("auto", "val_accuracy", "max"),
        ("auto", "hinge", "min"),
        ("auto", "f1_score", "max"),
    ]
    for mode, monitor, expected in cases:
        stopper = EarlyStopping(patience=0, monitor=monitor, mode=mode)
        learner.fit(relu_model(), (x, y), epochs=2, batch_size=5, validation_data=(x, y), callbacks=[*extra, stopper])
        assert stopper.mode == expected
    with pytest.raises(ValueError):
        stopper = EarlyStopping(patience=0, monitor="unknown")
        learner.fit(relu_model(), (x, y), epochs=2, batch_size=5, validation_data=(x, y), callbacks=[stopper])


@ports(FILE + "test_early_stopping_patience")
def test_early_stopping_patience():
    losses = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]
    for patience in (0, 1, 2, 3):
        stopper, learner = attached(EarlyStopping(monitor="loss", patience=patience))
        stopper.on_train_begin({})
        for epoch, loss in enumerate(losses):
            stopper.on_epoch_end(epoch, {"loss": loss})
            if learner.stop_training:
                break
        assert stopper.stopped_epoch == max(patience, 1) + 2


@ports(FILE + "test_early_stopping_reuse")
def test_early_stopping_reuse():
    rng = np.random.default_rng(0)
    data = torch.tensor(rng.random((100, 1)), dtype=torch.float32)
    labels = (data > 0.5).float()
    model = relu_model(features=1)
    learner = Learner(loss="mae", optimizer="sgd", lr=0.01, metrics=["mse"], verbose=0)
    stopper = EarlyStopping(monitor="mse", patience=3)
    first = learner.fit(model, (data, labels), epochs=20, callbacks=[stopper])
    assert len(first.epoch) >= 3
    second = learner.fit(model, (data, labels), epochs=20, callbacks=[stopper])
    assert len(second.epoch) >= 3


@ports(FILE + "test_state_reset_across_fit_calls")
def test_state_reset_across_fit_calls():
    stopper, _ = attached(EarlyStopping(monitor="loss", patience=3), model=nn.Linear(1, 1))
    stopper.on_train_begin({})
    stopper.monitored.best = 0.1  # `best` is read-only in fitorch: the Monitor holds it
    stopper.wait, stopper.stopped_epoch, stopper.best_epoch = 3, 5, 5
    stopper.best_weights = {"weight": torch.zeros(1, 1)}
    stopper.on_train_begin({})
    assert stopper.best is None
    assert (stopper.wait, stopper.stopped_epoch, stopper.best_epoch) == (0, 0, 0)
    assert stopper.best_weights is None


@ports(FILE + "test_early_stopping_with_baseline")
def test_early_stopping_with_baseline():
    x, y = regression()
    learner = Learner(loss="mae", optimizer="sgd", lr=0.01, metrics=["mse"], verbose=0)
    stopper = EarlyStopping(monitor="mse", patience=3, baseline=0.6)
    history = learner.fit(relu_model(), (x, y), epochs=20, callbacks=[stopper])
    assert len(history.epoch) >= 3


def run_by_hand(stopper, model, losses, stop_at=None):
    """Set the weight to the epoch index, end the epoch with `losses[epoch]`, as the Keras test's DummyModel does."""
    stopper, learner = attached(stopper, model)
    stopper.on_train_begin({})
    trained = 0
    for epoch, loss in enumerate(losses):
        trained += 1
        with torch.no_grad():
            model.weight.fill_(epoch)
        stopper.on_epoch_end(epoch, {"val_loss": loss})
        if epoch == stop_at:
            learner.stop_training = True  # another callback asks to stop
        if learner.stop_training:
            break
    stopper.on_train_end({})
    return trained, model.weight.item()


@ports(FILE + "test_early_stopping_final_weights_when_restoring_model_weights")
def test_early_stopping_final_weights_when_restoring_model_weights():
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    _, weight = run_by_hand(stopper, nn.Linear(1, 1, bias=False), [0.2, 0.15, 0.1, 0.11, 0.12])
    assert weight == 2  # the best epoch

    # No epoch beats the baseline: 5 epochs, and the weights of the best one.
    stopper = EarlyStopping(monitor="val_loss", patience=5, baseline=0.5, restore_best_weights=True)
    trained, weight = run_by_hand(stopper, nn.Linear(1, 1, bias=False), [0.9, 0.8, 0.7, 0.71, 0.72, 0.73])
    assert (trained, weight) == (5, 2)

    # Another callback stops the fit: the best weights are restored all the same.
    stopper = EarlyStopping(monitor="val_loss", patience=5, baseline=0.5, restore_best_weights=True)
    trained, weight = run_by_hand(stopper, nn.Linear(1, 1, bias=False), [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], stop_at=3)
    assert (trained, weight) == (4, 2)


@ports(FILE + "test_early_stopping_with_start_from_epoch")
def test_early_stopping_with_start_from_epoch():
    x, y = regression()
    learner = Learner(loss="mae", optimizer="sgd", lr=0.01, metrics=["mse"], verbose=0)
    stopper = EarlyStopping(monitor="mse", patience=3, start_from_epoch=2)
    history = learner.fit(relu_model(), (x, y), epochs=20, callbacks=[stopper])
    assert len(history.epoch) >= 3 + 2
    stopper = EarlyStopping(monitor="mse", patience=0, start_from_epoch=2)
    history = learner.fit(relu_model(), (x, y), epochs=20, callbacks=[stopper])
    assert len(history.epoch) >= 2
