"""`WeightAveraging`: an exponential moving average (EMA) or a stochastic weight average (SWA) of the weights.

It owns the averaged copy of the model, a `torch.optim.swa_utils.AveragedModel` (the averaging itself is
torch's); when it is updated (after real optimizer steps, every N steps or at epoch ends, from a start
epoch and step); the swap that puts the averaged weights into the model outside training batches, so
that validation, the checkpoints written at epoch ends, `EarlyStopping`'s best weights, and `evaluate`
and `predict` after `fit` all see them; SWA's batch-norm update at the end (`update_bn`, over the training
data); and its state in checkpoints: the averaged weights and, while they sit in the model, the trained
weights, so that a resumed run trains on exactly the weights an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from fitorch import Callback, Every, call_model, unpack_batch
from fitorch.checks import check_bool, check_choice, check_int, check_number

MODES = ("ema", "swa")
DEFAULT_DECAY = 0.999


class _Inputs:
    """One batch's model inputs, in a holder `update_bn` passes on whole (it would take a tuple's first item)."""

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs


class _CallWithInputs(nn.Module):
    """Runs a model on `_Inputs`; `update_bn` finds the model's batch-norm layers through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: _Inputs) -> Any:
        return call_model(self.model, batch.inputs)


class WeightAveraging(Callback):
    """Keeps an exponential moving average (EMA) or a stochastic weight average (SWA) of the model's weights.

    Built on `torch.optim.swa_utils`: the average is an `AveragedModel` (`averaged_model`), updated by
    `update_parameters` after real optimizer steps (never inside an accumulation window), with
    `get_ema_multi_avg_fn(decay)` for EMA and the equal average for SWA.

    With `use_averaged=True` (the default) the model holds the averaged weights everywhere except in
    training batches: from the end of each epoch's training (before validation) until the next epoch
    starts, and after `fit`. So validation values, the checkpoints `ModelCheckpoint` writes at epoch ends
    (the best one included), `EarlyStopping(restore_best_weights=True)`, and `evaluate` and `predict`
    after `fit` all use the averaged weights, while training continues from the trained ones. Without
    validation data the swap happens in `on_epoch_end`: list this callback before any other that reads
    the model there (checkpoint writers always run last). With `use_averaged=False` the model always
    holds the trained weights, and `averaged_model.module` the averaged ones.

    SWA (and EMA with `update_bn=True`) recomputes the batch-norm statistics of the averaged weights at
    the end of `fit` with `torch.optim.swa_utils.update_bn`, over the training loader (under several
    processes, each process over its shard, then averaged).

    Resume: `state_dict()` holds the averaged model's state (tensors, stored in safetensors) and, while
    the averaged weights are in the model, the trained weights, so a run resumed from any checkpoint
    continues bit-exactly. A `fit` of the same model continues the average; a `fit` of another model
    starts a new one.

    Args:
        mode: `"ema"` (exponential moving average) or `"swa"` (equal average of the weights it sees).
        decay: EMA only: the weight of the past, in (0, 1); default 0.999.
        every: update every this many optimizer steps, or `"epoch"` for once at the end of each epoch's
            training. Default: 1 (every step) for EMA, `"epoch"` for SWA.
        start_epoch: first epoch (0-based) whose steps are averaged (SWA often starts at 75% of the epochs).
        start_step: average only optimizer steps after this many (the global step).
        use_buffers: also average the buffers (batch-norm running statistics). Default: True for EMA;
            False for SWA, which copies the latest buffers and recomputes them at the end.
        use_averaged: put the averaged weights into the model outside training batches (above).
        update_bn: recompute batch-norm statistics for the averaged weights at the end of `fit`.
            Default: True for SWA, False for EMA. Models without batch norm skip it.

    Raises:
        ValueError: an unknown mode, a `decay` outside (0, 1) or given for SWA, a bad `every`, a
            negative start.
        TypeError: a flag that is not a bool.

    Example:
        >>> ema = WeightAveraging("ema", decay=0.999)
        >>> best = ModelCheckpoint("runs/exp1/best", monitor="val_loss", save_best_only=True)
        >>> learner.fit(model, train, epochs=10, validation_data=val, callbacks=[ema, best])  # doctest: +SKIP
        >>> learner.evaluate(model, val)  # the averaged weights, also those saved as the best  # doctest: +SKIP
    """

    def __init__(
        self,
        mode: str = "ema",
        *,
        decay: float | None = None,
        every: int | str | None = None,
        start_epoch: int = 0,
        start_step: int = 0,
        use_buffers: bool | None = None,
        use_averaged: bool = True,
        update_bn: bool | None = None,
    ) -> None:
        owner = "WeightAveraging"
        self.mode = check_choice(mode, "mode", MODES, owner=owner)
        ema = mode == "ema"
        if decay is not None and not ema:
            raise ValueError(f"{owner}: decay applies to mode='ema' only; SWA averages equally. Got decay={decay!r}.")
        decay = DEFAULT_DECAY if decay is None else decay
        self.decay = check_number(decay, "decay", minimum=0, maximum=1, open_min=True, open_max=True, owner=owner)
        self.every = Every.parse((1 if ema else "epoch") if every is None else every, "every", owner=owner)
        self.start_epoch = check_int(start_epoch, "start_epoch", minimum=0, owner=owner)
        self.start_step = check_int(start_step, "start_step", minimum=0, owner=owner)
        self.use_buffers = check_bool(ema if use_buffers is None else use_buffers, "use_buffers", owner=owner)
        self.use_averaged = check_bool(use_averaged, "use_averaged", owner=owner)
        self.update_bn = check_bool(not ema if update_bn is None else update_bn, "update_bn", owner=owner)
        self.averaged_model: AveragedModel | None = None
        self._source: nn.Module | None = None  # the model the average belongs to
        self._pending: dict[str, torch.Tensor] | None = None  # a loaded state, applied when fit starts
        self._trained: dict[str, torch.Tensor] | None = None  # the trained weights while the model holds the average
        self._phase_ended = False

    # ------------------------------------------------------------------ events

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if self._source is not None and self._source is not self.model:  # another model: a new average
            self.averaged_model, self._trained = None, None
        if self._pending is not None:
            self._averaged().load_state_dict(self._pending)
            self._pending = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        self._phase_ended = False
        if self._trained is not None:  # training goes on from the trained weights, not the average
            self.model.load_state_dict(self._trained)
            self._trained = None

    def on_optimizer_step(self) -> None:
        if self._started() and self.every.step_due(self.learner):
            self._averaged().update_parameters(self.model)

    def on_test_begin(self, logs: dict[str, Any]) -> None:
        if self.learner.fitting:
            self._end_training_phase()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._end_training_phase()  # without validation, the epoch's training ends here

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.learner.exception is not None or self.averaged_model is None:
            return  # a failed fit leaves the model as it was: other processes may never get here
        if self.update_bn:
            self._update_batch_norm()
            if self._trained is not None:
                self.model.load_state_dict(self.averaged_model.module.state_dict())

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state (`module.*` and `n_averaged`, tensors) and, while the model holds
        the averaged weights, the trained ones (`trained`)."""
        averaged = self.averaged_model.state_dict() if self.averaged_model is not None else self._pending
        state: dict[str, Any] = {} if averaged is None else {"averaged": dict(averaged)}
        if self._trained is not None:
            state["trained"] = self._trained
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`; the averaged model is rebuilt when `fit` starts."""
        self._pending = state.get("averaged")
        self.averaged_model = None
        trained = state.get("trained")
        self._trained = _cpu_copy(trained) if trained else None

    # ------------------------------------------------------------------ helpers

    def _started(self) -> bool:
        learner = self.learner
        return learner.epoch >= self.start_epoch and learner.global_step > self.start_step

    def _averaged(self) -> AveragedModel:
        if self.averaged_model is None:
            avg_fn = get_ema_multi_avg_fn(self.decay) if self.mode == "ema" else None
            self.averaged_model = AveragedModel(self.model, multi_avg_fn=avg_fn, use_buffers=self.use_buffers)
            self._source = self.model
        return self.averaged_model

    def _end_training_phase(self) -> None:
        """Once per epoch, where its training ends: the epoch's update (`every="epoch"`), then the swap."""
        if self._phase_ended:
            return
        self._phase_ended = True
        if self._started() and self.every.epoch_due(self.learner.epoch):
            self._averaged().update_parameters(self.model)
        if self.use_averaged and self.averaged_model is not None and self._trained is None:
            self._trained = _cpu_copy(self.model.state_dict())  # a CPU copy: device memory is the scarcer
            self.model.load_state_dict(self.averaged_model.module.state_dict())

    def _update_batch_norm(self) -> None:
        module, loader = self.averaged_model.module, self.learner.train_loader
        batches = (_Inputs(unpack_batch(batch)[0]) for batch in loader)
        update_bn(batches, _CallWithInputs(module))
        accelerator = self.learner.accelerator
        if accelerator.num_processes > 1:  # each process saw its shard: agree on the mean of their statistics
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    buffer.copy_(accelerator.reduce(buffer, "mean"))


def _cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in tensors.items()}
