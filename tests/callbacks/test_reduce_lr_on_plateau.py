"""ReduceLROnPlateau: decides as Keras does (patience, cooldown, min_lr), in both directions and across a resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import Script, make_classification, make_mlp
from fitorch import Learner
from fitorch.callbacks import ReduceLROnPlateau

VAL_LOSS = [1.0, 0.9, 0.9, 0.95, 0.9, 0.85, 0.86, 0.849, 0.87, 0.88, 0.84, 0.9, 0.9, 0.9]
VAL_ACCURACY = [0.5, 0.6, 0.6, 0.605, 0.6, 0.65, 0.655, 0.7, 0.7, 0.69, 0.705, 0.709, 0.6, 0.6]
SETTINGS = {"factor": 0.5, "patience": 2, "min_delta": 0.01, "cooldown": 1, "min_lr": 0.004}
RATES = (0.1, 0.01)  # two parameter groups


def two_groups(model):
    return torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": RATES[0]}, {"params": model[2].parameters(), "lr": RATES[1]}]
    )


def keras_rates(values, mode, factor, patience, min_delta, cooldown, min_lr):
    """The rates of each epoch under Keras's rule, as its documentation states it, one group at a time."""
    better = (lambda a, b: a < b - min_delta) if mode == "min" else (lambda a, b: a > b + min_delta)
    rates, best, wait, cooling, per_epoch = list(RATES), None, 0, 0, []
    for value in values:
        per_epoch.append(list(rates))
        if cooling > 0:
            cooling, wait = cooling - 1, 0
        if best is None or better(value, best):
            best, wait = value, 0
        elif cooling == 0:
            wait += 1
            if wait >= patience and any(rate > min_lr for rate in rates):
                rates = [max(rate * factor, min_lr) if rate > min_lr else rate for rate in rates]
                cooling, wait = cooldown, 0
    return per_epoch


def fit(learner, model, plateau, key, values, epochs, initial_epoch=0, **options):
    x, y = make_classification(n=16)
    callbacks = [Script(key, values), plateau]
    return learner.fit(
        model, (x, y), epochs=epochs, initial_epoch=initial_epoch, batch_size=16, callbacks=callbacks, **options
    )


def rates_of(history):
    return [list(pair) for pair in zip(history.history["lr"], history.history["lr_1"])]


@pytest.mark.parametrize(
    ("key", "values", "mode"), [("val_loss", VAL_LOSS, "min"), ("val_accuracy", VAL_ACCURACY, "max")]
)
def test_reduces_exactly_when_keras_does(key, values, mode):
    plateau = ReduceLROnPlateau(monitor=key, **SETTINGS)  # mode="auto" must infer `mode`
    assert plateau.mode == mode
    learner = Learner(loss="cross_entropy", optimizer=two_groups, verbose=0)
    history = fit(learner, make_mlp(), plateau, key, values, epochs=len(values))
    expected = keras_rates(values, mode, **SETTINGS)
    assert rates_of(history) == expected
    assert len({tuple(rates) for rates in expected}) >= 3  # the sequence does trigger reductions


def test_patience_counts_bad_epochs_as_keras_does_one_fewer_than_torch():
    values = [1.0, 1.0, 1.0, 1.0, 1.0]
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    history = fit(learner, make_mlp(), ReduceLROnPlateau(patience=2, factor=0.5), "val_loss", values, epochs=5)
    # Bad epochs 1 and 2: Keras reduces at the end of epoch 2; torch would at the end of epoch 3.
    assert history.history["lr"] == [0.1, 0.1, 0.1, 0.05, 0.05]


def test_counters_survive_a_resume_through_json_and_a_fresh_fit_starts_afresh():
    learner = Learner(loss="cross_entropy", optimizer=two_groups, verbose=0)
    model = make_mlp()
    first = ReduceLROnPlateau(monitor="val_loss", **SETTINGS)
    head = fit(learner, model, first, "val_loss", VAL_LOSS, epochs=6)
    state = json.loads(json.dumps(first.state_dict()))
    assert set(state) == {"best", "wait", "cooldown_counter"} and state["best"] == 0.85

    second = ReduceLROnPlateau(monitor="val_loss", **SETTINGS)
    second.load_state_dict(state)
    tail = fit(learner, model, second, "val_loss", VAL_LOSS, epochs=len(VAL_LOSS), initial_epoch=6)
    assert rates_of(head) + rates_of(tail) == keras_rates(VAL_LOSS, "min", **SETTINGS)

    first.wait, first.cooldown_counter = 3, 1
    fit(Learner(loss="cross_entropy", verbose=0), make_mlp(), first, "val_loss", [5.0], epochs=1)
    assert (first.best, first.wait, first.cooldown_counter) == (5.0, 0, 0)  # not compared with the old best


def test_a_reduction_is_logged_with_the_new_rate(caplog):
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    with caplog.at_level(logging.INFO, logger="fitorch"):
        fit(learner, make_mlp(), ReduceLROnPlateau(patience=1), "val_loss", [1.0, 1.0], epochs=2)
    assert "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.01" in caplog.text


def test_missing_monitor_lists_the_available_keys():
    x, y = make_classification(n=16)
    learner = Learner(loss="cross_entropy", verbose=0)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau\(monitor='val_loss'\).*available: loss, lr"):
        learner.fit(make_mlp(), (x, y), epochs=1, callbacks=[ReduceLROnPlateau()])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.5}, r"factor must be a number in \(0, 1\), got 1.5"),
        ({"factor": 0}, r"factor must be a number in \(0, 1\), got 0"),
        ({"patience": -1}, "patience must be an int >= 0, got -1"),
        ({"cooldown": -1}, "cooldown must be an int >= 0, got -1"),
        ({"min_lr": -1e-3}, "min_lr must be a number >= 0, got -0.001"),
        ({"min_delta": -1}, "min_delta must be a number >= 0, got -1"),
        ({"mode": "up"}, "mode must be one of 'auto', 'min', 'max', got 'up'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReduceLROnPlateau(**kwargs)
