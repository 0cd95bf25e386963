"""Keras's tensorboard_test.py, ported to fitorch where the concept maps (see helpers.py; not ported: NOT_PORTED).

fitorch's TensorBoard names each scalar after its log key, so the learning rate is `epoch_lr` (Keras:
`epoch_learning_rate`), it writes the batch rate with the batch loss (`batch_lr`), and a histogram's tag is
the parameter's name (`1.weight`); the tests below assert these tags (docs/migrating.md).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fitorch import Learner
from fitorch.callbacks import LRScheduler, TensorBoard
from keras_conformance.helpers import ports

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

FILE = "tensorboard_test.py::TestTensorBoardV2::"
TRAIN = {"epoch_loss", "epoch_lr"}
VALIDATION = {"epoch_loss", "evaluation_loss_vs_iterations"}


def make_model():
    """Keras's Sequential([Input((10, 10, 1)), Flatten(), Dense(1)])."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 1))


def fit(callbacks, model=None, validation=True, epochs=2):
    """Keras's set-up: ten 10x10x1 images of ones, targets of ones, SGD and mse, batches of 2."""
    x, y = torch.ones(10, 10, 10, 1), torch.ones(10, 1)
    learner = Learner(loss="mse", optimizer="sgd", lr=0.01, verbose=0)
    validation_data = (x, y) if validation else None
    learner.fit(
        model or make_model(), (x, y), epochs=epochs, batch_size=2, validation_data=validation_data, callbacks=callbacks
    )


def tags(folder, kind="scalars"):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator.Tags()[kind] if kind != "graph" else accumulator.Graph()


@ports(FILE + "test_TensorBoard_basic", "different")
def test_tensorboard_basic(tmp_path):
    fit([TensorBoard(tmp_path / "tb")])
    assert set(tags(tmp_path / "tb" / "train")) == TRAIN
    assert set(tags(tmp_path / "tb" / "validation")) == VALIDATION


@ports(FILE + "test_TensorBoard_across_invocations", "different")
def test_tensorboard_across_invocations(tmp_path):
    board = TensorBoard(tmp_path / "tb")
    for _ in (1, 2):
        fit([board])
    assert set(tags(tmp_path / "tb" / "train")) == TRAIN
    assert set(tags(tmp_path / "tb" / "validation")) == VALIDATION


@ports(FILE + "test_TensorBoard_no_spurious_event_files")
def test_tensorboard_no_spurious_event_files(tmp_path):
    fit([TensorBoard(tmp_path / "tb")], validation=False)
    train_dir = tmp_path / "tb" / "train"
    with_events = {
        os.path.basename(folder)
        for folder, _, names in os.walk(train_dir)
        if any(name.startswith("events.out.") for name in names)
    }
    assert with_events == {"train"}


@ports(FILE + "test_TensorBoard_batch_metrics", "different")
def test_tensorboard_batch_metrics(tmp_path):
    fit([TensorBoard(tmp_path / "tb", update_freq=1)])
    assert set(tags(tmp_path / "tb" / "train")) == TRAIN | {"batch_loss", "batch_lr"}
    assert set(tags(tmp_path / "tb" / "validation")) == VALIDATION


@ports(FILE + "test_TensorBoard_learning_rate_schedules", "different")
def test_tensorboard_learning_rate_schedules(tmp_path):
    fit([LRScheduler("cosine", interval="step"), TensorBoard(tmp_path / "tb")], validation=False)
    assert set(tags(tmp_path / "tb" / "train")) == TRAIN


@ports(FILE + "test_TensorBoard_weight_histograms", "different")
def test_tensorboard_weight_histograms(tmp_path):
    fit([TensorBoard(tmp_path / "tb", histogram_freq=1)])
    assert set(tags(tmp_path / "tb" / "train")) == TRAIN
    assert set(tags(tmp_path / "tb" / "validation")) == VALIDATION
    assert set(tags(tmp_path / "tb" / "train", "histograms")) == {"1.weight", "1.bias"}


class Functional(nn.Module):
    """Keras's functional model of the same layers: a module of named parts rather than a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten, self.dense = nn.Flatten(), nn.Linear(100, 1)

    def forward(self, inputs):
        return self.dense(self.flatten(inputs))


@ports(FILE + "test_TensorBoard_write_sequential_model_no_input_shape")
@ports(FILE + "test_TensorBoard_write_sequential_model_with_input_shape")
@ports(FILE + "test_TensorBoard_write_model")
@pytest.mark.parametrize("make", [make_model, Functional], ids=["sequential", "functional"])
def test_tensorboard_writes_the_model_graph(tmp_path, make):
    # A torch model has no separate "built with an input shape" state: Keras's two Sequential cases are one here.
    fit([TensorBoard(tmp_path / "tb", write_graph=True)], model=make(), epochs=1)
    graph = tags(tmp_path / "tb" / "train", "graph")
    assert "Linear" in str(graph) and "Flatten" in str(graph)
