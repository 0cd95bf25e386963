"""Keras's model_checkpoint_test.py, ported to fitorch (see helpers.py for the commit and the outcomes).

Keras's `test_model_checkpoint_options` holds numbered cases (there is no case 7); each is a test here.
A fitorch checkpoint is a folder (`model.safetensors` and the training state), so the paths have no
`.keras` or `.weights.h5` ending.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fitorch import Learner, load_weights
from fitorch.callbacks import ModelCheckpoint
from keras_conformance.helpers import dense, keras_data, ports

FILE = "model_checkpoint_test.py::ModelCheckpointTest::"
OPTIONS = FILE + "test_model_checkpoint_options (case {})"


def acc(outputs, targets):
    """A metric named `acc`, so that the logs hold `val_acc` as in the Keras test."""
    return (outputs.argmax(dim=1) == targets).float().mean()


def auc(outputs, targets):
    """Stands in for Keras's AUC metric: only its name (`val_auc`, max in mode 'auto') matters here."""
    return (outputs.argmax(dim=1) == targets).float().mean()


def make_model():
    return dense(3, 5, 3, activation=nn.ReLU)


def fit(callbacks, model=None, epochs=1, batch_size=5, metric=acc):
    """Keras's set-up: 30 samples of 3 features in 3 classes, validation on 30 more, SGD, batches of 5."""
    (x_train, y_train), (x_test, y_test) = keras_data(30, 30, 3, 3, seed=42)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.01, metrics=[metric], verbose=0)
    learner.fit(
        model or make_model(),
        (x_train, y_train),
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x_test, y_test),
        callbacks=callbacks,
    )
    return learner


@ports(OPTIONS.format("1"), "different")
def test_saves_with_the_default_mode_to_a_folder(tmp_path):
    with pytest.raises(ValueError, match="a checkpoint is a folder"):
        ModelCheckpoint(tmp_path / "subdir" / "checkpoint.keras")
    path = tmp_path / "subdir" / "checkpoint"  # the parent folder is created
    fit([ModelCheckpoint(path, monitor="val_loss", save_best_only=False, mode="auto")])
    assert path.exists()


@ports(OPTIONS.format("2"))
def test_saves_in_mode_min(tmp_path):
    fit([ModelCheckpoint(tmp_path / "checkpoint", monitor="val_loss", save_best_only=False, mode="min")])
    assert (tmp_path / "checkpoint").exists()


@ports(OPTIONS.format("3"))
def test_saves_in_mode_max(tmp_path):
    fit([ModelCheckpoint(tmp_path / "checkpoint", monitor="val_acc", save_best_only=False, mode="max")])
    assert (tmp_path / "checkpoint").exists()


@ports(OPTIONS.format("4"))
def test_saves_the_best_only(tmp_path):
    fit([ModelCheckpoint(tmp_path / "checkpoint", monitor="val_acc", save_best_only=True, mode="max")])
    assert (tmp_path / "checkpoint").exists()


@ports(OPTIONS.format("5"), "different")
def test_a_missing_monitor_is_an_error_not_a_warning(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "checkpoint", monitor="unknown", save_best_only=True, mode="min")
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(monitor='unknown'\): no such value in the logs"):
        fit([checkpoint])  # Keras warns and saves anyway
    assert not (tmp_path / "checkpoint").exists()


