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
import dataclasses
import functools
import gc
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized
from accelerate.utils import DistributedType, GradientAccumulationPlugin, broadcast, gather_object
from torch import nn
from torch.utils.data import DataLoader

from fitorch.callback import Callback, CallbackList, Every, add_note, find_callback
from fitorch.checkpoint import latest_checkpoint, load_checkpoint
from fitorch.checks import check_bool, check_choice, check_int, check_number, check_path
from fitorch.compiled import Compiler, compile_options, is_compiled, unwrap_compiled
from fitorch.data import (
    ArrayDataset,
    DataLike,
    IterableBatches,
    LoaderOptions,
    batch_length,
    call_model,
    concat_outputs,
    describe_empty,
    is_tensor_data,
    loader_batches,
    make_loader,
    model_float_dtype,
    pins_memory,
    split_for_validation,
    to_dataset,
    unpack_batch,
)
from fitorch.distributed import StopVote, check_same_checkpoint, forget_prepared
from fitorch.losses import (
    Criterion,
    check_targets,
    loss_from_outputs,
    loss_kind,
    model_predictions,
    prediction_tensor,
    reads_predictions,
    resolve_loss,
)
from fitorch.metrics import EpochLogs, RunningLogs, Tracker, resolve_metrics
from fitorch.optimizers import OptimizerSpec, build_optimizers, check_optimizer
from fitorch.passes import TrainingBatches, first_batches
from fitorch.preemption import Preempted, PreemptionWatch
from fitorch.run_lock import RunLock, lock_run_dir
from fitorch.seed import seed_everything
from fitorch.state import GradientWindow, LoopState
from fitorch.validation import ValidationSchedule
from fitorch.weights import SampleWeighting

if TYPE_CHECKING:  # the built-in callbacks import fitorch, so they are imported late at run time
    from fitorch.callbacks import History
    from fitorch.lr_finder import LRFindResult

MIXED_PRECISION = ("no", "fp16", "bf16")
_STOP, _PREEMPT = 1, 2  # what a process asks of the stop vote: the larger wins
_PREPARE_MARKS = ("forward", "_original_forward", "_is_accelerate_prepared")  # what Accelerate sets on a model
logger = logging.getLogger("fitorch")


