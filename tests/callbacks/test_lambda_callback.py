"""LambdaCallback: hooks from plain functions; other keyword arguments kept as attributes (as in Keras)."""

from __future__ import annotations

import pytest

from conftest import make_classification, make_mlp
from fitorch import Learner
from fitorch.callbacks import LambdaCallback


def test_lambda_callback_rejects_names_that_are_no_event_with_the_nearest_one():
    with pytest.raises(TypeError, match="on_epoch_ending is not a fitorch event.*Did you mean 'on_epoch_end'"):
        LambdaCallback(on_epoch_ending=print)


def test_an_event_that_is_not_callable_is_refused():
    with pytest.raises(TypeError, match="LambdaCallback: on_epoch_end must be a function, got 3."):
        LambdaCallback(on_epoch_end=3)


def test_other_keyword_arguments_become_attributes_the_hooks_can_use():
    x, y = make_classification(n=16)
    seen = LambdaCallback(losses=[], on_epoch_end=lambda epoch, logs: seen.losses.append(logs["loss"]))
    history = Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=3, callbacks=[seen])
    assert seen.losses == history.history["loss"]
