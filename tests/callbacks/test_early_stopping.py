"""EarlyStopping: Keras semantics on scripted metric sequences, best weights, resume, argument checks."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import Script, make_classification, make_mlp
from fitorch import Callback, Learner, save_checkpoint
from fitorch.callbacks import EarlyStopping


class Weights(Callback):
    """Keeps a copy of the weights at the end of every epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, epoch, logs):
        self.by_epoch[epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def run(stopper, key, values, epochs=None, initial_epoch=0, extra=(), learner=None, model=None):
    x, y = make_classification(n=32)
    learner = learner or Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    history = learner.fit(
        model or make_mlp(),
        (x, y),
        epochs=epochs or len(values),
        initial_epoch=initial_epoch,
        batch_size=32,
        callbacks=[Script(key, values), *extra, stopper],
    )
    return history, learner


@pytest.mark.parametrize(
    ("key", "values", "kwargs", "stopped"),
    [
        ("val_metric", [1.0, 0.9, 0.95, 0.93, 0.91, 0.5, 0.4], {"patience": 2}, 3),
        ("val_metric", [1.0, 0.95, 0.92, 0.5], {"patience": 1, "min_delta": 0.1}, 1),
        ("val_accuracy", [0.5, 0.6, 0.55, 0.58, 0.7, 0.8], {"patience": 2}, 3),  # mode auto -> max
        ("val_metric", [0.5, 0.6, 0.55, 0.58, 0.7, 0.8], {"patience": 2, "mode": "max"}, 3),
        ("val_metric", [1.0, 1.0, 0.5], {"patience": 0}, 1),
        # The baseline 0.5 is never beaten: improving epochs do not reset the counter, and the
        # first epoch that does not improve stops (without the baseline, wait would be 1 < 2).
        ("val_metric", [0.9, 0.8, 0.7, 0.75, 0.6], {"patience": 2, "baseline": 0.5}, 3),
        ("val_metric", [5.0, 6.0, 3.0, 4.0, 1.0], {"patience": 1, "start_from_epoch": 2}, 3),
    ],
)
def test_stops_at_the_keras_epoch_for_a_scripted_sequence(key, values, kwargs, stopped):
    stopper = EarlyStopping(monitor=key, **kwargs)
    history, learner = run(stopper, key, values)
    assert stopper.stopped_epoch == stopped
    assert history.epoch == list(range(stopped + 1))


def test_does_not_stop_while_improving():
    stopper = EarlyStopping(monitor="val_metric", patience=1)
    history, _ = run(stopper, "val_metric", [1.0, 0.9, 0.8, 0.7])
    assert stopper.stopped_epoch == 0 and len(history.epoch) == 4
    assert stopper.best == 0.7 and stopper.best_epoch == 3


@pytest.mark.parametrize("restore", [True, False])
def test_restores_the_weights_of_the_best_epoch(restore):
    weights = Weights()
    stopper = EarlyStopping(monitor="val_metric", patience=2, restore_best_weights=restore)
    model = make_mlp()
    run(stopper, "val_metric", [1.0, 0.5, 0.7, 0.8, 0.9], extra=[weights], model=model)
    expected = weights.by_epoch[1 if restore else 3]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert not torch.equal(weights.by_epoch[1]["0.weight"], weights.by_epoch[3]["0.weight"])


def test_resumes_its_counters_from_a_json_state_dict():
    first = EarlyStopping(monitor="val_metric", patience=3)
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98]
    _, learner = run(first, "val_metric", values, epochs=3)
    assert first.stopped_epoch == 0 and first.wait == 1
    state = json.loads(json.dumps(first.state_dict()))
    assert state["best"] == 0.9 and state["wait"] == 1

    resumed = EarlyStopping(monitor="val_metric", patience=3)
    resumed.load_state_dict(state)
    history, _ = run(resumed, "val_metric", values, epochs=6, initial_epoch=3, learner=learner)
    assert resumed.stopped_epoch == 4  # wait 1 -> 2 (epoch 3) -> 3 (epoch 4)
    assert history.epoch == [3, 4]

    fresh = EarlyStopping(monitor="val_metric", patience=3)  # without the state it would train on
    run(fresh, "val_metric", values, epochs=6, initial_epoch=3, learner=learner)
    assert fresh.stopped_epoch == 0