def _verbose_for_the_call(method: Callable[..., Any]) -> Callable[..., Any]:
    """`fit`, `evaluate` and `predict` take `verbose=`: the learner's `verbose` for that call only."""

    @functools.wraps(method)
    def call(self: Learner, *args: Any, verbose: int | None = None, **kwargs: Any) -> Any:
        if verbose is None:
            return method(self, *args, **kwargs)
        kept, self.verbose = self.verbose, _check_verbose(verbose)
        try:
            return method(self, *args, **kwargs)
        finally:
            self.verbose = kept

    return call


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
        num_workers: worker processes of the loaders fitorch builds; None (the default) means none, which
            is fastest for in-memory data. Give some for a Dataset whose samples cost real work to
            load (decoding files, augmentation): docs/performance.md has figures.
        hparams: user hyperparameters, recorded by the logging callbacks.
        compile: compile the model with `torch.compile` for every `fit` (validation included): True
            for its defaults, or a dict of its options (`{"mode": "max-autotune"}`). Checkpoints keep
            the plain parameter names (docs/training-tools.md#compiled-models).
        **optimizer_options: further keyword arguments for a named optimizer or class
            (for example `momentum=0.9` for `"sgd"`).

    Attributes:
        model: the user's model, unwrapped (from a `torch.compile` wrapper too); after `fit` it holds
            the trained weights.
        prepared_model: the model as Accelerate prepared it (DDP-wrapped under several processes);
            steps call it for forward passes.
        optimizer: the first (usually only) optimizer; `optimizers` holds all. They are the torch
            optimizers, or Accelerate's wrappers of them when fp16 loss scaling, DeepSpeed or XLA needs those.
        loss_fn: the loss function in use (`LabelSmoothing` swaps it during training batches).
        accelerator: the `accelerate.Accelerator` of the running (or last) call.
        epoch: the current epoch, 0-based; `epochs` is the index to stop before.
        global_step: real optimizer steps since the start of training (accumulation-aware; a step
            that fp16 loss scaling skipped does not count).
        batch: index of the current batch within the running phase (training, validation, prediction).
        outputs: the outputs of the current batch; `loss` its loss (the one optimised, in training).
        inputs: the inputs of the current training or evaluation batch (a tuple of positional model
            arguments, or the dict of a dict batch); `targets` its targets (None when it has none).
        sample_weights: the current batch's sample weights (`fit(sample_weight=...)`), None without;
            `compute_loss` weighs the loss with them.
        logs: the logs of the last epoch (`loss`, metrics, `val_*`, `lr`).
        stop_training: set it to True to stop after the current batch or epoch (under several
            processes, set in a batch, all stop after the next batch).
        history: the `History` of the running (or last) fit.
        sync_gradients: whether the current micro-batch ends an accumulation window.
        num_batches: batches in the running phase, None when unknown.
        fitting: True inside `fit`, validation included.
        exception: the error that is ending `fit`, as `on_train_end` sees it; None on success. After a
            failure other processes may never reach a collective call: skip any in `on_train_end`.
        step_taken: whether the current training batch ended with a real optimizer step.
        resumed: whether this fit restored a checkpoint when it started.
        preempted: the signal (SIGTERM, SIGUSR1) that is ending the fit, as `on_train_end` sees it;
            None otherwise. Checkpoint writers save when it is set (docs/checkpoints.md, Preemption).
        active_callbacks: the `CallbackList` of the running (or last) call, in the order the hooks run.
        state: the loop's position (`fitorch.state.LoopState`); `epoch`, `global_step` and `batch` read it.
        window: the gradient accumulation window (`fitorch.state.GradientWindow`) of the running call.

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
        compile: bool | Mapping[str, Any] = False,  # noqa: A002 - torch.compile's name, as users know it
        **optimizer_options: Any,
    ) -> None:
        self.loss_fn, self.loss_name = resolve_loss(loss)
        if not isinstance(optimizer, str) and not callable(optimizer):
            raise TypeError(f"optimizer must be a name, an optimizer class or a callable, got {optimizer!r}.")
        if isinstance(optimizer, str) or isinstance(optimizer, type):
            optimizer_options = {"lr": check_number(lr, "lr", minimum=0, owner="Learner"), **optimizer_options}
            if check_number(weight_decay, "weight_decay", minimum=0, allow_none=True, owner="Learner") is not None:
                optimizer_options["weight_decay"] = weight_decay
        check_optimizer(optimizer, optimizer_options)
        self.optimizer_spec, self.optimizer_options = optimizer, optimizer_options
        self.metrics = resolve_metrics(metrics, self.loss_name, loss_kind(self.loss_fn, self.loss_name))
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
        self.verbose = _check_verbose(verbose, owner="Learner")
        self.run_dir = check_path(run_dir, "run_dir", allow_none=True, owner="Learner")
        self.num_workers = check_int(num_workers, "num_workers", minimum=0, allow_none=True, owner="Learner")
        self.hparams = dict(hparams or {})
        options = compile_options(compile)
        self.compiler = Compiler(options) if options is not None else None
        self.run_hparams: dict[str, Any] = dict(self.hparams)  # of the current (or last) fit

        self._start_fresh()

    def _start_fresh(self) -> None:
        """The state during and after a call (see the class docstring), as before any call."""
        self.state = LoopState()
        self.window = GradientWindow()
        self.model: nn.Module | None = None
        self.prepared_model: nn.Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.accelerator: Accelerator | None = None
        self.history: History | None = None
        self.active_callbacks: CallbackList | None = None
        self.outputs: Any = None
        self.inputs: Any = None
        self.targets: Any = None
        self.loss: torch.Tensor | None = None
        self.logs: dict[str, Any] = {}
        self.stop_training = False
        self.num_batches: int | None = None
        self.sync_gradients = True
        self.fitting = False
        self.exception: BaseException | None = None
        self.resumed = False
        self.preempted: int | None = None
        self._preemption = PreemptionWatch()
        self._train_tracker = Tracker(self.metrics)
        self._test_tracker = Tracker(copy.deepcopy(self.metrics))
        self._raw_optimizers: list[torch.optim.Optimizer] = []  # kept across fits of the same model
        self._optimizers_model: nn.Module | None = None
        self._targets_checked = False
        self._shuffle_generator: torch.Generator | None = None
        # The data options of the running call (fit's steps_per_epoch, validation_freq, weights, ...).
        self.sample_weights: torch.Tensor | None = None
        self._criterion = Criterion()
        self._phase = "training"
        self._steps_per_epoch: int | None = None
        self._validation = ValidationSchedule()
        self._weighting = SampleWeighting()
        self._batches: TrainingBatches | None = None
        self._epoch_validation: dict[str, float] | None = None  # val_* of the epoch's latest validation
        self._bypass_accelerate_wrappers = False
        self._call_loaders: list[DataLoader | None] = []
        self._model_attributes: dict[str, Any] = {}
        self._backward_calls = 0  # in the running accumulation window: steps must follow self.backward
        self._stepping = False  # inside optimizer_step: an optimizer step outside it bypassed the learner
        self._step_hooks: list[Any] = []
        self._run_lock: RunLock | None = None  # run_dir/fitorch.lock, held by the main process during fit
        self._stop_vote: StopVote | None = None
        self._stop_code = 0  # agreed so far in this fit: 1 stop, 2 preemption (see _agree_to_stop)

    # ------------------------------------------------------------------ the loop's position

    @property
    def epoch(self) -> int:
        """The current epoch, 0-based."""
        return self.state.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.state.epoch = value

    @property
    def epochs(self) -> int:
        """The epoch index the running (or last) fit stops before."""
        return self.state.epochs

    @epochs.setter
    def epochs(self, value: int) -> None:
        self.state.epochs = value

    @property
    def global_step(self) -> int:
        """Real optimizer steps since the start of training (one per accumulation window)."""
        return self.state.global_step

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.state.global_step = value

    @property
    def batch(self) -> int:
        """Index of the current batch within the running phase (training, validation, prediction)."""
        return self.state.batch

    @batch.setter
    def batch(self, value: int) -> None:
        self.state.batch = value

    @property
    def step_taken(self) -> bool:
        """Whether the current training batch ended with a real optimizer step (see `fitorch.Every`)."""
        return self.state.step_taken

    # ------------------------------------------------------------------ public calls

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The first (usually only) optimizer of the running (or last) fit."""
        return self.optimizers[0] if self.optimizers else None

    @property
    def is_main_process(self) -> bool:
        """Whether this process is the one that prints, logs and writes files."""
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def train_loader(self) -> DataLoader | None:
        """The training loader of the running `fit`, as Accelerate prepared it (sharded under several
        processes, batches on the device); None outside `fit`. A callback may iterate it, in
        `on_train_end` for example (SWA's batch-norm update does)."""
        return self._call_loaders[0] if self.fitting and self._call_loaders else None

    @property
    def batch_samples(self) -> int:
        """Samples in the current training batch on this process, read from its shape (no device sync).

        Under several processes, the repeats the distributed sampler pads the last batch with are not
        counted, so the sum over processes and batches is the number of samples in the data.
        """
        return self._valid_samples(self.window.batch_samples)

    @_verbose_for_the_call
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
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_freq: int | Collection[int] | Every = 1,
        class_weight: Mapping[int, float] | None = None,
        sample_weight: Any = None,
        callbacks: Sequence[Callback] | None = None,
        initial_epoch: int = 0,
        resume: str | os.PathLike | bool | None = None,
        hparams: Mapping[str, Any] | None = None,
        verbose: int | None = None,
    ) -> History:
        """Train `model` on `data` for `epochs` epochs and return the `History`.

        Args:
            model: the model; it is trained in place and also available as `learner.model`.
            data: a DataLoader, a Dataset, tensors or arrays (`(x, y)`, `(x1, x2, ..., y)`,
                `({"a": xa, "b": xb}, y)`), or an iterable of batches such as a generator (the guide's
                "Data" section lists every form).
            epochs: index of the last epoch to train (as in Keras: with `initial_epoch`, the total).
            validation_data: data to evaluate at the end of every epoch, in the same forms as `data`.
            validation_split: fraction of `data` (the last samples, before shuffling) kept for validation.
            batch_size: batch size when fitorch builds the loader (default 32).
            shuffle: shuffle each epoch when fitorch builds the loader (default True).
            steps_per_epoch: batches per epoch; an epoch then takes the next batches of an endless stream
                of passes over the data (as in Keras), so an endless generator needs it.
            validation_steps: batches per validation run (all by default).
            validation_freq: when to validate: every n-th epoch (an int), after the listed epochs
                (counted from 1), or every n optimizer steps (`Every(n)`); `fitorch.validation` says
                where the values go.
            class_weight: `{class index: weight}` for every class: each training sample's loss is
                weighted by its class, as in Keras.
            sample_weight: one weight per sample of `(x, y)` arrays (an array or tensor), or True when
                every batch ends with its weights, `(inputs..., targets, weights)`.
            callbacks: extra callbacks for this call, after the learner's own.
            initial_epoch: epoch to start at (to continue an earlier run).
            resume: a checkpoint directory to continue from exactly (model, optimizer, counters,
                RNG states and callback states); True for the newest checkpoint under `run_dir`; or
                `"auto"`: the newest checkpoint under `run_dir` when there is one, else a new run (one
                command for the first start and every restart of a requeued job). A new run from
                epoch 0 in a `run_dir` that holds another is refused (`"auto"` moves an earlier
                attempt without checkpoints aside instead).
                A backup offered by a callback (`BackupAndRestore`) takes precedence: it is the
                newer state of this same fit (docs/checkpoints.md).
            hparams: hyperparameters of this fit, merged over `Learner(hparams=...)` into
                `learner.run_hparams`; train.log and TensorBoard record them.
            verbose: the learner's `verbose` for this call only.

        Returns:
            The `fitorch.callbacks.History`: `history.history["val_loss"]` is a list, one value per epoch.

        Raises:
            ValueError, TypeError: bad arguments or data, before any training.
            RunDirLocked: another live fit holds `run_dir`, before any training.
        """
        self._check_fit_arguments(model, epochs, initial_epoch, validation_split, validation_data)
        self._set_fit_data_options(steps_per_epoch, validation_steps, validation_freq, class_weight, sample_weight)
        self.run_hparams = _merge_hparams(self.hparams, hparams)
        self.accelerator = self._make_accelerator()
        # Each pass over the data reseeds the shuffle generator with shuffle_seed + pass (fitorch.passes).
        shuffle_seed = self.seed if self.seed is not None else int(torch.randint(2**31, ()).item())
        train_loader, val_loader = self._fit_loaders(
            model, data, validation_data, validation_split, batch_size, shuffle
        )
        if self.seed is not None:
            seed_everything(self.seed)
        self._start_call(model, callbacks, training=True, validating=val_loader is not None)
        train_loader = self._prepare_loader(train_loader)
        val_loader = self._prepare_loader(val_loader) if val_loader is not None else None
        self._call_loaders = [train_loader, val_loader]
        self._begin_fit(epochs, initial_epoch, shuffle_seed, train_loader)
        try:
            self._run_lock = lock_run_dir(self.run_dir, self.accelerator)  # one writer per run_dir, until _end_call
            self._resume(resume)  # `resume`, or a backup a callback offers (BackupAndRestore)
        except BaseException:
            self._end_call()
            raise
        self.fitting = True
        self._fit_loop(train_loader, val_loader)
        if self.preempted is not None:
            self._exit_preempted()
        return self.history

    def _begin_fit(self, epochs: int, initial_epoch: int, shuffle_seed: int, train_loader: DataLoader) -> None:
        """The loop's position and the flags of a new fit; the preemption signals caught from here on."""
        self.state.start_fit(epochs, initial_epoch, shuffle_seed)
        self.num_batches = self._training_batches(train_loader).per_epoch  # a resume checks its batch against it
        self.stop_training, self.exception, self.resumed, self.preempted = False, None, False, None
        self._stop_vote, self._stop_code = StopVote(self.accelerator), 0  # every process stops after one batch
        self._preemption.install()
        vars(self.model).pop("stop_training", None)  # Keras's flag belongs to the fit that sets it

    def _exit_preempted(self) -> None:
        logger.warning(
            "fit: preempted by %s at epoch %d, batch %d (global step %d); the checkpoint writers saved. "
            "Exiting with code %d; the same command resumes.",
            signal.Signals(self.preempted).name,
            self.epoch + 1,
            self.state.batches_done,
            self.global_step,
            128 + self.preempted,
        )
        raise Preempted(self.preempted)

    def _own_the_shuffle(self, loader: DataLoader, name: str) -> None:
        """Let the learner's per-epoch generator drive the shuffling and worker seeds of a user's DataLoader.

        Raises:
            ValueError: persistent workers, whose random state carries over from epoch to epoch, so
                that no resumed run could reproduce it.
        """
        if loader.num_workers and loader.persistent_workers:
            raise ValueError(
                f"{name} uses persistent_workers=True: each worker's random state would carry over from one "
                "epoch to the next, so a resumed fit could not draw what the first run drew, and fitorch "
                "promises exact resume. Pass persistent_workers=False (fitorch then seeds each epoch's "
                "workers from the learner's seed and the epoch), or let fitorch build the loader."
            )
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(loader, "batch_sampler", None)
        for candidate in (sampler, getattr(batch_sampler, "sampler", None)):
            if candidate is not None and hasattr(candidate, "generator"):
                candidate.generator = self._shuffle_generator
        loader.generator = self._shuffle_generator  # worker seeds are drawn from it

    def _set_fit_data_options(
        self,
        steps_per_epoch: int | None,
        validation_steps: int | None,
        validation_freq: Any,
        class_weight: Mapping[int, float] | None,
        sample_weight: Any,
    ) -> None:
        self._steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", minimum=1, allow_none=True)
        self._validation = ValidationSchedule(validation_freq, validation_steps)
        self._weighting = SampleWeighting(class_weight, sample_weight)
        if self._weighting.active:
            if self.loss_fn is None:
                raise ValueError(
                    "class_weight and sample_weight weigh the learner's loss, but this learner has none (the model "
                    "computes its own). Pass loss=... to Learner, or weigh the samples inside the model's loss."
                )
            self._criterion.unreduced(self.loss_fn)  # raises for a loss that cannot be had per sample

    def _fit_loaders(
        self,
        model: nn.Module,
        data: DataLike,
        validation_data: DataLike | None,
        validation_split: float,
        batch_size: int | None,
        shuffle: bool | None,
    ) -> tuple[DataLoader, DataLoader | None]:
        options = self._loader_options(batch_size, shuffle, model)
        self._shuffle_generator = options.generator = torch.Generator()
        self._require_targets(data, "fit")
        data = self._weighting.add_to(data, validation_split, options.float_dtype)
        if validation_split:
            dataset = to_dataset(data, "data", options.float_dtype)
            if dataset is None:
                raise ValueError("validation_split needs tensors or a Dataset, not a DataLoader; pass validation_data.")
            data, validation_data = split_for_validation(dataset, validation_split)
        train_loader = self._checked_loader(make_loader(data, "data", options, train=True), "data")
        if isinstance(data, DataLoader):
            self._own_the_shuffle(train_loader, "data")
        if validation_data is None:
            return train_loader, None
        eval_options = dataclasses.replace(options, shuffle=None, generator=None, steps=self._validation.steps)
        val_loader = make_loader(validation_data, "validation_data", eval_options, train=False)
        return train_loader, self._checked_loader(val_loader, "validation_data")

    def _checked_loader(self, loader: DataLoader, name: str) -> DataLoader:
        """`loader`, unless it cannot work: no batches at all, or batches from a generator under several processes.

        Raises:
            ValueError: saying why.
        """
        if loader_batches(loader) == 0:
            raise ValueError(describe_empty(loader, name))
        if isinstance(loader.dataset, IterableBatches) and self.accelerator.num_processes > 1:
            raise ValueError(
                f"{name} is an iterable of batches, which cannot be shared out among "
                f"{self.accelerator.num_processes} processes; give a Dataset or tensors, which fitorch shards."
            )
        return loader

    def _require_targets(self, data: DataLike, call: str) -> None:
        """Refuse inputs alone (`fit(model, x)`) where the loss or the metrics need targets.

        Raises:
            ValueError: naming the fix.
        """
        alone = (
            is_tensor_data(data)
            and not isinstance(data, Mapping)
            and (not isinstance(data, (tuple, list)) or len(data) == 1)
        )
        if alone and (self.loss_fn is not None or (call == "evaluate" and self.metrics)):
            raise ValueError(_no_targets_message(call, self.loss_name))

    def _resume(self, resume: str | os.PathLike | bool | None) -> None:
        """Restore the fit from a callback's offered checkpoint, from `resume`, or from neither.

        Called after the model and optimizers are prepared and the callbacks attached, before
        `on_train_begin`, so every callback starts from the restored state. An offered checkpoint
        (`Callback.resume_checkpoint()`, BackupAndRestore's backup) takes precedence over `resume`,
        since it is the newer state of this same fit.
        """
        path = next((path for path in (cb.resume_checkpoint() for cb in self.active_callbacks) if path), None)
        if path is None and resume is not None and resume is not False:
            path = self._checkpoint_to_resume(resume)
        check_same_checkpoint(self.accelerator, path)  # a node that cannot see it fails on every process
        if path is None and resume is True:
            raise ValueError(
                f"fit(resume=True): no checkpoint under run_dir {self.run_dir!r}. Save some with "
                "ModelCheckpoint or BackupAndRestore, or pass the checkpoint's path to resume."
            )
        if path is None:
            self._check_new_run(archive=resume == "auto")
            return
        loop = load_checkpoint(self, os.fspath(path))["loop"]
        self.resumed = True
        logger.info(
            "Resumed from %s at epoch %d, batch %d, global step %d.",
            os.fspath(path),
            loop["epoch"] + 1,
            loop["batch"],
            loop["global_step"],
        )

    def _checkpoint_to_resume(self, resume: str | os.PathLike | bool) -> str | None:
        if isinstance(resume, (str, os.PathLike)) and resume != "auto":
            return os.fspath(resume)
        if resume is not True and resume != "auto":
            raise TypeError(f"resume must be a checkpoint path, True or 'auto', got {resume!r}.")
        if self.run_dir is None:
            raise ValueError(
                f"fit(resume={resume!r}) looks for the newest checkpoint under run_dir, but run_dir is None. "
                "Set Learner(run_dir=...) or pass the checkpoint's path: fit(..., resume='runs/x/backup')."
            )
        path = latest_checkpoint(self.run_dir) if os.path.isdir(self.run_dir) else None
        if path is None and resume == "auto":
            logger.info("fit(resume='auto'): no checkpoint under %s; starting a new run.", self.run_dir)
        return path  # None with resume=True is refused once every process has said what it sees

    def _check_new_run(self, archive: bool) -> None:
        """Refuse to start a new run from epoch 0 in a run_dir that holds another (or, asked, move it aside).

        Logs and event files of two runs in one folder would interleave (TensorBoard would draw steps
        0, 1, 2, 0, 1, 2); a fit that continues (`initial_epoch > 0`, or a resume) appends instead.
        """
        if self.run_dir is None or self.epoch > 0:
            return
        found = [name for name in _RUN_FILES if _holds_something(os.path.join(self.run_dir, name))]
        self.accelerator.wait_for_everyone()  # every process looks before the main one writes train.log
        if not found:
            return
        if not archive:
            raise ValueError(
                f"run_dir {self.run_dir!r} holds an earlier run ({', '.join(found)}), and this fit starts a new one "
                "from epoch 0: their logs would interleave. Continue that run with fit(..., resume=True) (or "
                "resume='auto'), give this run its own run_dir, or move the earlier run away."
            )
        if self.is_main_process:
            aside = os.path.join(self.run_dir, f"attempt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.makedirs(aside, exist_ok=True)
            for name in found:
                os.replace(os.path.join(self.run_dir, name), os.path.join(aside, name))
            logger.info("fit(resume='auto'): the earlier attempt saved no checkpoint; its logs moved to %s.", aside)
        self.accelerator.wait_for_everyone()  # no process writes before the earlier logs are aside

    @_verbose_for_the_call
    def evaluate(
        self,
        model: nn.Module,
        data: DataLike,
        *,
        batch_size: int | None = None,
        callbacks: Sequence[Callback] | None = None,
        verbose: int | None = None,
    ) -> dict[str, float]:
        """Evaluate `model` on `data` and return the logs, e.g. `{"loss": 0.21, "accuracy": 0.93}`.

        Fires `on_test_begin`, `on_test_batch_begin/end` and `on_test_end`. The values are exact
        means over all samples (across every process under distributed evaluation).

        Args:
            model: the model to evaluate (in eval mode, without gradients).
            data: a DataLoader, a Dataset, tensors or arrays `(x, y)` / `(x1, x2, ..., y)`, or an iterable
                of batches; the batches must carry targets (for outputs alone, use `predict`).
            batch_size: batch size when fitorch builds the loader (default 32).
            callbacks: extra callbacks for this call, after the learner's own.
            verbose: the learner's `verbose` for this call only.

        Returns:
            The loss (when there is one) and every metric, by name.

        Raises:
            ValueError, TypeError: bad arguments or data (inputs without targets among them), before any
                batch runs.
        """
        self._require_targets(data, "evaluate")
        return self._inference_call(model, data, batch_size, callbacks, self._evaluate_loader)

    @_verbose_for_the_call
    def predict(
        self,
        model: nn.Module,
        data: DataLike,
        *,
        batch_size: int | None = None,
        callbacks: Sequence[Callback] | None = None,
        verbose: int | None = None,
    ) -> Any:
        """Run `model` over `data` and return its outputs concatenated in dataset order, on the CPU.

        `data` may be inputs alone (a tensor, an array, or a tuple of them for a model with several
        inputs), or a Dataset or DataLoader whose batches may carry targets, which are ignored. Tuple
        or dict outputs are concatenated element by element. Under several processes every process
        gets the full result.

        Args:
            model: the model to run (in eval mode, without gradients).
            data: inputs (a tensor, an array, a tuple of them, or a dict of them), a Dataset, a DataLoader
                or an iterable of batches.
            batch_size: batch size when fitorch builds the loader (default 32).
            callbacks: extra callbacks for this call, after the learner's own.
            verbose: the learner's `verbose` for this call only.

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

    def lr_find(
        self,
        model: nn.Module,
        data: DataLike,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_steps: int = 100,
        smoothing: float = 0.98,
        diverge_threshold: float | None = 4.0,
        rule: str = "valley",
        batch_size: int | None = None,
        shuffle: bool | None = None,
    ) -> LRFindResult:
        """Sweep the learning rate up exponentially over a short training run and suggest one.

        Trains `model` on `data` with this learner's loss, optimizer, precision, accumulation,
        clipping and step methods, but with fresh optimizers and none of its callbacks, raising every
        parameter group's rate geometrically from `start_lr` to `end_lr` over `num_steps` optimizer
        steps, and stops early once the smoothed loss exceeds `diverge_threshold` times its lowest
        value. Afterwards the model (weights, buffers, gradients, device, training mode), every random
        number generator (Python, NumPy, torch CPU and CUDA, and a given DataLoader's own generator)
        and the learner are exactly as before: a `fit` after `lr_find` is bit-identical to the same
        `fit` without it. Under several processes every process records the same curve (losses
        averaged over processes) and gets the same suggestion.

        Args:
            model: the model to sweep; it is left as it came in.
            data: training data, in any form `fit` takes.
            start_lr: the first rate (of the first parameter group; other groups keep their ratio to it).
            end_lr: the last rate, reached at step `num_steps`.
            num_steps: optimizer steps of the sweep (the data is repeated if it holds fewer batches).
            smoothing: weight of the past in the exponential moving average of the loss (0: none).
            diverge_threshold: stop when the smoothed loss exceeds this multiple of its lowest value
                (or is not finite); None runs every step.
            rule: how to suggest a rate: `"valley"` (halfway along the longest stretch over which the
                loss falls) or `"steepest"` (where it falls fastest). `LRFindResult.suggest` applies the other.
            batch_size: batch size when fitorch builds the loader (default 32).
            shuffle: shuffle when fitorch builds the loader (default True).

        Returns:
            An `LRFindResult`: `rates`, smoothed `losses`, `suggestion`, `rule`, and `plot()` / `save_plot()`.

        Raises:
            ValueError, TypeError: bad arguments or data, before anything is touched.

        Example:
            >>> result = learner.lr_find(model, (x, y))  # doctest: +SKIP
            >>> learner.fit(model, (x, y), epochs=5)  # exactly as without the sweep  # doctest: +SKIP
            >>> result.suggestion, result.save_plot("lr_find.png")  # doctest: +SKIP
        """
        from fitorch.lr_finder import find_lr

        return find_lr(
            self,
            model,
            data,
            start_lr=start_lr,
            end_lr=end_lr,
            num_steps=num_steps,
            smoothing=smoothing,
            diverge_threshold=diverge_threshold,
            rule=rule,
            batch_size=batch_size,
            shuffle=shuffle,
        )

    def _inference_call(
        self, model: nn.Module, data: DataLike, batch_size: int | None, callbacks: Sequence[Callback] | None, run: Any
    ) -> Any:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.accelerator = self._make_accelerator()
        self._steps_per_epoch, self._validation, self._weighting = None, ValidationSchedule(), SampleWeighting()
        loader = make_loader(data, "data", self._loader_options(batch_size, None, model), train=False)
        self._checked_loader(loader, "data")
        self._start_call(model, callbacks, training=False)
        self._call_loaders = [self._prepare_loader(loader)]
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
        self.outputs = outputs = call_model(self.prepared_model, inputs)
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

        The learner's loss reads `outputs.logits` or the first element of tuple outputs when it is a
        name or a torch loss module, weighs the samples (`fit(class_weight=..., sample_weight=...)`,
        `learner.sample_weights`), and takes class indices of any integer dtype.

        Raises:
            ValueError, TypeError: on the first batch, targets that cannot work with a named loss; on any
                batch, missing targets or class indices out of range.
        """
        if self.loss_fn is None:
            return loss_from_outputs(outputs)
        if targets is None:
            raise ValueError(_no_targets_message("fit" if self._phase == "training" else "evaluate", self.loss_name))
        if not self._targets_checked:
            check_targets(self.loss_name, prediction_tensor(outputs), targets)
            self._targets_checked = True
        return self._loss_value(outputs, targets, self.sample_weights)

    def _loss_value(self, outputs: Any, targets: Any, sample_weights: torch.Tensor | None) -> torch.Tensor:
        """The loss of `outputs` against `targets`: what it reads of the outputs, weights, target dtypes (Criterion)."""
        weights = None
        if self._weighting.active:
            predictions = prediction_tensor(outputs) if reads_predictions(self.loss_fn, self.loss_name) else outputs
            weights = self._weighting.weights(sample_weights, targets, predictions, training=self._phase == "training")
        where = (self._phase, self.state.epoch, self.state.batch)
        return self._criterion(self.loss_fn, self.loss_name, outputs, targets, weights, where)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` through Accelerate, firing `on_before_backward` and `on_after_backward`.

        Args:
            loss: the batch's mean loss; under accumulation fitorch weighs it by the batch's samples.
        """
        self.loss = loss
        self._backward_calls += 1
        self.active_callbacks.fire("on_before_backward", loss)
        loss = self.window.weigh(loss)
        if self._bypass_accelerate_wrappers:
            loss.backward()
        else:
            self.accelerator.backward(loss)  # loss scaling (fp16), DeepSpeed, XLA
        self.active_callbacks.fire("on_after_backward")

    def optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Finish the gradients of `optimizer` (average, unscale, clip) and step it, between its two events.

        Fires `on_before_optimizer_step(optimizer)` before the step and `on_optimizer_step()` after it,
        once per optimizer stepped. The window's first real step advances `global_step`; a step that
        fp16 loss scaling skipped (inf or NaN gradients) advances nothing and fires no `on_optimizer_step`.

        Args:
            optimizer: one of `self.optimizers`; the first when None.
        """
        optimizer = optimizer or self.optimizer
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if parameters and not self._backward_calls:
            raise RuntimeError(
                "optimizer_step found gradients that did not come from self.backward(loss) in this "
                "accumulation window: a custom train_step called loss.backward() itself, so gradient "
                "accumulation, fp16 loss scaling and the backward events were skipped. Call "
                "self.backward(loss) instead (docs/guide.md, Custom steps)."
            )
        self.window.average(parameters)
        if not self._bypass_accelerate_wrappers:
            self.accelerator.unscale_gradients(optimizer)  # fp16: callbacks and clipping see true gradients
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        self.active_callbacks.fire("on_before_optimizer_step", optimizer)
        self._stepping = True
        try:
            optimizer.step()
        finally:
            self._stepping = False
        optimizer.zero_grad(set_to_none=True)
        if getattr(optimizer, "step_was_skipped", False):  # Accelerate's wrapper, under fp16 loss scaling
            return
        if not self.state.step_taken:
            self.state.global_step += 1
            self.state.step_taken = True
        self.active_callbacks.fire("on_optimizer_step")

    # ------------------------------------------------------------------ the loop

    def _fit_loop(self, train_loader: DataLoader, val_loader: DataLoader | None) -> None:
        callbacks = self.active_callbacks
        try:
            callbacks.fire("on_train_begin", self.logs)
            self._agree_to_stop()  # a resumed run that had stopped, or a signal already
            for epoch in range(self.epoch, self.epochs):
                if self.stop_training:
                    break
                self._run_epoch(epoch, train_loader, val_loader)
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

    def _run_epoch(self, epoch: int, train_loader: DataLoader, val_loader: DataLoader | None) -> None:
        self.state.start_epoch(epoch)
        self._epoch_validation = None
        self.logs, self.num_batches = {}, self._training_batches(train_loader).per_epoch
        self.active_callbacks.fire("on_epoch_begin", self.epoch, self.logs)
        logs = self._train_epoch(train_loader, val_loader)
        if self.preempted is not None:
            return  # stop inside the epoch: its checkpoint resumes with the next batch, validation to come
        if val_loader is not None and self._validation.epoch_due(epoch):
            self._epoch_validation = {f"val_{key}": value for key, value in self._evaluate_loader(val_loader).items()}
        # Without validation in this epoch (validation_freq), the logs say so: monitors skip the epoch.
        logs = EpochLogs(logs, validated=val_loader is None or self._epoch_validation is not None)
        logs.update(self._epoch_validation or {})
        logs.update(self.learning_rates())
        self.logs, self.state.epoch_complete = logs, True
        self.active_callbacks.fire("on_epoch_end", self.epoch, logs)
        self._agree_to_stop()

    def _train_epoch(self, loader: DataLoader, val_loader: DataLoader | None = None) -> dict[str, float]:
        callbacks, tracker, state = self.active_callbacks, self._start_tracking(), self.state
        running_logs = RunningLogs(tracker)
        self.window.reset()
        first, index = state.skip_batches, None
        for index, batch in self._epoch_batches(loader):
            batch = self._begin_batch(index, batch)
            with self._gradient_sync():
                self.loss, self.outputs = self.train_step(batch)
            state.batches_done = index + 1
            running_logs.settle_kept()  # a batch's logs a callback kept keep that batch's values
            self._track(tracker, self.loss, self.outputs, self.targets)
            callbacks.fire("on_train_batch_end", index, self._validate_within_epoch(val_loader, running_logs))
            if self._agree_to_stop(index):
                break
        running_logs.settle_kept()
        self._check_epoch_batches(first, index)
        return tracker.results(**self._reduce_options())

    def _start_tracking(self) -> Tracker:
        """The training tracker, reset, or holding the sums of the batches a resume inside this epoch skips."""
        tracker, state = self._train_tracker, self.state
        tracker.reset()
        if state.resumed_sums:
            sums = state.resumed_sums
            if self.accelerator.num_processes > 1:
                sums = sums[str(self.accelerator.process_index)]  # this process's share
            tracker.add_sums(sums, self.accelerator.device)
            state.resumed_sums = None
        return tracker

    def _begin_batch(self, index: int, batch: Any) -> Any:
        """Enter training batch `index`: the state, train mode, `on_train_batch_begin`, the window; the batch
        without its sample weights."""
        self.state.batch, self.state.step_taken, self._phase = index, False, "training"
        self.loss = self.outputs = None  # until this batch computes them
        if self.window.starts_window:
            self._backward_calls = 0
        if not self.prepared_model.training:
            self.prepared_model.train()  # validation or a callback may have switched to eval
        self.active_callbacks.fire("on_train_batch_begin", index, {})
        batch, self.sample_weights = self._weighting.split(batch, self._weighting.train_batches)
        self.inputs, self.targets = unpack_batch(batch)
        samples = batch_length(self.targets if self.targets is not None else batch)
        self.sync_gradients = self.window.add(index, samples, end_of_data=self._ends_epoch(index))
        return batch

    def _ends_epoch(self, index: int) -> bool:
        """Whether training batch `index` closes the epoch's last accumulation window."""
        if not self.window.accumulating:
            return False
        if self._steps_per_epoch is not None:
            return index + 1 == self._steps_per_epoch
        return self.accelerator.gradient_state.end_of_dataloader

    def _validate_within_epoch(self, val_loader: DataLoader | None, running_logs: Any) -> Any:
        """The batch logs, with the `val_*` of a validation run after this batch when one is due (`Every(n)`)."""
        if val_loader is None or not self._validation.step_due(self):
            return running_logs()
        kept = (self.state.batch, self.num_batches, self.loss, self.outputs, self.sample_weights)
        values = {f"val_{key}": value for key, value in self._evaluate_loader(val_loader).items()}
        self.state.batch, self.num_batches, self.loss, self.outputs, self.sample_weights = kept
        self._phase, self._epoch_validation = "training", values
        logs = running_logs()
        logs.update(values)  # computes this batch's running values now: a validation just ran anyway
        return logs

    def _check_epoch_batches(self, first: int, last: int | None) -> None:
        """Raise when the epoch got fewer batches than it must (a used-up generator), after reading the guard.

        Raises:
            ValueError: no batch at all, or fewer than `steps_per_epoch`.
        """
        self._criterion.guard.verify()
        trained = 0 if last is None else last + 1 - first
        wanted = None if self._steps_per_epoch is None else self._steps_per_epoch - first
        if (trained == 0 and first == 0) or (wanted is not None and trained < wanted and not self.stop_training):
            raise ValueError(
                f"data ran out in epoch {self.epoch + 1} after {trained} batches"
                + (f" of steps_per_epoch={self._steps_per_epoch}" if wanted is not None else "")
                + ". A generator is used up after one pass: make it endless (while True: ... yield batch) and pass "
                "steps_per_epoch, or give a list, a Dataset or tensors, which fitorch reads again every epoch."
            )

    def _evaluate_loader(self, loader: DataLoader) -> dict[str, float]:
        callbacks, tracker = self.active_callbacks, self._test_tracker
        tracker.reset()
        running_logs = RunningLogs(tracker)
        phase, self._phase = self._phase, "validation" if self.fitting else "evaluation"
        self.prepared_model.eval()
        steps = self._validation.steps if self.fitting else None
        self.num_batches = loader_batches(loader) if steps is None else min(steps, loader_batches(loader) or steps)
        callbacks.fire("on_test_begin", {})
        with torch.no_grad():
            self._evaluate_batches(first_batches(loader, steps), tracker, running_logs)
        results = tracker.results(**self._reduce_options())
        callbacks.fire("on_test_end", results)
        self._phase = phase
        return results

    def _evaluate_batches(self, batches: Iterator[Any], tracker: Tracker, running_logs: RunningLogs) -> None:
        callbacks, weighted = self.active_callbacks, self.fitting and self._weighting.validation_batches
        ran = False
        for self.batch, batch in enumerate(batches):
            ran = True
            callbacks.fire("on_test_batch_begin", self.batch, {})
            batch, self.sample_weights = self._weighting.split(batch, weighted)
            self.inputs, self.targets = unpack_batch(batch)
            if self.targets is None and (self.loss_fn is not None or self.metrics):
                raise ValueError(_no_targets_message("evaluate", self.loss_name))
            self.loss, self.outputs = self.test_step(batch)
            running_logs.settle_kept()
            self._track(tracker, self.loss, self.outputs, self.targets)
            callbacks.fire("on_test_batch_end", self.batch, running_logs())
        running_logs.settle_kept()
        self._criterion.guard.verify()
        if not ran:
            raise ValueError(
                f"{'validation_data' if self.fitting else 'data'} gave no batches to evaluate; a generator is used "
                "up after one pass: pass validation_steps with an endless one, or a list, a Dataset or tensors."
            )

    def _predict_loader(self, loader: DataLoader, inputs_only: bool) -> Any:
        callbacks, chunks = self.active_callbacks, []
        self.prepared_model.eval()
        self.num_batches = loader_batches(loader)
        callbacks.fire("on_predict_begin", {})
        with torch.no_grad():
            for self.batch, batch in enumerate(loader):
                callbacks.fire("on_predict_batch_begin", self.batch, {})
                if inputs_only and not isinstance(batch, Mapping):  # predict(model, (x1, x2)): all are inputs
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

        Inside an epoch it also holds the epoch's running loss and metric sums, so that a resumed
        epoch reports its values over all its batches; under several processes, each process's share
        (gathering them is a collective call: every process must call this).
        """
        if not self.state.batches_done or self.state.epoch_complete:
            return self.state.state_dict()
        sums = self._train_tracker.sums()
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            # Each process summed its own share of the epoch: keep every share (a collective call).
            shares = gather_object([sums])
            sums = {str(rank): share for rank, share in enumerate(shares)}
        return self.state.state_dict(sums)

    def load_loop_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a `loop_state()`: the next `fit` epoch starts there, skipping batches already trained."""
        self.state.load_state_dict(state)

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
                "compile": False if self.compiler is None else self.compiler.options or True,
                "device": str(accelerator.device) if accelerator else None,
                "num_processes": accelerator.num_processes if accelerator else 1,
                "epochs": self.epochs,
                "run_dir": self.run_dir,
                "hparams": self.run_hparams,
            }
        )

    def _gradient_sync(self) -> Any:
        if self.sync_gradients or self.accelerator.num_processes == 1:
            return nullcontext()
        return self.accelerator.no_sync(self.prepared_model)  # skip the all-reduce inside a window

    def _epoch_batches(self, loader: DataLoader) -> Iterator[tuple[int, Any]]:
        skip, self.state.skip_batches = self.state.skip_batches, 0
        return self._training_batches(loader).epoch(self.epoch, skip)

    def _training_batches(self, loader: DataLoader) -> TrainingBatches:
        if self._batches is None or self._batches.loader is not loader:
            self._batches = TrainingBatches(
                loader, self._steps_per_epoch, self._skip_first_batches, self._reseed_shuffle
            )
        return self._batches

    def _skip_first_batches(self, loader: DataLoader, skip: int) -> Any:
        if loader.num_workers:
            # Workers draw their own random numbers (augmentations): fetch the skipped batches and drop
            # them, so each worker's generator reaches the resume point as it did in the first run.
            return itertools.islice(loader, skip, None)
        return self.accelerator.skip_first_batches(loader, skip)

    def _reseed_shuffle(self, data_pass: int) -> None:
        if self._shuffle_generator is not None:
            # A seed per pass makes the pass's order, and the seeds of its loader workers (drawn from the
            # same generator when the workers start, every pass), a pure function of (seed, pass): a
            # resumed run draws exactly what the uninterrupted run drew.
            self._shuffle_generator.manual_seed(self.state.shuffle_seed + data_pass)

    def _track(self, tracker: Tracker, loss: torch.Tensor | None, outputs: Any, targets: Any) -> None:
        predictions = prediction_tensor(outputs)
        count = batch_length(targets if targets is not None else predictions)
        valid = self._valid_samples(count)
        if valid < count:  # the distributed sampler padded this batch with repeated samples
            if valid == 0:
                return
            predictions, targets = predictions[:valid], targets[:valid] if targets is not None else None
            if self.loss_fn is not None and targets is not None:
                weights = self.sample_weights[:valid] if self.sample_weights is not None else None
                loss = self._loss_value(predictions, targets, weights)
            count = valid
        tracker.update(loss, predictions, targets, count)

    def _stop_requested(self) -> bool:
        """`stop_training`, set on the learner, or on the model the Keras way (`self.model.stop_training = True`).

        The model's flag is taken over and removed, so the model leaves the fit as it came in.
        """
        if vars(self.model).get("stop_training") is True:
            del self.model.stop_training
            self.stop_training = True
        return self.stop_training

    def _valid_samples(self, count: int) -> int:
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return count
        state = accelerator.gradient_state
        if not state.end_of_dataloader or state.remainder <= 0:
            return count
        # Gathered in process order, the first `remainder` samples of the last batch are real.
        return max(0, min(count, state.remainder - accelerator.process_index * count))

    def _reduce_options(self) -> dict[str, Any]:
        if self.accelerator.num_processes == 1:
            return {}
        return {"reduce": lambda tensor: self.accelerator.reduce(tensor, "sum"), "device": self.accelerator.device}

    def broadcast(self, value: float) -> float:
        """The main process's `value`, on every process: for decisions every process must take alike.

        A callback that decides from a value (stop, keep the best weights, lower the rate) decides on
        the main process's value, so that no two processes end with different weights. Under several
        processes this is a collective call: every process must make it at the same point.

        Example:
            >>> value = self.learner.broadcast(logs["val_loss"])  # doctest: +SKIP
        """
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        return float(broadcast(tensor, from_process=0).item())

    def _agree_to_stop(self, batch: int | None = None) -> bool:
        """Whether every process stops now: any asked (`stop_training`, a preemption signal), and all agree.

        After training batch `batch` the processes compare their asks every few batches without
        waiting for each other (`fitorch.distributed.StopVote`); at an epoch's end (`batch` None) at
        once. A preemption stops only at the end of an optimizer step, so that its checkpoint resumes
        exactly; every process sees the same votes and the same windows, so all stop after one batch.
        All processes must call this at the same points.
        """
        asked = _PREEMPT if self._preemption.signal is not None else _STOP if self._stop_requested() else 0
        agreed = self._stop_vote.settle(asked) if batch is None else self._stop_vote.after_batch(batch, asked)
        self._stop_code = max(self._stop_code, agreed)
        if self._stop_code == _PREEMPT and (batch is None or self.sync_gradients):
            self.preempted = self._preemption.signal or signal.SIGTERM
        if self._stop_code == _STOP or self.preempted is not None:
            self.stop_training = True
            return True
        return False

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
        if accelerator.mixed_precision == "fp16" and not accelerator.native_amp and accelerator.device.type == "cpu":
            raise ValueError(
                "mixed_precision='fp16' needs a GPU: on the CPU Accelerate turns it off and would train in "
                "float32 without a word. Use mixed_precision='bf16' on the CPU (or 'no'), or train on a GPU."
            )
        # Batches reach the GPU while it computes, with no host sync per step (docs/performance.md).
        accelerator.dataloader_config.non_blocking = pins_memory(accelerator.device)
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

    def _loader_options(self, batch_size: int | None, shuffle: bool | None, model: nn.Module) -> LoaderOptions:
        check_int(batch_size, "batch_size", minimum=1, allow_none=True)
        if shuffle is not None:
            check_bool(shuffle, "shuffle")
        return LoaderOptions(
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=pins_memory(self.accelerator.device),
            float_dtype=model_float_dtype(model),
        )

    def _prepare_loader(self, loader: DataLoader) -> DataLoader:
        """The loader through Accelerate (sharding, the end-of-data flag), placing batches on the device
        unless they are there already: fitorch's loader over CPU tensors, on the CPU, where Accelerate's
        per-batch `send_to_device` would walk every batch for nothing (about 4 µs a batch)."""
        in_place = self.accelerator.device.type == "cpu" and isinstance(loader.dataset, ArrayDataset)
        in_place = in_place and loader.dataset.on_cpu
        return self.accelerator.prepare(loader, device_placement=[not in_place])

    def _start_call(
        self, model: nn.Module, callbacks: Sequence[Callback] | None, training: bool, validating: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        # Checkpoints and callbacks see the plain module; a compiled one of the user's runs the forward passes.
        self.model = unwrap_compiled(model)
        # What Accelerate's prepare sets on the model itself (an autocast forward, a "prepared" flag
        # that makes the next prepare skip the model): put back as it was when the call ends.
        self._model_attributes = {name: vars(self.model)[name] for name in _PREPARE_MARKS if name in vars(self.model)}
        # Plain backward and optimizer steps are exactly what Accelerate would run in these modes.
        self._bypass_accelerate_wrappers = self.accelerator.scaler is None and self.accelerator.distributed_type in (
            DistributedType.NO,
            DistributedType.MULTI_CPU,
            DistributedType.MULTI_GPU,
        )
        self.window = GradientWindow(self.grad_accum_steps)
        self._targets_checked = False
        self._batches, self.sample_weights, self._phase = None, None, "training"
        self._criterion.guard.reset()
        if training:
            if self._optimizers_model is not self.model:  # a new model gets new optimizers; the same one keeps state
                self._raw_optimizers = build_optimizers(self.optimizer_spec, self.model, self.optimizer_options)
                self._optimizers_model = self.model
            self._step_hooks = [opt.register_step_post_hook(self._check_step_origin) for opt in self._raw_optimizers]
            prepared = self.accelerator.prepare(model, *self._raw_optimizers)
            self.prepared_model, self.optimizers = prepared[0], list(prepared[1:])
            if self.compiler is not None and not is_compiled(model):
                self.prepared_model = self.compiler(self.prepared_model, keep=self.prepared_model is self.model)
            if self._bypass_accelerate_wrappers:
                # Accelerate placed the optimizer state; its wrapper would only add checks that cost
                # ~150 us a step (benchmarks/analysis.md), so steps go to the torch optimizers.
                self.optimizers = [optimizer.optimizer for optimizer in self.optimizers]
        else:
            self.prepared_model = self.accelerator.prepare_model(model, evaluation_mode=True)
        self.active_callbacks = CallbackList(self._callbacks_for_call(callbacks, training, validating), self)

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

    def _check_step_origin(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._stepping:
            raise RuntimeError(
                f"{type(optimizer).__name__}.step() was called outside self.optimizer_step(): a custom train_step "
                "stepped the optimizer itself, so gradient clipping, accumulation, global_step, per-step "
                "schedules and the optimizer events were skipped. Call self.optimizer_step(optimizer) "
                "when self.sync_gradients is True (docs/guide.md, Custom steps)."
            )

    def _end_call(self) -> None:
        self._preemption.restore()
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = []
        if self._run_lock is not None:
            self._run_lock, lock = None, self._run_lock
            lock.release()
        # Accelerate patched the model's forward for mixed precision and flagged it as prepared, which
        # would make the next call skip it (and run without autocast): give the user back their model.
        if self.prepared_model is not None:
            self.accelerator.unwrap_model(self.prepared_model, keep_fp32_wrapper=False)
        if self.model is not None:
            for name in _PREPARE_MARKS:
                if name in self._model_attributes:
                    setattr(self.model, name, self._model_attributes[name])
                else:
                    vars(self.model).pop(name, None)
        workers = any(getattr(loader, "num_workers", 0) for loader in self._call_loaders)
        self._call_loaders, self._batches = [], None
        if self.prepared_model is not self.model or workers:
            # Drop every reference to the DDP wrapper (the last graph holds its gradient hooks): one
            # still alive when the process group is destroyed at exit aborts the process and the job.
            # Accelerate also holds the loaders, whose persistent workers would outlive the call.
            self.prepared_model = self.model
            self.loss, self.outputs = _detached(self.loss), _detached(self.outputs)
            forget_prepared(self.accelerator)
        self.inputs = self.targets = None  # the last batch is not kept alive after the call

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


_RUN_FILES = ("train.log", "metrics.csv", "tensorboard", "checkpoints")  # what a run writes in run_dir


def _holds_something(path: str) -> bool:
    return os.path.isfile(path) or (os.path.isdir(path) and any(os.scandir(path)))


def _check_verbose(verbose: Any, owner: str | None = None) -> int:
    return check_choice(verbose, "verbose (0 silent, 1 progress bar, 2 one line per epoch)", (0, 1, 2), owner=owner)


def _no_targets_message(call: str, loss_name: str | None) -> str:
    loss = f"loss={loss_name!r}" if loss_name else "the loss"
    if call == "evaluate":
        return (
            "evaluate needs targets to compute the loss and the metrics, but the batches carry inputs only. "
            "Pass (x, y); for the model's outputs on inputs alone, use learner.predict(model, x)."
        )
    return (
        f"{loss} needs targets, but the batches carry inputs only (fit(model, x)). Pass (x, y), batches "
        "(inputs, targets), or dict batches with 'labels'; or use loss=None for a model that returns its own loss."
    )


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
