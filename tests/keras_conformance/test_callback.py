"""Keras's callback_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import torch
from torch import nn

from fitorch import Callback, Learner
from keras_conformance.helpers import ports


class CountingModel(nn.Module):
    """Counts its forward passes in a buffer, as the Keras test's model counts in a non-trainable variable."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("iterations", torch.zeros((), dtype=torch.int64))

    def forward(self, inputs):
        self.iterations += 1
        return inputs * self.scale


@ports("callback_test.py::CallbackTest::test_model_state_is_current_on_epoch_end")
def test_model_state_is_current_at_each_batch_end():
    seen = []

    class Check(Callback):
        def on_train_batch_end(self, batch, logs):
            seen.append((int(self.model.iterations), batch + 1))

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, generator=generator), torch.rand(8, 1, generator=generator)
    Learner(loss="mse", optimizer="sgd", verbose=0).fit(CountingModel(), (x, y), batch_size=2, callbacks=[Check()])
    assert seen and all(iterations == expected for iterations, expected in seen)
