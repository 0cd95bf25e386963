"""Losses: names, the targets check that turns broadcasting and dtype slips into messages, model-computed losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_classification, make_mlp
from fitorch import Learner


def test_regression_shape_mismatch_is_caught_instead_of_broadcasting():
    x = torch.randn(16, 4)
    y = torch.randn(16)  # model outputs (16, 1): mse would silently broadcast to (16, 16)
    with pytest.raises(ValueError, match=r"targets of the same shape as the outputs.*y.reshape"):
        Learner(loss="mse", verbose=0).fit(nn.Linear(4, 1), (x, y))
    with pytest.raises(TypeError, match="floating-point targets.*y.float()"):
        Learner(loss="bce_with_logits", verbose=0).fit(nn.Linear(4, 1), (x, (y > 0).long().unsqueeze(1)))


def test_model_without_loss_and_no_loss_given():
    x, y = make_classification(n=8)
    with pytest.raises(ValueError, match="No loss was given to Learner"):
        Learner(verbose=0).fit(make_mlp(), (x, y))
