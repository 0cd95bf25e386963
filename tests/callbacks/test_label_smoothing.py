"""LabelSmoothing: the training loss is torch's smoothed cross-entropy; validation and metrics use true labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_classification, make_mlp
from fitorch import Callback, Every, Learner
from fitorch.callbacks import LabelSmoothing


class BatchLosses(Callback):
    """The loss and outputs of every training batch (in order: shuffle is off)."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def on_train_batch_end(self, batch, logs):
        self.losses.append(self.learner.loss.detach().clone())
        self.outputs.append(self.learner.outputs.detach().clone())


def fit(targets, x, loss="cross_entropy", epochs=2):
    record = BatchLosses()
    model = make_mlp()
    learner = Learner(loss=loss, optimizer="sgd", lr=0.1, metrics=["accuracy"], verbose=0)
    history = learner.fit(
        model,
        (x[:24], targets[:24]),
        epochs=epochs,
        batch_size=8,
        shuffle=False,
        validation_data=(x[24:], targets[24:]),
        callbacks=[LabelSmoothing(0.1), record],
    )
    return record, history, learner, model


def test_train_loss_is_smoothed_and_val_loss_is_not():
    x, y = make_classification(n=40)
    record, history, learner, model = fit(y, x)
    batch_targets = [y[i : i + 8] for i in (0, 8, 16)] * 2
    for loss, outputs, targets in zip(record.losses, record.outputs, batch_targets):
        torch.testing.assert_close(loss, F.cross_entropy(outputs, targets, label_smoothing=0.1))
        assert not torch.allclose(loss, F.cross_entropy(outputs, targets))
    with torch.no_grad():
        outputs = model(x[24:])
    assert history.history["val_loss"][-1] == pytest.approx(F.cross_entropy(outputs, y[24:]).item(), rel=1e-6)
    accuracy = (outputs.argmax(1) == y[24:]).float().mean().item()
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert learner.loss_fn.label_smoothing == 0.0  # the learner's own loss is back after fit


def test_one_hot_targets_get_the_smoothed_target_equivalent():
    x, y = make_classification(n=40)
    one_hot = F.one_hot(y, 3).float()
    record, *_ = fit(one_hot, x, epochs=1)
    for loss, outputs, start in zip(record.losses, record.outputs, (0, 8, 16)):
        smoothed = one_hot[start : start + 8] * 0.9 + 0.1 / 3
        torch.testing.assert_close(loss, F.cross_entropy(outputs, smoothed))


def test_refuses_a_loss_it_cannot_apply_to():
    x, y = make_classification(n=40)
    with pytest.raises(ValueError, match="cross-entropy loss only; this learner's loss is MSELoss"):
        fit(F.one_hot(y, 3).float(), x, loss="mse")
    with pytest.raises(ValueError, match="already smooths labels"):
        fit(y, x, loss=nn.CrossEntropyLoss(label_smoothing=0.2))


@pytest.mark.parametrize(
    ("smoothing", "error"),
    [(1.0, ValueError), (-0.1, ValueError), (1.5, ValueError), ("0.1", TypeError), (True, TypeError)],
)
def test_smoothing_outside_zero_one_fails_at_construction(smoothing, error):
    with pytest.raises(error, match=r"smoothing must be a number in \[0, 1\), got"):
        LabelSmoothing(smoothing)


def test_training_stays_smoothed_after_a_validation_inside_an_epoch():
    x, y = make_classification(n=40)
    straight, *_ = fit(y, x)
    record = BatchLosses()
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, metrics=["accuracy"], verbose=0)
    learner.fit(
        make_mlp(), (x[:24], y[:24]), epochs=2, batch_size=8, shuffle=False, validation_data=(x[24:], y[24:]),
        validation_freq=Every(1), callbacks=[LabelSmoothing(0.1), record],
    )  # fmt: skip
    for expected, loss in zip(straight.losses, record.losses, strict=True):
        torch.testing.assert_close(loss, expected)
