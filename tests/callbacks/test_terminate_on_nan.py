"""TerminateOnNaN: stops at the first non-finite loss, naming its epoch, batch and step; or fails the fit there."""

from __future__ import annotations

import logging

import pytest

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import LambdaCallback, TerminateOnNaN


class CountBatches(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, batch, logs):
        self.count += 1


def fit(stopper, poison_sample=None, epochs=2, extra=()):
    x, y = make_classification(n=48)
    if poison_sample is not None:
        x[poison_sample, 0] = float("nan")
    counter = CountBatches()
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    history = learner.fit(
        make_mlp(), (x, y), epochs=epochs, batch_size=4, shuffle=False, callbacks=[stopper, counter, *extra]
    )
    return history, counter.count


def test_stops_at_the_first_non_finite_loss(caplog):
    stopper = TerminateOnNaN()
    with caplog.at_level(logging.WARNING, logger="fitorch"):
        history, batches = fit(stopper, poison_sample=9)  # sample 9 lies in batch 2 of epoch 0
    assert batches == 3
    assert stopper.stopped_at == {"epoch": 0, "batch": 2, "global_step": 3}
    assert len(history.epoch) == 1
    assert "not finite at epoch 0 (0-based), batch 2, global step 3" in caplog.text


def test_checking_every_n_batches_stops_late_but_names_the_first_bad_batch():
    stopper = TerminateOnNaN(check_every=4)
    _, batches = fit(stopper, poison_sample=9)
    assert batches == 4  # the flags of batches 0-3 are read together after batch 3
    assert stopper.stopped_at == {"epoch": 0, "batch": 2, "global_step": 3}


def test_finite_losses_train_to_the_end():
    stopper = TerminateOnNaN(check_every=5)
    history, batches = fit(stopper)
    assert batches == 24 and stopper.stopped_at is None and len(history.epoch) == 2


@pytest.mark.parametrize(
    ("check_every", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_check_every_fails_at_construction(check_every, error):
    with pytest.raises(error, match="check_every must be a positive int, got"):
        TerminateOnNaN(check_every)


def test_raise_error_fails_the_fit_at_the_first_bad_batch_without_ending_the_epoch():
    ends = []
    watcher = LambdaCallback(
        on_epoch_end=lambda epoch, logs: ends.append(("epoch", epoch)),
        on_train_end=lambda logs: ends.append(("train", type(watcher.learner.exception).__name__)),
    )
    stopper = TerminateOnNaN(raise_error=True)
    with pytest.raises(
        RuntimeError, match=r"NaN or Inf loss encountered at epoch 0 \(0-based\), batch 2, global step 3 \(loss nan\)"
    ):
        fit(stopper, poison_sample=9, extra=[watcher])
    assert ends == [("train", "RuntimeError")]  # no epoch end; on_train_end sees the failure
    assert stopper.stopped_at == {"epoch": 0, "batch": 2, "global_step": 3}


def test_raise_error_must_be_a_bool():
    with pytest.raises(TypeError, match="raise_error must be True or False, got 1"):
        TerminateOnNaN(raise_error=1)
