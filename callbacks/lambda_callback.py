"""`LambdaCallback`: hooks from plain functions, for quick experiments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fitorch import EVENTS, Callback
from fitorch.checks import check_callable


class LambdaCallback(Callback):
    """A callback built from functions, one per event.

    As in Keras, a keyword argument that is not an event is kept as an attribute of the callback
    (`LambdaCallback(on_epoch_end=..., seen=[])` has `.seen`), for functions that want state. A
    name that starts with `on_` but is no event is refused, with the nearest event name, the same
    check a `Callback` subclass gets: it would never be called.

    Args:
        **hooks: event name to function, called with the event's arguments
            (`on_epoch_end=lambda epoch, logs: ...`); other names become attributes.

    Raises:
        TypeError: an `on_` name that is not an event, or an event whose value is not callable.

    Example:
        >>> printer = LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(self, **hooks: Callable[..., Any] | Any) -> None:
        # A throwaway subclass gets exactly the check (and the did-you-mean) a Callback subclass gets.
        type("LambdaCallback", (Callback,), {name: None for name in hooks if name.startswith("on_")})
        for name, value in hooks.items():
            if name in EVENTS:
                check_callable(value, name, owner="LambdaCallback")
            setattr(self, name, value)
