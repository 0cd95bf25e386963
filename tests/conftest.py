"""Shared fixtures: tiny synthetic data and models, so every test trains something real in milliseconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fitorch import Callback

# Tests are tiny: one thread is faster than two that wait on each other, and steadier on a busy machine.
torch.set_num_threads(1)


def make_classification(n: int = 64, features: int = 8, classes: int = 3, seed: int = 0):
    """Linearly separable-ish data: the class is the argmax of a fixed random projection."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    projection = torch.randn(features, classes, generator=generator)
    return x, (x @ projection).argmax(dim=1)


def make_mlp(features: int = 8, classes: int = 3, hidden: int = 16, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(features, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, classes))
    return nn.Sequential(*layers)


class AutocastProbe(nn.Module):
    """Records, at every forward, whether autocast is on: the learner's precision must hold in every call."""

    def __init__(self):
        super().__init__()
        self.net, self.autocast = make_mlp(), []

    def forward(self, inputs):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.net(inputs)


class Recorder(Callback):
    """Records every event it receives, in order, with its first argument where that is an index."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def _record(self, name, *args):
        self.events.append(name if not args or not isinstance(args[0], int) else f"{name}({args[0]})")

    def on_train_begin(self, logs):
        self._record("on_train_begin")

    def on_train_end(self, logs):
        self._record("on_train_end")

    def on_epoch_begin(self, epoch, logs):
        self._record("on_epoch_begin", epoch)

    def on_epoch_end(self, epoch, logs):
        self._record("on_epoch_end", epoch)

    def on_train_batch_begin(self, batch, logs):
        self._record("on_train_batch_begin", batch)

    def on_train_batch_end(self, batch, logs):
        self._record("on_train_batch_end", batch)

    def on_before_backward(self, loss):
        self._record("on_before_backward")

    def on_after_backward(self):
        self._record("on_after_backward")

    def on_before_optimizer_step(self, optimizer):
        self._record("on_before_optimizer_step")

    def on_optimizer_step(self):
        self._record("on_optimizer_step")

    def on_test_begin(self, logs):
        self._record("on_test_begin")

    def on_test_end(self, logs):
        self._record("on_test_end")

    def on_test_batch_begin(self, batch, logs):
        self._record("on_test_batch_begin", batch)

    def on_test_batch_end(self, batch, logs):
        self._record("on_test_batch_end", batch)

    def on_predict_begin(self, logs):
        self._record("on_predict_begin")

    def on_predict_end(self, logs):
        self._record("on_predict_end")

    def on_predict_batch_begin(self, batch, logs):
        self._record("on_predict_batch_begin", batch)

    def on_predict_batch_end(self, batch, logs):
        self._record("on_predict_batch_end", batch)

    def on_exception(self, exception):
        self._record("on_exception")


class Script(Callback):
    """Writes scripted values into the epoch logs, for the monitoring callbacks listed after it to read."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs):
        logs[self.key] = self.values[epoch]


class StopAtStep(Callback):
    """Stands in for a crash: raises right after the optimizer step `step` (and whatever saved there)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step and self.learner.sync_gradients:
            raise KeyboardInterrupt(f"simulated crash at step {self.step}")


@pytest.fixture
def data():
    return make_classification()


@pytest.fixture
def recorder():
    return Recorder()
