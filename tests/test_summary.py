"""fitorch.summary: layers, output shapes and parameter counts for conv nets and transformer blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fitorch import summary


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8 * 4 * 4, 10),
    )


def test_conv_net_shapes_and_counts_trainable_and_frozen():
    model = conv_net()
    for parameter in model[0].parameters():
        parameter.requires_grad_(False)
    table = summary(model, torch.randn(2, 3, 8, 8))
    shapes = {row.name: row.output_shape for row in table.rows}
    assert shapes == {
        "0": "[2, 8, 8, 8]",
        "1": "[2, 8, 8, 8]",
        "2": "[2, 8, 8, 8]",
        "3": "[2, 8, 4, 4]",
        "4": "[2, 128]",
        "5": "[2, 128]",
        "6": "[2, 10]",
    }
    conv = 3 * 8 * 9 + 8
    assert [(row.params, row.trainable) for row in table.rows[:2]] == [(conv, 0), (16, 16)]
    total = sum(p.numel() for p in model.parameters())
    assert (table.total_params, table.trainable_params, table.frozen_params) == (total, total - conv, conv)
    text = str(table)
    assert "0 (Conv2d)" in text and "[2, 8, 4, 4]" in text
    assert f"Total params: {total:,}" in text and f"Frozen params: {conv:,}" in text


def test_summary_changes_no_state():
    model = conv_net().train()
    model[5].eval()  # a mixed mode survives too
    before = {key: value.clone() for key, value in model.state_dict().items()}
    inputs = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    summary(model, inputs)
    assert torch.equal(torch.get_rng_state(), rng)  # eval mode: dropout drew nothing
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # batch-norm statistics untouched
    assert [module.training for module in model] == [True] * 5 + [False, True]


def test_transformer_encoder_shows_its_submodules():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    table = summary(model, torch.randn(2, 5, 16))
    rows = {row.name: row for row in table.rows}
    assert rows["layers.0.self_attn"].output_shape == "([2, 5, 16], None)"  # hooks ran: no fused fast path
    assert rows["layers.1.linear1"].output_shape == "[2, 5, 32]"
    assert rows["layers"].params == table.total_params == sum(p.numel() for p in model.parameters())
    assert rows["layers.0"].depth == 2 and rows["layers.0.self_attn.out_proj"].depth == 4
    assert not model.training


def test_depth_keyword_inputs_and_no_inputs():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh())

        def forward(self, features):
            return {"logits": self.body(features)}

    model = Keyword()
    table = summary(model, {"features": torch.zeros(3, 4)}, depth=1)
    assert [(row.name, row.output_shape) for row in table.rows] == [("body", "[3, 6]")]
    bare = summary(model)
    assert [row.output_shape for row in bare.rows] == ["-", "-", "-"] and "Output shape" not in str(bare)
    assert "pass example inputs" in str(bare)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        summary("model")
    with pytest.raises(ValueError, match="depth must be a positive int or None, got 0"):
        summary(nn.Linear(1, 1), depth=0)