def test_a_new_fit_starts_afresh():
    stopper = EarlyStopping(monitor="val_metric", patience=1)
    run(stopper, "val_metric", [1.0, 2.0, 3.0])
    assert stopper.stopped_epoch == 1
    run(stopper, "val_metric", [5.0, 4.0, 3.0])
    assert stopper.stopped_epoch == 0 and stopper.best == 3.0


def test_missing_monitor_lists_the_available_keys():
    x, y = make_classification(n=16)
    learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0)
    with pytest.raises(ValueError, match=r"monitor='val_acc'.*available: loss, accuracy, lr.*validation_data"):
        learner.fit(make_mlp(), (x, y), epochs=2, callbacks=[EarlyStopping(monitor="val_acc")])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"patience": -1}, ValueError, "patience must be an int >= 0, got -1"),
        ({"patience": 1.5}, TypeError, "patience must be an int >= 0, got 1.5"),
        ({"start_from_epoch": -2}, ValueError, "start_from_epoch must be an int >= 0, got -2"),
        ({"min_delta": -0.1}, ValueError, "min_delta must be a number >= 0, got -0.1"),
        ({"mode": "bigger"}, ValueError, "mode must be one of 'auto', 'min', 'max', got 'bigger'"),
        ({"baseline": "0.5"}, TypeError, "baseline must be a number or None, got '0.5'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        EarlyStopping(**kwargs)


def test_resumes_counters_and_best_weights_from_a_fitorch_checkpoint(tmp_path, caplog):
    values, path = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95], tmp_path / "checkpoint"
    x, y = make_classification(n=32)

    class SaveThenStop(Callback):  # a run that checkpoints epoch 2, then dies
        def on_epoch_end(self, epoch, logs):
            if epoch == 2:
                save_checkpoint(self.learner, path)
                self.learner.stop_training = True

    weights = Weights()
    first = EarlyStopping(monitor="val_metric", patience=3, restore_best_weights=True)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    learner.fit(
        make_mlp(),
        (x, y),
        epochs=6,
        batch_size=32,
        callbacks=[Script("val_metric", values), weights, first, SaveThenStop()],
    )

    resumed = EarlyStopping(monitor="val_metric", patience=3, restore_best_weights=True)
    model = make_mlp(seed=1)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    with caplog.at_level(logging.INFO, logger="fitorch"):
        history = learner.fit(
            model, (x, y), epochs=6, batch_size=32, resume=path, callbacks=[Script("val_metric", values), resumed]
        )
    assert history.epoch[-2:] == [3, 4] and resumed.stopped_epoch == 4  # wait: 1 at the save, 2, 3
    assert resumed.best == 0.5 and resumed.best_epoch == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights.by_epoch[1][key], rtol=0, atol=0)
    assert "restored the weights of the best epoch, 1" in caplog.text


@pytest.mark.parametrize("stay_stopped", [True, False])
def test_a_stopped_run_stays_stopped_when_resumed_to_more_epochs(tmp_path, stay_stopped):
    """A run that early stopping ended used to train on when resumed to a larger epochs."""
    values = [1.0, 0.9, 0.95, 0.96, 0.8, 0.7, 0.6, 0.5]
    stopper = EarlyStopping(monitor="val_metric", patience=1, stay_stopped=stay_stopped)
    history, learner = run(stopper, "val_metric", values, epochs=5)
    assert stopper.stopped_epoch == 2 and history.epoch == [0, 1, 2]
    save_checkpoint(learner, tmp_path / "end")

    again = EarlyStopping(monitor="val_metric", patience=1, stay_stopped=stay_stopped)
    x, y = make_classification(n=32)
    resumed = learner.fit(
        learner.model,
        (x, y),
        epochs=8,
        batch_size=32,
        resume=tmp_path / "end",
        callbacks=[Script("val_metric", values), again],
    )
    if stay_stopped:
        assert resumed.epoch == [0, 1, 2] and again.stopped_epoch == 2  # nothing trained
    else:
        assert resumed.epoch == [0, 1, 2, 3] and again.stopped_epoch == 3  # trained on: patience counted afresh
