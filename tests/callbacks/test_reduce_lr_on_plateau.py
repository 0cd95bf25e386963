"""ReduceLROnPlateau: reduces exactly when torch's own scheduler does, in both directions and across a resume."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import Script, make_classification, make_mlp
from fitorch import Learner
from fitorch.callbacks import ReduceLROnPlateau

VAL_LOSS = [1.0, 0.9, 0.9, 0.95, 0.9, 0.85, 0.86, 0.849, 0.87, 0.88, 0.84, 0.9, 0.9, 0.9]
VAL_ACCURACY = [0.5, 0.6, 0.6, 0.605, 0.6, 0.65, 0.655, 0.7, 0.7, 0.69, 0.705, 0.709, 0.6, 0.6]
SETTINGS = {"factor": 0.5, "patience": 2, "min_delta": 0.01, "cooldown": 1, "min_lr": 0.004}


def two_groups(model):
    return torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.01}]
    )


def torch_rates(values, mode):
    """The rates torch's scheduler gives each epoch (before its step at the end of that epoch)."""
    optimizer = two_groups(make_mlp())
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=mode,
        factor=SETTINGS["factor"],
        patience=SETTINGS["patience"],
        threshold=SETTINGS["min_delta"],
        threshold_mode="abs",
        cooldown=SETTINGS["cooldown"],
        min_lr=SETTINGS["min_lr"],
    )
    rates = []
    for value in values:
        rates.append([group["lr"] for group in optimizer.param_groups])
        scheduler.step(value)
    return rates


def fit(learner, model, plateau, key, values, epochs, initial_epoch=0):
    x, y = make_classification(n=16)
    callbacks = [Script(key, values), plateau]
    return learner.fit(model, (x, y), epochs=epochs, initial_epoch=initial_epoch, batch_size=16, callbacks=callbacks)


@pytest.mark.parametrize(
    ("key", "values", "mode"), [("val_loss", VAL_LOSS, "min"), ("val_accuracy", VAL_ACCURACY, "max")]
)
def test_reduces_exactly_when_torch_does(key, values, mode):
    plateau = ReduceLROnPlateau(monitor=key, **SETTINGS)  # mode="auto" must infer `mode`
    assert plateau.mode == mode
    learner = Learner(loss="cross_entropy", optimizer=two_groups, verbose=0)
    history = fit(learner, make_mlp(), plateau, key, values, epochs=len(values))
    ours = [list(pair) for pair in zip(history.history["lr"], history.history["lr_1"])]
    expected = torch_rates(values, mode)
    assert ours == expected
    assert len({tuple(rates) for rates in expected}) >= 3  # the sequence does trigger reductions


def test_counters_survive_a_resume_through_json():
    learner = Learner(loss="cross_entropy", optimizer=two_groups, verbose=0)
    model = make_mlp()
    first = ReduceLROnPlateau(monitor="val_loss", **SETTINGS)
    head = fit(learner, model, first, "val_loss", VAL_LOSS, epochs=6)
    state = json.loads(json.dumps(first.state_dict()))
    assert set(state) == {"best", "num_bad_epochs", "cooldown_counter", "last_epoch"}

    second = ReduceLROnPlateau(monitor="val_loss", **SETTINGS)
    second.load_state_dict(state)
    tail = fit(learner, model, second, "val_loss", VAL_LOSS, epochs=len(VAL_LOSS), initial_epoch=6)
    rates = head.history["lr"] + tail.history["lr"]
    assert rates == [pair[0] for pair in torch_rates(VAL_LOSS, "min")]


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
