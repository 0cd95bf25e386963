"""The `Learner`: configuration, the training loop, evaluation and prediction.

The loop reads top to bottom: `fit` -> `_fit_loop` -> `_run_epoch` -> `_train_epoch` ->
`train_step` -> `backward` / `optimizer_step`. Everything else (progress, history, logging,
checkpoints, schedules) is a callback reacting to the events the loop fires. Hugging Face
Accelerate places tensors on devices, runs mixed precision and wraps the model for distributed
data parallel; the learner never talks to `torch.distributed` itself.
"""

from __future__ import annotations

import atexit
import copy
import functools
import gc
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized
from accelerate.utils import DistributedType, GradientAccumulationPlugin
from torch import nn
from torch.utils.data import DataLoader

from fitorch.callback import Callback, CallbackList, add_note, find_callback
from fitorch.checks import check_bool, check_choice, check_int, check_number, check_path
from fitorch.data import (
    DataLike,
    LoaderOptions,
    batch_length,
    call_model,
    concat_outputs,
    is_tensor_data,
    make_loader,
    split_for_validation,
    to_dataset,
    unpack_batch,
)
from fitorch.distributed import StopVote, forget_prepared
from fitorch.losses import check_targets, loss_from_outputs, model_predictions, resolve_loss
from fitorch.metrics import Tracker, resolve_metrics
from fitorch.optimizers import OptimizerSpec, build_optimizers, check_optimizer
from fitorch.run_lock import RunLock, lock_run_dir
from fitorch.seed import seed_everything

if TYPE_CHECKING:  # the built-in callbacks import fitorch, so they are imported late at run time
    from fitorch.callbacks import History

MIXED_PRECISION = ("no", "fp16", "bf16")


class LazyLogs(Mapping):
    """Batch logs computed only when read, so a step whose logs nobody reads forces no host sync."""

    def __init__(self, compute: Any) -> None:
        self._compute = compute
        self._values: dict[str, float] | None = None

    def _read(self) -> dict[str, float]:
        if self._values is None:
            self._values = self._compute()
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return f"LazyLogs({self._read()!r})"


