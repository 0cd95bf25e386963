"""Metrics: exact epoch values, binary accuracy from logits or probabilities, callables and metric objects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_classification, make_mlp
from fitorch import Learner, TopKAccuracy


def test_binary_accuracy_with_logits_and_probabilities():
    x = torch.randn(40, 8)
    y = (x[:, 0] > 0).float().unsqueeze(1)
    logits = nn.Linear(8, 1)
    with torch.no_grad():
        expected = float(((logits(x) > 0).float() == y).float().mean())
    logs = Learner(loss="bce_with_logits", metrics=["accuracy"], verbose=0).evaluate(logits, (x, y))
    assert logs["accuracy"] == pytest.approx(expected)
    probabilities = nn.Sequential(logits, nn.Sigmoid())
    logs = Learner(loss="bce", metrics=["accuracy"], verbose=0).evaluate(probabilities, (x, y))
    assert logs["accuracy"] == pytest.approx(expected)


def test_callable_and_protocol_metrics():
    x, y = make_classification(n=10)

    def error_rate(outputs, targets):
        return (outputs.argmax(1) != targets).float().mean()

    class Count:
        name = "samples"

        def reset(self):
            self.n = 0

        def update(self, outputs, targets):
            self.n += len(targets)

        def compute(self):
            return self.n

    logs = Learner(loss="cross_entropy", metrics=["accuracy", error_rate, Count()], verbose=0).evaluate(
        make_mlp(), (x, y), batch_size=4
    )
    assert logs["error_rate"] == pytest.approx(1 - logs["accuracy"])  # batch means weighted by batch size
    assert logs["samples"] == 10


class Collection:
    """A torchmetrics MetricCollection's shape: compute() returns a dict of scalars."""

    def reset(self):
        self.correct, self.total = 0, 0

    def update(self, outputs, targets):
        self.correct += int((outputs.argmax(1) == targets).sum())
        self.total += len(targets)

    def compute(self):
        return {"hits": torch.tensor(float(self.correct)), "error_rate": 1 - self.correct / self.total}


def test_a_metric_returning_a_dict_logs_one_key_per_entry():
    x, y = make_classification(n=40)
    learner = Learner(loss="cross_entropy", metrics=["accuracy", Collection()], verbose=0)
    history = learner.fit(make_mlp(), (x, y), epochs=2, batch_size=8, validation_split=0.25)
    assert list(history.history) == [
        "loss", "accuracy", "hits", "error_rate", "val_loss", "val_accuracy", "val_hits", "val_error_rate", "lr"
    ]  # fmt: skip
    assert history.history["error_rate"] == pytest.approx([1 - a for a in history.history["accuracy"]])
    assert history.history["val_hits"] == pytest.approx([a * 10 for a in history.history["val_accuracy"]])


def test_a_metric_with_a_non_scalar_result_is_refused_instead_of_averaged():
    x, y = make_classification(n=40)

    class ConfusionMatrix(Collection):
        def compute(self):
            return torch.eye(3)

    with pytest.raises(ValueError, match=r"metric 'confusion_matrix' returned a tensor of shape \(3, 3\)"):
        Learner(loss="cross_entropy", metrics=[ConfusionMatrix()], verbose=0).evaluate(make_mlp(), (x, y))


def test_top_k_accuracy_with_k_at_least_the_classes_is_refused():
    x, y = make_classification(n=40)  # 3 classes
    with pytest.raises(ValueError, match="top_k_accuracy with k=5 and 3 classes counts every sample as a hit"):
        Learner(loss="cross_entropy", metrics=["top_k_accuracy"], verbose=0).fit(make_mlp(), (x, y))
    logs = Learner(loss="cross_entropy", metrics=[TopKAccuracy(k=2)], verbose=0).evaluate(make_mlp(), (x, y))
    assert 0 < logs["top_k_accuracy"] <= 1


def test_metrics_that_cannot_apply_to_the_loss_are_refused():
    x = torch.randn(40, 8)
    values = x[:, :1] * 2
    with pytest.raises(
        ValueError, match="metric 'accuracy' compares predicted classes, but loss='mse' is a regression"
    ):
        Learner(loss="mse", metrics=["accuracy"], verbose=0).fit(nn.Linear(8, 1), (x, values))
    with pytest.raises(ValueError, match="metric 'mae' compares values, but loss='cross_entropy' takes class indices"):
        Learner(loss="cross_entropy", metrics=["mae"])
    with pytest.raises(ValueError, match="metric 'mse' compares values"):
        Learner(loss=nn.NLLLoss(), metrics=["mse"])
    # a regression onto one-hot targets predicts the largest output: accuracy means something there
    x, y = make_classification(n=40)
    logs = Learner(loss="mse", metrics=["accuracy"], verbose=0).evaluate(make_mlp(), (x, F.one_hot(y, 3).float()))
    assert 0 <= logs["accuracy"] <= 1


def test_evaluate_without_targets_says_it_needs_them_and_points_to_predict():
    x, _ = make_classification(n=40)
    with pytest.raises(ValueError, match=r"evaluate needs targets.*learner.predict\(model, x\)"):
        Learner(loss="cross_entropy", verbose=0).evaluate(make_mlp(), x)
    with pytest.raises(ValueError, match="evaluate needs targets"):
        Learner(loss="cross_entropy", verbose=0).evaluate(make_mlp(), [(x,)])


def test_real_torchmetrics_objects_log_exact_values_or_are_refused():
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

    x, y = make_classification(n=50)  # 3 classes; batches of 8 leave a short last batch
    model = make_mlp()
    collection = torchmetrics.MetricCollection(
        {"acc": MulticlassAccuracy(3, average="micro"), "f1": MulticlassF1Score(3, average="macro")}
    )
    logs = Learner(loss="cross_entropy", metrics=[collection], verbose=0).evaluate(model, (x, y), batch_size=8)
    with torch.no_grad():
        predicted = model(x)
    assert set(logs) == {"loss", "acc", "f1"}  # one log key per entry of the collection
    assert logs["acc"] == pytest.approx(float((predicted.argmax(1) == y).float().mean()), abs=1e-6)
    assert logs["f1"] == pytest.approx(float(MulticlassF1Score(3, average="macro")(predicted, y)), abs=1e-6)
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(3, 3\)"):
        Learner(loss="cross_entropy", metrics=[MulticlassConfusionMatrix(3)], verbose=0).evaluate(model, (x, y))
