"""Optimizers: by name, by class, from a factory that sees the model (parameter groups)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_mlp
from fitorch import Learner


def test_optimizer_factory_with_parameter_groups(data):
    x, y = data

    def groups(model):
        return torch.optim.SGD(
            [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1
        )

    history = Learner(loss="cross_entropy", optimizer=groups, verbose=0).fit(make_mlp(), (x, y), epochs=1)
    assert history.history["lr"] == [0.01] and history.history["lr_1"] == [0.1]


def test_a_model_without_parameters_is_not_called_frozen(data):
    x, y = data
    with pytest.raises(ValueError) as error:
        Learner(loss="cross_entropy", verbose=0).fit(nn.Identity(), (x, y))
    assert "Identity) has no parameters to train" in str(error.value)
    assert "requires_grad" not in str(error.value)
    frozen = make_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="all 4 have requires_grad=False"):
        Learner(loss="cross_entropy", verbose=0).fit(frozen, (x, y))
