"""`History`: the per-epoch record that `fit` returns."""

from __future__ import annotations

from typing import Any

from fitorch import Callback


class History(Callback):
    """Records the logs of every epoch; `fit` returns it.

    `history.history` maps each log key to a list with one value per epoch (as in Keras), and
    `history.epoch` lists the epoch indices. The learner adds one to every `fit`; pass your own
    instance in `callbacks` to keep one record across several calls.

    Example:
        >>> history = learner.fit(model, (x, y), epochs=3, validation_split=0.2)  # doctest: +SKIP
        >>> history.history["val_loss"]  # doctest: +SKIP
        [0.71, 0.52, 0.47]
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def state_dict(self) -> dict[str, Any]:
        """The record so far, so that a resumed run continues the same history."""
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {key: list(values) for key, values in state.get("history", {}).items()}
        self.epoch = list(state.get("epoch", []))
