"""`EarlyStopping`: stop training when a monitored value stops improving (Keras semantics).

It owns the patience counter, the best value and, when asked, a copy of the best weights. The
"did this improve?" decision is `fitorch.Monitor`'s, shared with the other monitoring callbacks.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from fitorch import Callback, Monitor
from fitorch.checks import check_bool, check_int, check_number

logger = logging.getLogger("fitorch")


class EarlyStopping(Callback):
    """Stops `fit` when `monitor` has not improved for `patience` epochs.

    The semantics are Keras's: every epoch from `start_from_epoch` on, the counter `wait` grows by
    one, and resets to 0 when the value beats the best so far by more than `min_delta` (and, when
    `baseline` is given, beats the baseline too). Training stops at the end of the epoch where
    `wait >= patience` (never after the first epoch). A missing `monitor` key is an error that lists
    the keys the logs hold.

    What survives a resume: `state_dict()` holds `best`, `wait`, `best_epoch` and `stopped_epoch`
    as JSON and, with `restore_best_weights`, the best weights as CPU tensors under `best_weights`
    (fitorch checkpoints store tensors in safetensors; `json.dumps` needs them left out). A state
    without them (an older or hand-made one) still resumes the counters; the weights restored at the
    end are then the best seen since the resume, and a warning says so.

    Args:
        monitor: the log key to watch, e.g. `"val_loss"` or `"val_accuracy"`.
        min_delta: the smallest change that counts as an improvement (absolute, >= 0).
        patience: epochs without improvement after which training stops (0: stop at the first one).
        mode: `"min"`, `"max"`, or `"auto"` (max for accuracy-like names, else min).
        baseline: a value the monitored quantity must beat; until it does, `wait` keeps growing.
        restore_best_weights: at the end of `fit`, load the weights of the best epoch into the model.
        start_from_epoch: epochs (0-based index) to let pass before watching, e.g. during warm-up.
        stay_stopped: when a fit resumes a checkpoint of a run this callback stopped (to more epochs,
            say), keep it stopped: no epoch trains. False trains on, with the patience counted afresh.

    Raises:
        ValueError: a negative `patience` or `start_from_epoch`, a negative `min_delta`, an unknown
            `mode`, a non-numeric `baseline`.

    Example:
        >>> stopper = EarlyStopping(monitor="val_accuracy", patience=5, restore_best_weights=True)
        >>> learner.fit(model, train, epochs=100, validation_data=val, callbacks=[stopper])  # doctest: +SKIP
        >>> stopper.stopped_epoch, stopper.best  # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        stay_stopped: bool = True,
    ) -> None:
        owner = "EarlyStopping"
        check_int(patience, "patience", minimum=0, owner=owner)
        check_int(start_from_epoch, "start_from_epoch", minimum=0, owner=owner)
        check_number(baseline, "baseline", allow_none=True, owner=owner)
        self.monitored = Monitor(monitor, mode, min_delta, owner="EarlyStopping")
        # A second Monitor with no best of its own answers "does this value beat the baseline?".
        self.baseline_watch = (
            Monitor(monitor, self.monitored.mode, min_delta, baseline, owner="EarlyStopping")
            if baseline is not None
            else None
        )
        self.monitor, self.mode, self.min_delta, self.baseline = (
            monitor,
            self.monitored.mode,
            float(min_delta),
            baseline,
        )
        self.patience, self.start_from_epoch = patience, start_from_epoch
        self.restore_best_weights = check_bool(restore_best_weights, "restore_best_weights", owner=owner)
        self.stay_stopped = check_bool(stay_stopped, "stay_stopped", owner=owner)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_weights_epoch: int | None = None
        self._resumed = False
        self._reset()

    @property
    def best(self) -> float | None:
        """The best value seen so far (None before the first watched epoch)."""
        return self.monitored.best

    def _reset(self) -> None:
        self.monitored.best = None
        self.wait, self.best_epoch, self.stopped_epoch = 0, 0, 0
        self.best_weights, self.best_weights_epoch = None, None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self._resumed:  # a fresh fit starts afresh; a resumed one keeps the loaded counters
            self._reset()
        elif self.stopped_epoch > 0 and self.stay_stopped:
            # The run this checkpoint belongs to was stopped: resuming it (to more epochs) must not train on.
            logger.info(
                "EarlyStopping: this run stopped after epoch %d; it stays stopped (stay_stopped=False trains on).",
                self.stopped_epoch + 1,
            )
            self.learner.stop_training = True
        elif self.stopped_epoch > 0:  # asked to train on: the patience counts afresh from here
            self.wait, self.stopped_epoch = 0, 0
        self._resumed = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        # The main process's value (raising, with the keys there are, when it is missing), so that every
        # process keeps the same weights and all stop together.
        current = self.monitored.agreed_value(logs, self.learner)
        if current is None:  # an epoch without validation (fit's validation_freq): nothing to judge
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self._keep_weights(epoch)  # until something improves, the first watched weights are the best
        self.wait += 1
        if self.monitored.observe(current):
            self.best_epoch = epoch
            if self.restore_best_weights:
                self._keep_weights(epoch)
            if self.baseline_watch is None or self.baseline_watch.is_improvement(current):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.learner.stop_training = True

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.stopped_epoch > 0:
            logger.info(
                "EarlyStopping: stopped after epoch %d (0-based %d): %s did not improve on %.6g for %d epochs.",
                self.stopped_epoch + 1,
                self.stopped_epoch,
                self.monitor,
                self.best,
                self.wait,
            )
        if self.restore_best_weights and self.best_weights is not None:
            self._restore_weights()

    def _keep_weights(self, epoch: int) -> None:
        # A CPU copy: the live parameters keep changing, and device memory is the scarcer one.
        self.best_weights = {key: value.detach().to("cpu", copy=True) for key, value in self.model.state_dict().items()}
        self.best_weights_epoch = epoch

    def _restore_weights(self) -> None:
        self.model.load_state_dict(self.best_weights)
        if self.best_weights_epoch != self.best_epoch:
            logger.warning(
                "EarlyStopping: the best epoch (%d) came before the resume and its weights were not restored "
                "with it; loaded the weights of epoch %d instead, the best since the resume.",
                self.best_epoch,
                self.best_weights_epoch,
            )
        else:
            logger.info("EarlyStopping: restored the weights of the best epoch, %d (0-based).", self.best_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The counters (JSON) and, once kept, the best weights (tensors) with the epoch they are from."""
        state = {
            "best": self.best,
            "wait": self.wait,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
        }
        if self.best_weights is not None:
            state.update(best_weights=self.best_weights, best_weights_epoch=self.best_weights_epoch)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the next `fit` keeps these counters instead of starting afresh."""
        self.monitored.best = state.get("best")
        self.wait = int(state.get("wait", 0))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.stopped_epoch = int(state.get("stopped_epoch", 0))
        weights = state.get("best_weights")
        self.best_weights = (
            {key: value.detach().to("cpu", copy=True) for key, value in weights.items()} if weights else None
        )
        self.best_weights_epoch = state.get("best_weights_epoch") if weights else None
        self._resumed = True
