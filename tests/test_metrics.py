"""Metrics: exact epoch values, binary accuracy from logits or probabilities, callables and metric objects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_classification, make_mlp
from fitorch import Learner


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
