"""ModelSummary: the table is printed once, at the start of fit, before any training."""

from __future__ import annotations

import io

import pytest

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import ModelSummary


class FirstBatch(Callback):
    def __init__(self, out: io.StringIO) -> None:
        self.out = out
        self.printed_before_training: bool | None = None

    def on_train_batch_begin(self, batch, logs):
        if self.printed_before_training is None:
            self.printed_before_training = "Total params" in self.out.getvalue()


def test_printed_at_the_start_of_fit_even_when_silent():
    x, y = make_classification(n=16)
    out = io.StringIO()
    probe = FirstBatch(out)
    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(make_mlp(), (x, y), epochs=2, batch_size=8, callbacks=[ModelSummary(x[:2], file=out), probe])
    text = out.getvalue()
    assert probe.printed_before_training
    assert text.count("Total params: 195") == 1
    assert "2 (Linear)" in text and "[2, 3]" in text


def test_without_inputs_the_table_has_no_shapes():
    x, y = make_classification(n=8)
    out = io.StringIO()
    callback = ModelSummary(file=out)
    Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=1, callbacks=[callback])
    assert callback.summary.total_params == 195 and "Output shape" not in out.getvalue()


def test_bad_depth_fails_at_construction():
    with pytest.raises(ValueError, match="depth must be a positive int or None, got -1"):
        ModelSummary(depth=-1)
