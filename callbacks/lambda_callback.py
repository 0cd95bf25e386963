"""`LambdaCallback`: hooks from plain functions, for quick experiments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fitorch import EVENTS, Callback


class LambdaCallback(Callback):
    """A callback built from functions, one per event.

    Args:
        **hooks: event name to function, called with the event's arguments
            (`on_epoch_end=lambda epoch, logs: ...`).

    Raises:
        TypeError: an argument that is not an event name, or a value that is not callable.

    Example:
        >>> printer = LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        for event, hook in hooks.items():
            if event not in EVENTS:
                raise TypeError(f"LambdaCallback: {event!r} is not an event. Events: {', '.join(EVENTS)}.")
            if not callable(hook):
                raise TypeError(f"LambdaCallback: {event} must be callable, got {hook!r}.")
            setattr(self, event, hook)
