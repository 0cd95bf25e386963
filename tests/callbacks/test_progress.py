"""ProgressBar: a bar per epoch (verbose=1), one line per epoch (verbose=2), nothing (verbose=0)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_classification, make_mlp
from fitorch import Learner
from fitorch.callbacks import ProgressBar


def test_progress_bar_verbose_1_shows_epochs_with_loss_and_metrics():
    x, y = make_classification(n=32)
    stream = io.StringIO()
    learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=1)
    learner.fit(make_mlp(), (x, y), epochs=2, validation_data=(x, y), callbacks=[ProgressBar(file=stream)])
    text = stream.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "val_accuracy: " in text and "loss: " in text


def test_progress_bar_verbose_2_prints_one_line_per_epoch_and_verbose_0_nothing():
    x, y = make_classification(n=32)
    stream = io.StringIO()
    Learner(loss="cross_entropy", verbose=2).fit(make_mlp(), (x, y), epochs=3, callbacks=[ProgressBar(file=stream)])
    lines = stream.getvalue().strip().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    silent = io.StringIO()
    Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=2, callbacks=[ProgressBar(file=silent)])
    assert silent.getvalue() == ""


PIPED = """
import sys
sys.path.insert(0, {tests!r})
from conftest import make_classification, make_mlp
from fitorch import Learner
x, y = make_classification(n=256)
learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose={verbose})
learner.fit(make_mlp(), (x, y), epochs=3, batch_size=4, validation_data=(x, y))
learner.evaluate(make_mlp(), (x, y))
"""


@pytest.mark.parametrize("verbose", [1, 2])
def test_without_a_terminal_each_epoch_is_one_line_on_standard_output(verbose):
    """Piped to a file, verbose=1 redrew a bar line with carriage returns a few times a second."""
    code = PIPED.format(tests=str(Path(__file__).resolve().parents[1]), verbose=verbose)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    lines = result.stdout.splitlines()
    assert [line.split(" - ")[0] for line in lines[:3]] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all("val_accuracy: " in line for line in lines[:3])
    assert "\r" not in result.stdout + result.stderr and "Epoch" not in result.stderr
    assert lines[3:] == (["Evaluate - " + lines[3].split(" - ", 1)[1]] if verbose == 1 else [])