class Learner:
    """Trains, evaluates and runs PyTorch models, Keras style, on Hugging Face Accelerate.

    Args:
        loss: a name (`"cross_entropy"`, `"mse"`, `"bce_with_logits"`, ...; see `fitorch.LOSSES`),
            an `nn.Module` or a callable `(outputs, targets) -> scalar`. None when the model returns
            its own loss (`outputs.loss`, Hugging Face style).
        optimizer: a name (`"adamw"`, `"adam"`, `"sgd"`, `"rmsprop"`, `"adagrad"`, ...), an optimizer
            class, or a callable `model -> optimizer` (or a list of optimizers), the way to give
            parameter groups their own learning rates.
        lr: learning rate for a named optimizer or class.
        weight_decay: weight decay for a named optimizer or class; None keeps the optimizer's default.
        metrics: names (`"accuracy"`, `"top_k_accuracy"`, `"mae"`, `"mse"`), callables
            `(outputs, targets) -> value`, or objects with `update/compute/reset`.
        callbacks: callbacks used by every `fit`, `evaluate` and `predict` call of this learner.
        mixed_precision: `"no"`, `"fp16"` or `"bf16"`; None takes the launcher's setting
            (`accelerate launch --mixed_precision`), else `"no"`.
        grad_accum_steps: micro-batches per optimizer step; None takes the launcher's setting, else 1.
            A window's gradient is the mean over its samples, so a short last window is exact.
        grad_clip: maximum global gradient norm, applied on every optimizer step after unscaling.
        seed: seeds every RNG at the start of `fit` and the shuffling of loaders fitorch builds;
            two fits with the same seed on the CPU give bit-identical weights.
        cpu: train on the CPU even when a GPU is present.
        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        run_dir: folder for the run's logs and checkpoints; None writes nothing to disk. A fit holds
            `run_dir/fitorch.lock` while it runs, so that two live fits never write one run_dir.
        num_workers: loader workers when fitorch builds the loader; None chooses (0 for tensors).
        hparams: user hyperparameters, recorded by the logging callbacks.
        **optimizer_options: further keyword arguments for a named optimizer or class
            (for example `momentum=0.9` for `"sgd"`).

    Attributes:
        model: the user's model, unwrapped; after `fit` it holds the trained weights.
        prepared_model: the model as Accelerate prepared it (DDP-wrapped under several processes);
            steps call it for forward passes.
        optimizer: the first (usually only) optimizer; `optimizers` holds all. They are the torch
            optimizers, or Accelerate's wrappers of them when fp16 loss scaling, DeepSpeed or XLA needs those.
        loss_fn: the loss function in use (`LabelSmoothing` swaps it during training batches).
        accelerator: the `accelerate.Accelerator` of the running (or last) call.
        epoch: the current epoch, 0-based; `epochs` is the index to stop before.
        global_step: real optimizer steps since the start of training (accumulation-aware).
        batch: index of the current batch within the running phase (training, validation, prediction).
        outputs: the outputs of the current batch; `loss` its loss (the one optimised, in training).
        logs: the logs of the last epoch (`loss`, metrics, `val_*`, `lr`).
        stop_training: set it to True to stop after the current batch or epoch (under several
            processes, set in a batch, all stop after the next batch).
        history: the `History` of the running (or last) fit.
        sync_gradients: whether the current micro-batch ends an accumulation window.
        num_batches: batches in the running phase, None when unknown.
        fitting: True inside `fit`, validation included.
        exception: the error that is ending `fit`, as `on_train_end` sees it; None on success. After a
            failure other processes may never reach a collective call: skip any in `on_train_end`.

    Example:
        >>> learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-3, metrics=["accuracy"])
        >>> history = learner.fit(model, (x, y), epochs=3, validation_split=0.2)  # doctest: +SKIP
        >>> history.history["val_accuracy"]  # doctest: +SKIP
    """

    def __init__(
        self,
        loss: Any = None,
        optimizer: OptimizerSpec = "adamw",
        lr: float = 1e-3,
        weight_decay: float | None = None,
        metrics: Sequence[Any] | None = None,
        callbacks: Sequence[Callback] | None = None,
        *,
        mixed_precision: str | None = None,
        grad_accum_steps: int | None = None,
        grad_clip: float | None = None,
        seed: int | None = None,
        cpu: bool = False,
        verbose: int = 1,
        run_dir: str | os.PathLike | None = None,
        num_workers: int | None = None,
        hparams: Mapping[str, Any] | None = None,
        **optimizer_options: Any,
    ) -> None:
        self.loss_fn, self.loss_name = resolve_loss(loss)
        if not isinstance(optimizer, str) and not callable(optimizer):
            raise TypeError(f"optimizer must be a name, an optimizer class or a callable, got {optimizer!r}.")
        if isinstance(optimizer, str) or isinstance(optimizer, type):
            optimizer_options = {"lr": check_number(lr, "lr", minimum=0, owner="Learner"), **optimizer_options}
            if weight_decay is not None:
                optimizer_options["weight_decay"] = weight_decay
        check_optimizer(optimizer, optimizer_options)
        self.optimizer_spec, self.optimizer_options = optimizer, optimizer_options
        self.metrics = resolve_metrics(metrics, self.loss_name)
        self.callbacks = list(callbacks or [])
        if mixed_precision is not None:
            check_choice(mixed_precision, "mixed_precision", MIXED_PRECISION, owner="Learner")
        self.mixed_precision = mixed_precision
        self.grad_accum_steps = check_int(
            grad_accum_steps, "grad_accum_steps", minimum=1, allow_none=True, owner="Learner"
        )
        self.grad_clip = check_number(
            grad_clip, "grad_clip", minimum=0, open_min=True, allow_none=True, owner="Learner"
        )
        self.seed = check_int(seed, "seed", minimum=0, allow_none=True, owner="Learner")
        self.cpu = check_bool(cpu, "cpu", owner="Learner")
        self.verbose = check_choice(
            verbose, "verbose (0 silent, 1 progress bar, 2 one line per epoch)", (0, 1, 2), owner="Learner"
        )
        self.run_dir = check_path(run_dir, "run_dir", allow_none=True, owner="Learner")
        self.num_workers = check_int(num_workers, "num_workers", minimum=0, allow_none=True, owner="Learner")
        self.hparams = dict(hparams or {})
        self.run_hparams: dict[str, Any] = dict(self.hparams)  # of the current (or last) fit

        # State during and after a call (see the class docstring).
        self.model: nn.Module | None = None
        self.prepared_model: nn.Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.accelerator: Accelerator | None = None
        self.history: History | None = None
        self.epoch, self.epochs, self.global_step, self.batch = 0, 0, 0, 0
        self.outputs: Any = None
        self.loss: torch.Tensor | None = None
        self.logs: dict[str, Any] = {}
        self.stop_training = False
        self.num_batches: int | None = None
        self.sync_gradients = True
        self.step_taken = False
        self.fitting = False
        self.exception: BaseException | None = None
        self.event_callbacks: CallbackList | None = None
        self._raw_optimizers: list[torch.optim.Optimizer] = []
        self._optimizers_model: nn.Module | None = None
        self._targets_checked = False
        self._batch_samples = 0
        self._window_samples = 0
        self._shuffle_generator: torch.Generator | None = None
        self._shuffle_seed = 0
        self._skip_batches = 0
        self._plain_steps = False
        self._call_loaders: list[DataLoader | None] = []
        self._resumed_sums: Mapping[str, Any] | None = None
        self._batches_done = 0
        self._epoch_complete = False
        self._run_lock: RunLock | None = None

    # ------------------------------------------------------------------ public calls

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The first (usually only) optimizer of the running (or last) fit."""
        return self.optimizers[0] if self.optimizers else None

    @property
    def is_main_process(self) -> bool:
        """Whether this process is the one that prints, logs and writes files."""
        return self.accelerator is None or self.accelerator.is_main_process

    def fit(
        self,
        model: nn.Module,
        data: DataLike,
        epochs: int = 1,
        *,
        validation_data: DataLike | None = None,
        validation_split: float = 0.0,
        batch_size: int | None = None,
        shuffle: bool | None = None,
        callbacks: Sequence[Callback] | None = None,
        initial_epoch: int = 0,
        resume: str | os.PathLike | bool | None = None,
        hparams: Mapping[str, Any] | None = None,
    ) -> History:
        """Train `model` on `data` for `epochs` epochs and return the `History`.

        Args:
            model: the model; it is trained in place and also available as `learner.model`.
            data: a DataLoader, a Dataset, or a tuple `(x, y)` / `(x1, x2, ..., y)` of tensors or arrays.
            epochs: index of the last epoch to train (as in Keras: with `initial_epoch`, the total).
            validation_data: data to evaluate at the end of every epoch, in the same forms as `data`.
            validation_split: fraction of `data` (the last samples, before shuffling) kept for validation.
            batch_size: batch size when fitorch builds the loader (default 32).
            shuffle: shuffle each epoch when fitorch builds the loader (default True).
            callbacks: extra callbacks for this call, after the learner's own.
            initial_epoch: epoch to start at (to continue an earlier run).
            resume: a checkpoint directory to continue from exactly (model, optimizer, counters,
                RNG states and callback states), or True for the newest checkpoint under `run_dir`.
                A backup offered by a callback (`BackupAndRestore`) takes precedence: it is the
                newer state of this same fit (docs/checkpoints.md).
            hparams: hyperparameters of this fit, merged over `Learner(hparams=...)` into
                `learner.run_hparams`; train.log and TensorBoard record them.

        Returns:
            The `fitorch.callbacks.History`: `history.history["val_loss"]` is a list, one value per epoch.

        Raises:
            ValueError, TypeError: bad arguments or data, before any training.
            RunDirLocked: another live fit holds `run_dir`, before any training.
        """
        self._check_fit_arguments(model, epochs, initial_epoch, validation_split, validation_data)
        self.run_hparams = _merge_hparams(self.hparams, hparams)
        self.accelerator = self._make_accelerator()
        train_loader, val_loader = self._fit_loaders(data, validation_data, validation_split, batch_size, shuffle)
        if self.seed is not None:
            seed_everything(self.seed)
        self._start_call(model, callbacks, training=True, validating=val_loader is not None)
        train_loader = self.accelerator.prepare(train_loader)
        val_loader = self.accelerator.prepare(val_loader) if val_loader is not None else None
        self._call_loaders = [train_loader, val_loader]
        self.epochs, self.epoch, self.global_step, self.batch = epochs, initial_epoch, 0, 0
        self.stop_training, self.exception, self._skip_batches, self._resumed_sums = False, None, 0, None
        self._stop_vote = StopVote(self.accelerator)  # every process stops after the same batch
        from fitorch.checkpoint import resume_learner  # it imports this module, so import it late

        try:
            self._run_lock = lock_run_dir(self.run_dir, self.accelerator)  # one writer per run_dir, until _end_call
            resume_learner(self, resume)  # `resume`, or a backup a callback offers (BackupAndRestore)
        except BaseException:
            self._end_call()
            raise
        self.fitting = True
        self._fit_loop(train_loader, val_loader)
        return self.history

    def _fit_loaders(
        self,
        data: DataLike,
        validation_data: DataLike | None,
        validation_split: float,
        batch_size: int | None,
        shuffle: bool | None,
    ) -> tuple[DataLoader, DataLoader | None]:
        options = self._loader_options(batch_size, shuffle)
        # Each epoch reseeds this generator with shuffle_seed + epoch (see _epoch_batches).
        self._shuffle_seed = self.seed if self.seed is not None else int(torch.randint(2**31, ()).item())
        self._shuffle_generator = options.generator = torch.Generator()
        if validation_split:
            dataset = to_dataset(data, "data")
            if dataset is None:
                raise ValueError("validation_split needs tensors or a Dataset, not a DataLoader; pass validation_data.")
            data, validation_data = split_for_validation(dataset, validation_split)
        train_loader = make_loader(data, "data", options, train=True)
        if validation_data is None:
            return train_loader, None
        eval_options = LoaderOptions(batch_size, None, options.num_workers, options.pin_memory)
        return train_loader, make_loader(validation_data, "validation_data", eval_options, train=False)

    def evaluate(
        self,
        model: nn.Module,
        data: DataLike,
        *,
        batch_size: int | None = None,
        callbacks: Sequence[Callback] | None = None,
    ) -> dict[str, float]:
        """Evaluate `model` on `data` and return the logs, e.g. `{"loss": 0.21, "accuracy": 0.93}`.

        Fires `on_test_begin`, `on_test_batch_begin/end` and `on_test_end`. The values are exact
        means over all samples (across every process under distributed evaluation).

        Args:
            model: the model to evaluate (in eval mode, without gradients).
            data: a DataLoader, a Dataset, or a tuple `(x, y)` / `(x1, x2, ..., y)` of tensors or arrays.
            batch_size: batch size when fitorch builds the loader (default 32).
            callbacks: extra callbacks for this call, after the learner's own.

        Returns:
            The loss (when there is one) and every metric, by name.

        Raises:
            ValueError, TypeError: bad arguments or data, before any batch runs.
        """
        return self._inference_call(model, data, batch_size, callbacks, self._evaluate_loader)

    def predict(
        self,
        model: nn.Module,
        data: DataLike,
        *,
        batch_size: int | None = None,
        callbacks: Sequence[Callback] | None = None,
    ) -> Any:
        """Run `model` over `data` and return its outputs concatenated in dataset order, on the CPU.

        `data` may be inputs alone (a tensor, an array, or a tuple of them for a model with several
        inputs), or a Dataset or DataLoader whose batches may carry targets, which are ignored. Tuple
        or dict outputs are concatenated element by element. Under several processes every process
        gets the full result.

        Args:
            model: the model to run (in eval mode, without gradients).
            data: inputs (a tensor, an array, or a tuple of them), a Dataset or a DataLoader.
            batch_size: batch size when fitorch builds the loader (default 32).
            callbacks: extra callbacks for this call, after the learner's own.

        Returns:
            The outputs of every sample in dataset order, on the CPU: a tensor, or a tuple or dict of
            tensors when the model returns one (`outputs.logits` for Hugging Face style outputs).

        Raises:
            ValueError, TypeError: bad arguments or data, before any batch runs.
        """
        inputs_only = is_tensor_data(data)
        return self._inference_call(
            model, data, batch_size, callbacks, lambda loader: self._predict_loader(loader, inputs_only)
        )

    def _inference_call(
        self, model: nn.Module, data: DataLike, batch_size: int | None, callbacks: Sequence[Callback] | None, run: Any
    ) -> Any:
        self.accelerator = self._make_accelerator()
        loader = make_loader(data, "data", self._loader_options(batch_size, None), train=False)
        self._start_call(model, callbacks, training=False)
        self._call_loaders = [self.accelerator.prepare(loader)]
        try:
            return run(self._call_loaders[0])
        finally:
            self._end_call()

    # ------------------------------------------------------------------ steps users may override

    def train_step(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """One training micro-batch: forward, loss, backward and, when `sync_gradients`, the optimizer step.

        Override it to train several models or optimizers; call `self.backward(loss)` and
        `self.optimizer_step(optimizer)` so that accumulation, clipping, mixed precision and the
        events keep working.

        Args:
            batch: one batch as the loader yields it.

        Returns:
            `(loss, outputs)`: the loss that was optimised and the outputs that metrics read.
        """
        inputs, targets = unpack_batch(batch)
        outputs = call_model(self.prepared_model, inputs)
        loss = self.compute_loss(outputs, targets)
        self.backward(loss)
        if self.sync_gradients:
            self.optimizer_step(self.optimizer)
        return loss, outputs

    def test_step(self, batch: Any) -> tuple[torch.Tensor | None, Any]:
        """One evaluation batch (gradients are off, the model in eval mode).

        Args:
            batch: one batch as the loader yields it.

        Returns:
            `(loss, outputs)`; the loss is None when the batch carries no targets.
        """
        inputs, targets = unpack_batch(batch)
        outputs = call_model(self.prepared_model, inputs)
        loss = self.compute_loss(outputs, targets) if targets is not None or self.loss_fn is None else None
        return loss, outputs

    def predict_step(self, batch: Any) -> Any:
        """One prediction batch.

        Args:
            batch: one batch as the loader yields it; targets in it are ignored.

        Returns:
            What `predict` concatenates: the model's outputs (`outputs.logits` for Hugging Face style outputs).
        """
        inputs, _ = unpack_batch(batch)
        return model_predictions(call_model(self.prepared_model, inputs))

    def compute_loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The loss for one batch: `loss_fn(outputs, targets)`, or the model's own `outputs.loss`.

        Args:
            outputs: what the model returned.
            targets: the batch's targets (None for dict batches whose model computes the loss).

        Raises:
            ValueError, TypeError: on the first batch, targets that cannot work with a named loss.
        """
        if self.loss_fn is None:
            return loss_from_outputs(outputs)
        if not self._targets_checked:
            check_targets(self.loss_name, outputs, targets)
            self._targets_checked = True
        return self.loss_fn(outputs, targets)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` through Accelerate, firing `on_before_backward` and `on_after_backward`.

        Args:
            loss: the batch's mean loss; under accumulation fitorch weighs it by the batch's samples.
        """
        self.event_callbacks.fire("on_before_backward", loss)
        if self._accumulating:
            # Each micro-batch adds its sample-weighted gradient; optimizer_step divides by the
            # window's sample count, so a short last window weighs what it holds.
            loss = loss * self._batch_samples
        if self._plain_steps:
            loss.backward()
        else:
            self.accelerator.backward(loss)  # loss scaling (fp16), DeepSpeed, XLA
        self.event_callbacks.fire("on_after_backward")

    def optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Finish the gradients of `optimizer` (average, unscale, clip), fire `on_before_optimizer_step`, step, zero.

        Args:
            optimizer: one of `self.optimizers`; the first when None.
        """
        optimizer = optimizer or self.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self._accumulating:
            for param in params:
                param.grad.div_(self._window_samples)
        if not self._plain_steps:
            self.accelerator.unscale_gradients(optimizer)  # fp16: callbacks and clipping see true gradients
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.event_callbacks.fire("on_before_optimizer_step", optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ the loop

    def _fit_loop(self, train_loader: DataLoader, val_loader: DataLoader | None) -> None:
        callbacks = self.event_callbacks
        try:
            callbacks.fire("on_train_begin", self.logs)
            for epoch in range(self.epoch, self.epochs):
                self.epoch = epoch
                self._run_epoch(train_loader, val_loader)
                if self.stop_training:
                    break
        except BaseException as exception:
            self.exception = exception
            callbacks.fire_exception(exception)
            raise
        finally:
            try:
                callbacks.fire("on_train_end", self.logs)
            except Exception as end_error:
                if self.exception is None:
                    raise
                add_note(self.exception, f"on_train_end also failed: {end_error!r}")
            finally:
                self.fitting = False
                self._end_call()

    def _run_epoch(self, train_loader: DataLoader, val_loader: DataLoader | None) -> None:
        self.logs, self.num_batches = {}, _length(train_loader)
        self._epoch_complete, self._batches_done = False, 0
        self.event_callbacks.fire("on_epoch_begin", self.epoch, self.logs)
        logs = self._train_epoch(train_loader)
        if val_loader is not None:
            logs.update({f"val_{key}": value for key, value in self._evaluate_loader(val_loader).items()})
        logs.update(self.learning_rates())
        self.logs, self._epoch_complete = logs, True
        self.event_callbacks.fire("on_epoch_end", self.epoch, logs)
        self.stop_training = self._stop_vote.settle(self.stop_training)

    def _train_epoch(self, loader: DataLoader) -> dict[str, float]:
        callbacks, tracker = self.event_callbacks, self._train_tracker
        tracker.reset()
        if self._resumed_sums:  # resuming inside this epoch: count the batches trained before the resume
            tracker.add_sums(self._resumed_sums, self.accelerator.device)
            self._resumed_sums = None
        running_logs = self._running_logs(tracker)
        self._window_samples = 0
        for index, batch in self._epoch_batches(loader):
            self.batch = index
            if not self.prepared_model.training:
                self.prepared_model.train()  # validation or a callback may have switched to eval
            callbacks.fire("on_train_batch_begin", self.batch, {})
            targets = unpack_batch(batch)[1]
            self._batch_samples = batch_length(targets if targets is not None else batch)
            self._window_samples += self._batch_samples
            self.sync_gradients = self._ends_window()
            with self._gradient_sync():
                self.loss, self.outputs = self.train_step(batch)
            self._batches_done = self.batch + 1
            self.step_taken = self.sync_gradients
            if self.sync_gradients:
                self.global_step += 1
                self._window_samples = 0
                callbacks.fire("on_optimizer_step")
            self._track(tracker, self.loss, self.outputs, targets)
            callbacks.fire("on_train_batch_end", self.batch, running_logs())
            if self._stop_vote.after_batch(self.batch, self.stop_training):  # agreed every 16 batches
                self.stop_training = True
                break
        self.stop_training = self._stop_vote.settle(self.stop_training)
        return tracker.results(**self._reduce_options())

    def _evaluate_loader(self, loader: DataLoader) -> dict[str, float]:
        callbacks, tracker = self.event_callbacks, self._test_tracker
        tracker.reset()
        running_logs = self._running_logs(tracker)
        self.prepared_model.eval()
        self.num_batches = _length(loader)
        callbacks.fire("on_test_begin", {})
        with torch.no_grad():
            for self.batch, batch in enumerate(loader):
                callbacks.fire("on_test_batch_begin", self.batch, {})
                self.loss, self.outputs = self.test_step(batch)
                self._track(tracker, self.loss, self.outputs, unpack_batch(batch)[1])
                callbacks.fire("on_test_batch_end", self.batch, running_logs())
        results = tracker.results(**self._reduce_options())
        callbacks.fire("on_test_end", results)
        return results

    def _predict_loader(self, loader: DataLoader, inputs_only: bool) -> Any:
        callbacks, chunks = self.event_callbacks, []
        self.prepared_model.eval()
        self.num_batches = _length(loader)
        callbacks.fire("on_predict_begin", {})
        with torch.no_grad():
            for self.batch, batch in enumerate(loader):
                callbacks.fire("on_predict_batch_begin", self.batch, {})
                if inputs_only:  # predict(model, (x1, x2)): every tensor is an input, none is a target
                    batch = (*batch, None)
                outputs = self.predict_step(batch)
                if self.accelerator.num_processes > 1:
                    outputs = self.accelerator.gather_for_metrics(outputs)  # drops the sampler's padding
                self.outputs = outputs
                chunks.append(_detached(outputs, "cpu"))
                callbacks.fire("on_predict_batch_end", self.batch, {"outputs": outputs})
        callbacks.fire("on_predict_end", {})
        return concat_outputs(chunks) if chunks else None

    # ------------------------------------------------------------------ helpers of the loop

    def loop_state(self) -> dict[str, Any]:
        """Where the loop stands, for checkpoints: the next epoch and batch to run, the step count, the shuffle seed.

        Inside an epoch it also holds the epoch's running loss and metric sums (on one process; under
        several, each process holds only its own share, so a resumed epoch counts its batches since
        the resume).
        """
        epoch, batch = (self.epoch + 1, 0) if self._epoch_complete else (self.epoch, self._batches_done)
        state = {"epoch": epoch, "batch": batch, "global_step": self.global_step, "shuffle_seed": self._shuffle_seed}
        if batch and self.accelerator.num_processes == 1:
            state["running"] = self._train_tracker.sums()
        return state

    def load_loop_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a `loop_state()`: the next `fit` epoch starts there, skipping batches already trained."""
        self.epoch, self._skip_batches = int(state["epoch"]), int(state["batch"])
        self.global_step, self._shuffle_seed = int(state["global_step"]), int(state["shuffle_seed"])
        self._resumed_sums = state.get("running")
        self._epoch_complete = False

    def learning_rates(self) -> dict[str, float]:
        """Current learning rates: `lr` for the first parameter group, `lr_<i>` for the others."""
        groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        return {("lr" if i == 0 else f"lr_{i}"): float(group["lr"]) for i, group in enumerate(groups)}

    def config(self) -> dict[str, Any]:
        """The learner's configuration as JSON-able data (objects by name), with `run_hparams`; logs record it."""
        accelerator = self.accelerator
        return _json_safe(
            {
                "loss": self.loss_name or self.loss_fn,
                "optimizer": self.optimizer_spec,
                "optimizer_options": self.optimizer_options,
                "metrics": list(self.metrics),
                "mixed_precision": accelerator.mixed_precision if accelerator else self.mixed_precision,
                "grad_accum_steps": self.grad_accum_steps,
                "grad_clip": self.grad_clip,
                "seed": self.seed,
                "device": str(accelerator.device) if accelerator else None,
                "num_processes": accelerator.num_processes if accelerator else 1,
                "epochs": self.epochs,
                "run_dir": self.run_dir,
                "hparams": self.run_hparams,
            }
        )

    @property
    def _accumulating(self) -> bool:
        return self.grad_accum_steps > 1

    def _ends_window(self) -> bool:
        if not self._accumulating:
            return True
        return (self.batch + 1) % self.grad_accum_steps == 0 or self.accelerator.gradient_state.end_of_dataloader

    def _gradient_sync(self) -> Any:
        if self.sync_gradients or self.accelerator.num_processes == 1:
            return nullcontext()
        return self.accelerator.no_sync(self.prepared_model)  # skip the all-reduce inside a window

    def _epoch_batches(self, loader: DataLoader) -> Iterator[tuple[int, Any]]:
        if self._shuffle_generator is not None:
            # A seed per epoch makes each epoch's order a pure function of (seed, epoch), so a
            # resumed run draws exactly the order the uninterrupted run drew.
            self._shuffle_generator.manual_seed(self._shuffle_seed + self.epoch)
        skip, self._skip_batches = self._skip_batches, 0
        if skip:
            return enumerate(self.accelerator.skip_first_batches(loader, skip), start=skip)
        return enumerate(loader)

    def _track(self, tracker: Tracker, loss: torch.Tensor | None, outputs: Any, targets: Any) -> None:
        predictions = model_predictions(outputs)
        count = batch_length(targets if targets is not None else predictions)
        valid = self._valid_samples(count)
        if valid < count:  # the distributed sampler padded this batch with repeated samples
            if valid == 0:
                return
            predictions, targets = predictions[:valid], targets[:valid] if targets is not None else None
            if self.loss_fn is not None and targets is not None:
                loss = self.loss_fn(predictions, targets)
            count = valid
        tracker.update(loss, predictions, targets, count)

    def _valid_samples(self, count: int) -> int:
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return count
        state = accelerator.gradient_state
        if not state.end_of_dataloader or state.remainder <= 0:
            return count
        # Gathered in process order, the first `remainder` samples of the last batch are real.
        return max(0, min(count, state.remainder - accelerator.process_index * count))

    def _running_logs(self, tracker: Tracker) -> Any:
        # Local values only: a collective here would hang when only the main process reads them.
        return lambda: LazyLogs(tracker.results)

    def _reduce_options(self) -> dict[str, Any]:
        if self.accelerator.num_processes == 1:
            return {}
        return {"reduce": lambda tensor: self.accelerator.reduce(tensor, "sum"), "device": self.accelerator.device}

    # ------------------------------------------------------------------ set-up

    def _make_accelerator(self) -> Accelerator:
        mixed_precision = self.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if is_initialized():
            state = AcceleratorState()
            if state.mixed_precision != mixed_precision or (self.cpu and state.device.type != "cpu"):
                # Accelerate keeps one global state per process; another learner of this process
                # asked for other settings, so start it afresh (the process group is kept).
                AcceleratorState._reset_state()
        accelerator = Accelerator(
            mixed_precision=mixed_precision,
            cpu=self.cpu or _cpu_processes_launched(),
            # fitorch runs the accumulation windows itself (weighted by samples); an Accelerator that
            # read --gradient_accumulation_steps from the launcher would also divide every loss by it.
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
        )
        if accelerator.num_processes > 1:
            _destroy_process_group_at_exit()
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            if (self.grad_accum_steps or 1) > 1 or self.grad_clip is not None:
                raise ValueError(
                    "Under DeepSpeed, gradient accumulation and clipping belong to DeepSpeed's own config "
                    f"(got grad_accum_steps={self.grad_accum_steps}, grad_clip={self.grad_clip}); "
                    "set them there and leave them unset on the Learner."
                )
            self.grad_accum_steps = 1  # DeepSpeed's engine accumulates inside backward and step
        elif self.grad_accum_steps is None:
            self.grad_accum_steps = int(os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1"))
        return accelerator

    def _loader_options(self, batch_size: int | None, shuffle: bool | None) -> LoaderOptions:
        check_int(batch_size, "batch_size", minimum=1, allow_none=True)
        if shuffle is not None:
            check_bool(shuffle, "shuffle")
        return LoaderOptions(
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.accelerator.device.type == "cuda",
        )

    def _start_call(
        self, model: nn.Module, callbacks: Sequence[Callback] | None, training: bool, validating: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        # Plain backward and optimizer steps are exactly what Accelerate would run in these modes.
        self._plain_steps = self.accelerator.scaler is None and self.accelerator.distributed_type in (
            DistributedType.NO,
            DistributedType.MULTI_CPU,
            DistributedType.MULTI_GPU,
        )
        self._train_tracker = Tracker(self.metrics)
        self._test_tracker = Tracker(copy.deepcopy(self.metrics))
        self._targets_checked = False
        if training:
            if self._optimizers_model is not model:  # a new model gets new optimizers; the same one keeps its state
                self._raw_optimizers = build_optimizers(self.optimizer_spec, model, self.optimizer_options)
                self._optimizers_model = model
            prepared = self.accelerator.prepare(model, *self._raw_optimizers)
            self.prepared_model, self.optimizers = prepared[0], list(prepared[1:])
            if self._plain_steps:
                # Accelerate placed the optimizer state; its wrapper would only add checks that cost
                # ~150 us a step (benchmarks/analysis.md), so steps go to the torch optimizers.
                self.optimizers = [optimizer.optimizer for optimizer in self.optimizers]
        else:
            self.prepared_model = self.accelerator.prepare_model(model, evaluation_mode=True)
        self.event_callbacks = CallbackList(self._callbacks_for_call(callbacks, training, validating), self)

    def _callbacks_for_call(
        self, callbacks: Sequence[Callback] | None, training: bool, validating: bool
    ) -> list[Callback]:
        from fitorch.callbacks import History, ProgressBar  # built-ins import fitorch, so import them late

        chosen = [*self.callbacks, *(callbacks or [])]
        if training:
            self.history = find_callback(chosen, History) or History()
            if self.history not in chosen:
                chosen.append(self.history)
            chosen.extend(self._run_dir_callbacks(chosen, validating))
        if find_callback(chosen, ProgressBar) is None:
            chosen.append(ProgressBar())
        # Callbacks that write checkpoints run last (stable order otherwise), so that what they save
        # holds every other callback's state after the event, History's latest epoch included.
        chosen.sort(key=lambda callback: isinstance(callback, Callback) and callback.saves_checkpoints)
        return chosen

    def _run_dir_callbacks(self, chosen: Sequence[Callback], validating: bool) -> list[Callback]:
        """The standard set a fit with `run_dir` adds (docs/callbacks.md), minus kinds the user passed."""
        if self.run_dir is None:
            return []  # without run_dir, fit writes nothing to disk
        from importlib.util import find_spec

        from fitorch.callbacks import CSVLogger, FileLogger, ModelCheckpoint, TensorBoard

        defaults: list[Callback] = [FileLogger(), CSVLogger(os.path.join(self.run_dir, "metrics.csv"))]
        if find_spec("tensorboard") is not None:  # optional: event files only when tensorboard is installed
            defaults.append(TensorBoard())
        # run_dir/checkpoints/last and .../best, the best judged on validation loss when there is validation.
        monitor = "val_loss" if validating else "loss"
        defaults.append(ModelCheckpoint(monitor=monitor, save_best_only=True, save_last=True))
        return [callback for callback in defaults if find_callback(chosen, type(callback)) is None]

    def _end_call(self) -> None:
        if self._run_lock is not None:
            self._run_lock, lock = None, self._run_lock
            lock.release()
        # Accelerate patched the model's forward for mixed precision; give the user back their model.
        if self.prepared_model is not None:
            self.accelerator.unwrap_model(self.prepared_model, keep_fp32_wrapper=False)
        workers = any(getattr(loader, "num_workers", 0) for loader in self._call_loaders)
        self._call_loaders = []
        if self.prepared_model is not self.model or workers:
            # Drop every reference to the DDP wrapper (the last graph holds its gradient hooks): one
            # still alive when the process group is destroyed at exit aborts the process and the job.
            # Accelerate also holds the loaders, whose persistent workers would outlive the call.
            self.prepared_model = self.model
            self.loss, self.outputs = _detached(self.loss), _detached(self.outputs)
            forget_prepared(self.accelerator)

    def _check_fit_arguments(
        self, model: Any, epochs: Any, initial_epoch: Any, validation_split: Any, validation_data: Any
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        check_int(epochs, "epochs", minimum=1)
        check_int(initial_epoch, f"initial_epoch (with epochs={epochs})", minimum=0, maximum=epochs)
        check_number(validation_split, "validation_split", minimum=0, maximum=1, open_max=True)
        if validation_split and validation_data is not None:
            raise ValueError("Pass either validation_data or validation_split, not both.")


@functools.cache
def _destroy_process_group_at_exit() -> None:
    # A process that exits with gloo's threads still running aborts ("terminate called without an
    # active exception") and fails the job; a user's script should not have to tear it down itself.
    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gc.collect()  # wrappers caught in reference cycles must go before their process group
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def _cpu_processes_launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started several processes on a machine without GPUs.

    Accelerate only chooses its multi-CPU (gloo) mode when told `cpu=True`; without this, `torchrun
    --nproc_per_node 2` on a CPU machine would run two unrelated single-process trainings.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    if not launched:
        return False
    accelerator_api = getattr(torch, "accelerator", None)  # torch >= 2.6
    has_device = accelerator_api.is_available() if accelerator_api is not None else torch.cuda.is_available()
    return not has_device


def _merge_hparams(base: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"hparams must be a mapping of names to values, got {type(extra).__name__}.")
    return {**base, **(extra or {})}


def _json_safe(value: Any) -> Any:
    """`value` with every object JSON cannot hold replaced by its name (classes, functions) or repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    name = getattr(value, "__qualname__", None)
    return f"{getattr(value, '__module__', '')}.{name}" if name else repr(value)


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable dataset without __len__
        return None


def _detached(value: Any, device: str | None = None) -> Any:
    """Detach every tensor in `value` (tuples, lists and dicts kept), moving it to `device` if given."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value if device is None else value.to(device)
    if isinstance(value, Mapping):
        return {key: _detached(item, device) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(item, device) for item in value)
    return value