@ports(OPTIONS.format("6"), "different")
def test_an_unknown_mode_is_an_error_not_a_warning(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of 'auto', 'min', 'max', got 'unknown'"):
        ModelCheckpoint(tmp_path / "checkpoint", monitor="val_acc", save_best_only=True, mode="unknown")


@ports(OPTIONS.format("8a"))
@ports(OPTIONS.format("8b"))
@pytest.mark.parametrize("weights_only", [False, True], ids=["case 8a", "case 8b"])
def test_an_integer_save_freq_saves_on_the_last_batch_of_an_epoch_too(tmp_path, weights_only):
    pattern = str(tmp_path / "checkpoint.epoch{epoch:02d}")
    checkpoint = ModelCheckpoint(pattern, monitor="val_acc", mode="max", save_freq=15, save_weights_only=weights_only)
    fit([checkpoint], epochs=10, batch_size=6)  # 5 batches an epoch: step 15 ends epoch 3, 30 epoch 6, 45 epoch 9
    saved = [epoch for epoch in range(1, 11) if os.path.exists(pattern.format(epoch=epoch))]
    assert saved == [3, 6, 9]


@ports(OPTIONS.format("9"))
def test_save_freq_is_epoch_or_an_int(tmp_path):
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive int"):
        ModelCheckpoint(tmp_path / "c", monitor="val_acc", save_weights_only=True, mode="max", save_freq="invalid")
    ModelCheckpoint(tmp_path / "c", monitor="val_acc", save_weights_only=True, mode="max", save_freq="epoch")
    ModelCheckpoint(tmp_path / "c", monitor="val_acc", save_weights_only=True, mode="max", save_freq=3)


@ports(OPTIONS.format("10a"))
@ports(OPTIONS.format("10b"))
@pytest.mark.parametrize("weights_only", [False, True], ids=["case 10a", "case 10b"])
def test_save_freq_one_saves_every_batch_with_the_batch_in_the_name(tmp_path, weights_only):
    pattern = str(tmp_path / "checkpoint.epoch{epoch:02d}batch{batch:02d}")
    checkpoint = ModelCheckpoint(pattern, monitor="val_acc", save_freq=1, save_weights_only=weights_only)
    fit([checkpoint], epochs=5, batch_size=15)  # 2 batches an epoch
    for epoch in range(1, 6):
        for batch in (1, 2):
            assert os.path.exists(pattern.format(epoch=epoch, batch=batch))


@ports(OPTIONS.format("11"))
@ports(OPTIONS.format("12"))
@ports(OPTIONS.format("13"))
@ports(OPTIONS.format("14"))
@ports(OPTIONS.format("15"))
@pytest.mark.parametrize(
    ("case", "monitor", "mode", "threshold", "saved"),
    [
        ("11", "val_acc", "max", -0.01, True),
        ("12", "val_loss", "auto", None, True),
        ("13", "val_loss", "min", 0, False),  # no loss beats 0
        ("14", "val_loss", "auto", 0, False),
        ("15", "val_auc", "auto", 1, False),  # 'auto' maximises an AUC: nothing beats 1
    ],
)
def test_initial_value_threshold(tmp_path, case, monitor, mode, threshold, saved):
    path = tmp_path / "checkpoint"
    checkpoint = ModelCheckpoint(
        path, monitor=monitor, save_best_only=True, initial_value_threshold=threshold, mode=mode
    )
    fit([checkpoint], metric=auc if monitor == "val_auc" else acc)
    assert path.exists() == saved


def same_weights(first, second):
    return all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


@ports(FILE + "test_model_checkpoint_loading (model)", "different")
def test_a_checkpoint_loads_into_a_model_built_by_code(tmp_path):
    path = tmp_path / "checkpoint.model"
    learner = fit([ModelCheckpoint(path, monitor="val_loss", save_best_only=True, mode="auto")])
    # No model comes out of a file (fitorch stores no code, nothing is unpickled): build it, then load.
    assert "model.safetensors" in os.listdir(path)
    assert not [name for name in os.listdir(path) if name.endswith((".keras", ".pt", ".pkl"))]
    fresh = dense(3, 5, 3, activation=nn.ReLU, seed=1)
    load_weights(fresh, path)
    assert same_weights(fresh, learner.model)


@ports(FILE + "test_model_checkpoint_loading (weights)")
def test_a_weights_only_checkpoint_loads_into_a_new_model(tmp_path):
    path = tmp_path / "checkpoint.weights"
    learner = fit([ModelCheckpoint(path, monitor="val_loss", save_best_only=True, save_weights_only=True)])
    fresh = dense(3, 5, 3, activation=nn.ReLU, seed=1)
    load_weights(fresh, path)
    assert same_weights(fresh, learner.model)
