"""validation_freq (epochs, a list, or Every(n) optimizer steps) and validation_steps, and where the values go."""

from __future__ import annotations

import pytest
import torch

from conftest import Recorder, make_classification, make_mlp
from fitorch import Callback, Every, Learner
from fitorch.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau


class ValidationLogs(Callback):
    """The validation results, in order, and the logs of every batch that carries validation values."""

    def __init__(self):
        self.results, self.batch_logs, self.epoch_logs = [], [], []

    def on_test_end(self, logs):
        self.results.append((self.learner.epoch, self.learner.global_step, dict(logs)))

    def on_train_batch_end(self, batch, logs):
        if "val_loss" in logs:
            self.batch_logs.append((self.learner.global_step, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.epoch_logs.append(dict(logs))


def fit(epochs=4, callbacks=(), **options):
    x, y = make_classification(n=64)
    learner = Learner(loss="cross_entropy", metrics=["accuracy"], lr=1e-2, verbose=0, seed=0)
    history = learner.fit(
        make_mlp(), (x, y), epochs=epochs, batch_size=8, validation_data=(x[:24], y[:24]), callbacks=list(callbacks),
        **options,
    )  # fmt: skip
    return learner, history


@pytest.mark.parametrize(("freq", "validated"), [(2, [1, 3]), ([1, 2, 4], [0, 1, 3]), (Every(2, "epoch"), [1, 3])])
def test_validation_freq_validates_the_epochs_keras_would(tmp_path, freq, validated):
    logs = ValidationLogs()
    monitors = [
        EarlyStopping(monitor="val_loss", patience=1),
        ReduceLROnPlateau(monitor="val_loss", patience=0),
        ModelCheckpoint(tmp_path / "best", monitor="val_accuracy", save_best_only=True),
    ]
    learner, history = fit(callbacks=[logs, *monitors], validation_freq=freq)
    assert [epoch for epoch, _, _ in logs.results] == validated
    assert history.epoch == [0, 1, 2, 3]  # epochs without validation do not stop EarlyStopping or the others
    assert len(history.history["val_loss"]) == len(validated) and len(history.history["loss"]) == 4
    assert [("val_loss" in epoch_logs) for epoch_logs in logs.epoch_logs] == [e in validated for e in range(4)]
    assert history.history["val_loss"] == [result["loss"] for _, _, result in logs.results]


def test_validation_every_n_steps_reaches_batch_logs_epoch_logs_and_checkpoints(tmp_path):
    logs = ValidationLogs()
    best = ModelCheckpoint(tmp_path / "best-{step}", monitor="val_loss", save_best_only=True, save_freq=3)
    learner, history = fit(epochs=2, callbacks=[logs, best], validation_freq=Every(3))
    assert [step for _, step, _ in logs.results] == [3, 6, 9, 12, 15]  # 8 steps per epoch, 16 in all
    assert [step for step, _ in logs.batch_logs] == [3, 6, 9, 12, 15]
    for (_, _, result), (_, batch_logs) in zip(logs.results, logs.batch_logs):
        assert batch_logs["val_loss"] == result["loss"] and "loss" in batch_logs  # training values too
    # an epoch's logs hold its last validation: step 6 for epoch 1, step 15 for epoch 2
    assert history.history["val_loss"] == [logs.results[1][2]["loss"], logs.results[4][2]["loss"]]
    assert best.saved and all(path.startswith(str(tmp_path / "best-")) for path in best.saved)


def test_a_validation_inside_an_epoch_does_not_change_the_training():
    straight, _ = fit(epochs=2)
    within, _ = fit(epochs=2, validation_freq=Every(3))
    for a, b in zip(straight.model.state_dict().values(), within.model.state_dict().values()):
        assert torch.equal(a, b)
    assert within.history.history["loss"] == straight.history.history["loss"]


def test_validation_steps_caps_every_validation_run():
    recorder = Recorder()
    fit(epochs=2, callbacks=[recorder], validation_steps=2)
    validation_batches = [e for e in recorder.events if e.startswith("on_test_batch_begin")]
    assert validation_batches == ["on_test_batch_begin(0)", "on_test_batch_begin(1)"] * 2


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"validation_freq": 0}, ValueError, "validation_freq .* must be a positive int, got 0"),
        ({"validation_freq": "epoch"}, TypeError, "validation_freq"),
        ({"validation_freq": []}, ValueError, "must list at least one epoch"),
        ({"validation_freq": [0, 2]}, ValueError, "epochs counted from 1.* got 0"),
        ({"validation_steps": 0}, ValueError, "validation_steps must be a positive int or None, got 0"),
        ({"steps_per_epoch": 1.5}, TypeError, "steps_per_epoch must be a positive int or None, got 1.5"),
    ],
)
def test_bad_validation_arguments_fail_before_training(options, error, match):
    with pytest.raises(error, match=match):
        fit(**options)
