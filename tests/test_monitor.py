"""`Monitor`: the shared "did this value improve?" logic of the monitoring callbacks."""

from __future__ import annotations

import math

import pytest

from fitorch import EpochLogs, Monitor


def test_mode_auto_reads_the_name():
    assert Monitor("val_loss").mode == "min"
    assert Monitor("val_accuracy").mode == "max" and Monitor("top_k_accuracy").mode == "max"
    assert Monitor("val_f1").mode == "max" and Monitor("mae").mode == "min"


def test_min_delta_baseline_and_nan():
    watch = Monitor("val_loss", min_delta=0.1, baseline=1.0)
    assert not watch.update({"val_loss": 1.05})  # does not beat the baseline by min_delta
    assert watch.update({"val_loss": 0.85})
    assert not watch.update({"val_loss": 0.8})  # better, but by less than min_delta
    assert not watch.update({"val_loss": math.nan})
    assert watch.best == 0.85


def test_max_mode_and_state_round_trip():
    watch = Monitor("val_accuracy", mode="max")
    assert watch.update({"val_accuracy": 0.5}) and not watch.update({"val_accuracy": 0.4})
    copy = Monitor("val_accuracy", mode="max")
    copy.load_state_dict(watch.state_dict())
    assert copy.best == 0.5 and not copy.update({"val_accuracy": 0.45})


def test_a_missing_key_lists_what_the_logs_hold():
    with pytest.raises(
        ValueError, match=r"Monitor\(monitor='val_acc'\): no such value.*available: loss, lr.*validation"
    ):
        Monitor("val_acc").value({"loss": 1.0, "lr": 0.1})


class MainProcessSays:
    """Stands in for a learner under several processes, whose main process holds another value."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def broadcast(self, value: float) -> float:
        self.calls += 1
        return self.value


def test_agreed_value_is_the_main_processs_and_skips_epochs_without_validation():
    learner = MainProcessSays(0.25)
    assert Monitor("val_loss").agreed_value({"val_loss": 0.75}, learner) == 0.25
    assert Monitor("val_loss").agreed_value(EpochLogs({"loss": 1.0}, validated=False), learner) is None
    assert learner.calls == 1  # no collective call in an epoch that did not validate, on any process
