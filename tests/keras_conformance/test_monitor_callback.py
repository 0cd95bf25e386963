"""Keras's monitor_callback_test.py, ported to fitorch's `Monitor` (see helpers.py for the commit and outcomes)."""

from __future__ import annotations

import pytest
import torch

from conftest import Script
from fitorch import Learner, Monitor
from keras_conformance.helpers import dense, ports

FILE = "monitor_callback_test.py::MonitorCallbackTest::"


@ports(FILE + "test_monitor_op_logic")
def test_monitor_op_logic():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 5, generator=generator), torch.rand(10, 1, generator=generator)
    learner = Learner(loss="mae", optimizer="adam", metrics=["mse"], verbose=0)
    extra = [Script(key, [0.5] * 2) for key in ("acc", "val_accuracy", "hinge", "f1_score")]
    history = learner.fit(dense(5, 1, 1), (x, y), epochs=2, batch_size=5, validation_data=(x, y), callbacks=extra)
    cases = [
        ("max", "val_mse", "max"),
        ("min", "val_loss", "min"),
        ("auto", "val_mse", "min"),
        ("auto", "loss", "min"),
        ("auto", "acc", "max"),
        ("auto", "val_accuracy", "max"),
        ("auto", "hinge", "min"),
        ("auto", "f1_score", "max"),
    ]
    logs = {key: values[-1] for key, values in history.history.items()}
    for mode, monitor, expected in cases:
        watch = Monitor(monitor, mode)
        watch.value(logs)  # each is in the logs of the fit
        assert watch.mode == expected
    with pytest.raises(ValueError):
        Monitor("unknown").value(logs)


@ports(FILE + "test_min_delta")
def test_min_delta():
    watch = Monitor(mode="max", min_delta=0.5)

    def is_improvement(value, reference):
        watch.best = reference
        return watch.is_improvement(value)

    assert is_improvement(0.75, 0)
    assert is_improvement(0.5, None)
    assert not is_improvement(0.5, 0)
    assert not is_improvement(0.2, 0.5)
