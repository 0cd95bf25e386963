"""LambdaCallback: hooks from plain functions."""

from __future__ import annotations

import pytest

from fitorch.callbacks import LambdaCallback


def test_lambda_callback_rejects_unknown_events():
    with pytest.raises(TypeError, match="'on_epoch_ending' is not an event"):
        LambdaCallback(on_epoch_ending=print)
