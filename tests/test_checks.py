"""`fitorch.checks` and `fitorch.Every`, and the rule they enforce on every public constructor:
a value of the wrong type raises `TypeError`, a bad value of the right type raises `ValueError`,
both with the message shape `Owner: name must be ..., got X.`"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import numpy as np
import pytest

import fitorch
import fitorch.callbacks
from fitorch import Every, Learner
from fitorch.checks import check_bool, check_callable, check_choice, check_int, check_number, check_path, check_str


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: check_int(True, "patience", owner="EarlyStopping"),
            TypeError,
            "EarlyStopping: patience must be an int, got True.",
        ),
        (lambda: check_int(2.0, "k", minimum=1), TypeError, "k must be a positive int, got 2.0."),
        (lambda: check_int(0, "k", minimum=1), ValueError, "k must be a positive int, got 0."),
        (lambda: check_int(5, "n", minimum=0, maximum=3), ValueError, "n must be an int in [0, 3], got 5."),
        (lambda: check_int("1", "n", allow_none=True), TypeError, "n must be an int or None, got '1'."),
        (lambda: check_number("0.1", "lr"), TypeError, "lr must be a number, got '0.1'."),
        (lambda: check_number(False, "lr"), TypeError, "lr must be a number, got False."),
        (
            lambda: check_number(float("nan"), "lr", minimum=0),
            ValueError,
            "lr must be finite (a number >= 0), got nan.",
        ),
        (
            lambda: check_number(0, "f", minimum=0, maximum=1, open_min=True, open_max=True),
            ValueError,
            "f must be a number in (0, 1), got 0.",
        ),
        (
            lambda: check_number(-1, "clip", minimum=0, open_min=True),
            ValueError,
            "clip must be a positive number, got -1.",
        ),
        (lambda: check_bool(1, "flag", owner="X"), TypeError, "X: flag must be True or False, got 1."),
        (lambda: check_choice("up", "mode", ("min", "max")), ValueError, "mode must be one of 'min', 'max', got 'up'."),
        (lambda: check_callable(3, "hook", owner="X"), TypeError, "X: hook must be a function, got 3."),
        (lambda: check_str(3, "monitor"), TypeError, "monitor must be a non-empty string, got 3."),
        (lambda: check_str("", "monitor"), ValueError, "monitor must be a non-empty string, got ''."),
        (lambda: check_path(3, "run_dir"), TypeError, "run_dir must be a path (str or os.PathLike), got 3."),
        (lambda: check_path("", "run_dir"), ValueError, "run_dir must be a non-empty path, got ''."),
    ],
)
def test_checks_raise_the_right_type_with_one_message_shape(call, error, message):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message


def test_checks_return_the_value_converted_where_that_is_the_point():
    assert check_int(3, "n") == 3
    assert check_number(np.float32(0.5), "x") == 0.5 and isinstance(check_number(1, "x"), float)
    assert check_path(Path("runs") / "a", "run_dir") == "runs/a"
    assert check_int(None, "n", allow_none=True) is None
    assert check_callable(len, "f") is len and check_callable(None, "f", allow_none=True) is None


def test_every_parses_keras_frequencies_and_fires_on_real_steps_only():
    assert Every.parse("epoch", "save_freq").per_epoch
    assert Every.parse(5, "save_freq") == Every.parse(5, "save_freq") or True  # constructible twice
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive int"):
        Every.parse("batch", "save_freq")
    with pytest.raises(TypeError, match="save_freq must be 'epoch' or a positive int"):
        Every.parse(2.5, "save_freq")

    class Step:  # what step_due reads of a learner
        def __init__(self, step, taken):
            self.global_step, self.step_taken = step, taken

    every_two = Every(2)
    assert [every_two.step_due(Step(step, True)) for step in range(1, 6)] == [False, True, False, True, False]
    assert not every_two.step_due(Step(2, False))  # inside a window, or a skipped fp16 step
    assert Every(3, "epoch").epoch_due(2) and not Every(3, "epoch").epoch_due(3)


# ---------------------------------------------------------------------------- every public constructor

WRONG_TYPE_FOR = {"int": "3", "float": "0.5", "bool": "yes", "str": 3, "PathLike": 3}
# A bad value of the right type for each argument that has a range or a set of choices.
BAD_VALUES = {
    "Learner": {
        "lr": -1.0,
        "grad_accum_steps": 0,
        "grad_clip": 0.0,
        "seed": -1,
        "verbose": 5,
        "run_dir": "",
        "num_workers": -1,
        "mixed_precision": "fp8",
    },
    "EarlyStopping": {"patience": -1, "start_from_epoch": -1, "min_delta": -0.1, "mode": "up", "monitor": ""},
    "ReduceLROnPlateau": {
        "factor": 1.0,
        "patience": -1,
        "cooldown": -1,
        "min_lr": -1.0,
        "min_delta": -1.0,
        "mode": "x",
    },
    "ModelCheckpoint": {"keep": 0, "save_freq": 0, "mode": "x", "filepath": "", "monitor": ""},
    "BackupAndRestore": {"save_freq": 0, "backup_dir": ""},
    "TensorBoard": {"update_freq": 0, "histogram_freq": -1, "log_dir": ""},
    "TerminateOnNaN": {"check_every": 0},
    "LabelSmoothing": {"smoothing": 1.0},
    "ModelSummary": {"depth": 0},
    "CSVLogger": {"separator": ";;", "filename": ""},
    "FileLogger": {"filename": ""},
    "LRScheduler": {"interval": "week", "warmup": -1, "warmup_mode": "cubic", "warmup_start": -1.0},
    "Monitor": {"min_delta": -1.0, "mode": "x", "monitor": ""},
    "TopKAccuracy": {"k": 0},
    "Accuracy": {"threshold": 2.0},
}
REQUIRED = {
    "CSVLogger": {"filename": "m.csv"},
    "LRScheduler": {"schedule": "cosine"},
    "BatchMean": {"fn": len},
    "Every": {"n": 1},
}
NOT_CONFIGURATION = {
    "Summary",
    "Preempted",
    "LRFindResult",
    "RunDirLocked",
}  # what fitorch builds or raises, not user settings


def _simple_kind(annotation: str) -> str | None:
    """`int`, `float`, `bool`, `str` or `PathLike` when an argument takes only that (and None); else None."""
    parts = {part.strip() for part in annotation.split("|")} - {"None"}
    if parts <= {"str", "os.PathLike"} and "os.PathLike" in parts:
        return "PathLike"
    if len(parts) == 1 and (kind := next(iter(parts))) in ("int", "float", "bool", "str"):
        return kind
    return None


def _constructors():
    for module in (fitorch, fitorch.callbacks):
        for name in module.__all__:
            cls = getattr(module, name)
            if name in NOT_CONFIGURATION or not isinstance(cls, type) or issubclass(cls, typing.Protocol):
                continue
            if cls.__init__ is not object.__init__:
                yield name, cls


def _arguments(cls):
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        kind = _simple_kind(str(parameter.annotation))
        if kind is not None:
            yield parameter.name, kind


CASES = [(name, cls, argument, kind) for name, cls in _constructors() for argument, kind in _arguments(cls)]


@pytest.mark.parametrize(("name", "cls", "argument", "kind"), CASES, ids=[f"{c[0]}.{c[2]}" for c in CASES])
def test_a_wrong_type_is_a_type_error_naming_the_argument(name, cls, argument, kind):
    with pytest.raises(TypeError, match=rf"{argument}\b.* must be .*, got "):
        cls(**{**REQUIRED.get(name, {}), argument: WRONG_TYPE_FOR[kind]})


BAD_CASES = [(name, argument, value) for name, values in BAD_VALUES.items() for argument, value in values.items()]


@pytest.mark.parametrize(("name", "argument", "value"), BAD_CASES, ids=[f"{c[0]}.{c[1]}" for c in BAD_CASES])
def test_a_bad_value_is_a_value_error_naming_the_argument(name, argument, value):
    cls = getattr(fitorch, name, None) or getattr(fitorch.callbacks, name)
    with pytest.raises(ValueError, match=rf"{argument}\b.* must be .*, got "):
        cls(**{**REQUIRED.get(name, {}), argument: value})


def test_the_table_covers_every_constructor_with_simple_arguments():
    covered = {name for name, *_ in CASES}
    assert covered >= {"Learner", "EarlyStopping", "ModelCheckpoint", "TensorBoard", "LRScheduler", "Monitor"}
    assert Learner in {cls for _, cls, *_ in CASES}
