"""Argument checks shared by the learner, the built-in callbacks and users' own callbacks.

One message shape everywhere: `Owner: name must be <what>, got <value>.`, a `TypeError` when the
value has the wrong type and a `ValueError` when it has the right type but a bad value. Each check
returns the value (converted where that is the point: a path becomes a `str`, a number a `float`),
so a constructor reads `self.patience = check_int(patience, "patience", minimum=0, owner="EarlyStopping")`.

`bool` is not accepted where an int or a number is asked for (`patience=True` is a slip, never 1),
and an int or a number is not accepted where a bool is.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_folder_creatable",
    "check_int",
    "check_number",
    "check_path",
    "check_str",
]


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def _fail(error: type[Exception], owner: str | None, name: str, what: str, value: Any) -> Exception:
    return error(f"{_prefix(owner)}{name} must be {what}, got {value!r}.")


def _range_words(kind: str, minimum: float | None, maximum: float | None, open_min: bool, open_max: bool) -> str:
    """`a positive int`, `an int >= 0`, `a number in (0, 1)`, ... for the message."""
    article = "an" if kind == "int" else "a"
    if minimum is None and maximum is None:
        return f"{article} {kind}"
    if maximum is None:
        if minimum == 0 and open_min:
            return f"a positive {kind}"
        if kind == "int" and minimum == 1 and not open_min:
            return "a positive int"
        return f"{article} {kind} {'>' if open_min else '>='} {minimum:g}"
    if minimum is None:
        return f"{article} {kind} {'<' if open_max else '<='} {maximum:g}"
    return f"{article} {kind} in {'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"


def _in_range(value: float, minimum: float | None, maximum: float | None, open_min: bool, open_max: bool) -> bool:
    if minimum is not None and (value <= minimum if open_min else value < minimum):
        return False
    return maximum is None or (value < maximum if open_max else value <= maximum)


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    owner: str | None = None,
) -> int | None:
    """Return `value` when it is an int (not a bool) in `[minimum, maximum]`.

    Args:
        value: what the user passed.
        name: the argument's name, for the message.
        minimum: the smallest allowed value (inclusive), or None.
        maximum: the largest allowed value (inclusive), or None.
        allow_none: accept None (and return it).
        owner: the class or function the argument belongs to, for the message.

    Raises:
        TypeError: `value` is not an int (a bool is not an int here).
        ValueError: `value` lies outside the range.

    Example:
        >>> check_int(3, "patience", minimum=0, owner="EarlyStopping")
        3
        >>> check_int(-1, "patience", minimum=0, owner="EarlyStopping")
        Traceback (most recent call last):
        ValueError: EarlyStopping: patience must be an int >= 0, got -1.
    """
    if value is None and allow_none:
        return None
    what = _range_words("int", minimum, maximum, False, False) + (" or None" if allow_none else "")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(TypeError, owner, name, what, value)
    if not _in_range(value, minimum, maximum, False, False):
        raise _fail(ValueError, owner, name, what, value)
    return value


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
    allow_none: bool = False,
    owner: str | None = None,
) -> float | None:
    """Return `value` as a float when it is a finite real number (not a bool) in the range.

    Args:
        value: what the user passed (an int, a float, a NumPy scalar, ...).
        name: the argument's name, for the message.
        minimum: the lower bound, or None; excluded when `open_min`.
        maximum: the upper bound, or None; excluded when `open_max`.
        open_min: the lower bound itself is not allowed (`minimum=0, open_min=True`: positive).
        open_max: the upper bound itself is not allowed.
        allow_none: accept None (and return it).
        owner: the class or function the argument belongs to, for the message.

    Raises:
        TypeError: `value` is not a real number.
        ValueError: `value` is NaN, infinite, or outside the range.

    Example:
        >>> check_number(0.5, "factor", minimum=0, maximum=1, open_min=True, open_max=True)
        0.5
    """
    if value is None and allow_none:
        return None
    what = _range_words("number", minimum, maximum, open_min, open_max) + (" or None" if allow_none else "")
    if not isinstance(value, numbers.Real) or isinstance(value, bool):  # NumPy scalars are Real too
        raise _fail(TypeError, owner, name, what, value)
    number = float(value)
    if not math.isfinite(number):
        raise _fail(ValueError, owner, name, f"finite ({what})", value)
    if not _in_range(number, minimum, maximum, open_min, open_max):
        raise _fail(ValueError, owner, name, what, value)
    return number


def check_bool(value: Any, name: str, *, owner: str | None = None) -> bool:
    """Return `value` when it is True or False.

    Raises:
        TypeError: anything else (`1`, `"yes"`, None).

    Example:
        >>> check_bool(True, "save_best_only", owner="ModelCheckpoint")
        True
    """
    if not isinstance(value, bool):
        raise _fail(TypeError, owner, name, "True or False", value)
    return value


def check_choice(value: T, name: str, choices: Collection[Any], *, owner: str | None = None) -> T:
    """Return `value` when it is one of `choices`.

    Raises:
        TypeError: `value` has a type none of the choices has (`verbose=True` where 0, 1, 2 are the choices).
        ValueError: `value` is not among them; the message lists them.

    Example:
        >>> check_choice("max", "mode", ("auto", "min", "max"), owner="EarlyStopping")
        'max'
    """
    listed = "one of " + ", ".join(repr(choice) for choice in choices)
    if type(value) not in {type(choice) for choice in choices}:
        raise _fail(TypeError, owner, name, listed, value)
    if value not in choices:
        raise _fail(ValueError, owner, name, listed, value)
    return value


def check_str(value: Any, name: str, *, allow_empty: bool = False, owner: str | None = None) -> str:
    """Return `value` when it is a string (non-empty unless `allow_empty`).

    Raises:
        TypeError: `value` is not a string.
        ValueError: `value` is empty.
    """
    what = "a string" if allow_empty else "a non-empty string"
    if not isinstance(value, str):
        raise _fail(TypeError, owner, name, what, value)
    if not value and not allow_empty:
        raise _fail(ValueError, owner, name, what, value)
    return value


def check_path(value: Any, name: str, *, allow_none: bool = False, owner: str | None = None) -> str | None:
    """Return `value` as a `str` path when it is a non-empty `str` or `os.PathLike`.

    Raises:
        TypeError: `value` is not a path.
        ValueError: `value` is an empty path (`""` would mean the current folder, never what was meant).

    Example:
        >>> check_path("runs/exp1", "run_dir")
        'runs/exp1'
    """
    if value is None and allow_none:
        return None
    what = "a path (str or os.PathLike)" + (" or None" if allow_none else "")
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(TypeError, owner, name, what, value)
    path = os.fspath(value)
    if not isinstance(path, str):  # a bytes path
        raise _fail(TypeError, owner, name, what, value)
    if not path:
        raise _fail(ValueError, owner, name, "a non-empty path", value)
    return path


def check_folder_creatable(path: str, name: str, *, owner: str | None = None) -> str:
    """Return `path` when it is a folder, or a folder that can be created where it is (checked at the start of a fit).

    The nearest existing ancestor must be a writable folder: a checkpoint path under a file, or on a
    read-only disk, would otherwise fail only at the first save, after an epoch of training.

    Raises:
        ValueError: an ancestor is a file, or `path` itself is a file.
        PermissionError: the nearest existing folder is not writable.
    """
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == os.path.abspath(path) else f"is under the file {existing!r}"
        raise ValueError(
            f"{_prefix(owner)}{name} {path!r} {where}, so no folder can be made there; choose another path."
        )
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{_prefix(owner)}{name} {path!r}: the folder {existing!r} is not writable.")
    return path


def check_callable(
    value: Any, name: str, *, what: str = "a function", allow_none: bool = False, owner: str | None = None
) -> Any:
    """Return `value` when it can be called (a function, a lambda, a class, an object with `__call__`).

    Args:
        value: what the user passed.
        name: the argument's name, for the message.
        what: what the argument should be, for the message (`"a function (epoch, lr) -> rate"`).
        allow_none: accept None (and return it).
        owner: the class or function the argument belongs to, for the message.

    Raises:
        TypeError: `value` cannot be called.

    Example:
        >>> check_callable(print, "on_epoch_end", owner="LambdaCallback")  # doctest: +ELLIPSIS
        <built-in function print>
    """
    if value is None and allow_none:
        return None
    if not callable(value):
        raise _fail(TypeError, owner, name, what + (" or None" if allow_none else ""), value)
    return value
