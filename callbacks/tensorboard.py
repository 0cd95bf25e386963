"""`TensorBoard`: event files for TensorBoard (`run_dir/tensorboard` by default).

It owns two event writers, one per TensorBoard run (`train/` and `validation/`), and what goes
into them. `tensorboard` is imported only when a fit with this callback starts, never by
`import fitorch`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from fitorch import Callback, Every
from fitorch.checks import check_bool, check_int, check_path

INSTALL = "pip install tensorboard"


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's module needs the tensorboard package
        raise ImportError(f"The TensorBoard callback needs the tensorboard package: {INSTALL}") from error
    return SummaryWriter


def _markdown_table(config: dict[str, Any]) -> str:
    rows = [f"| {key} | `{value}` |" for key, value in config.items()]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


class TensorBoard(Callback):
    """Writes TensorBoard event files: epoch scalars, the learning rate, per-step loss, histograms, graph.

    Layout, as in Keras: two TensorBoard runs under `log_dir`, `train/` and `validation/`. Every
    epoch log key `k` is written as the tag `epoch_k` at step `epoch` (0-based), training values in
    `train/` and `val_k` as `epoch_k` in `validation/`, so TensorBoard draws the training and
    validation curves of a metric on one chart. The learning rates (`lr`, `lr_1`, ...) are
    `epoch_lr`, `epoch_lr_1`, ... in `train/`. At the start, the configuration and hyperparameters
    (`learner.config()`) are a text summary `config`; at the end, the hyperparameters also go to
    the HParams dashboard with the last epoch's values. After each validation pass, its values also
    go to `validation/` as `evaluation_k_vs_iterations` at step `global_step` (Keras's tags), to
    compare runs of different epoch lengths by optimizer steps. Main process only.

    Args:
        log_dir: the folder; None means `run_dir/tensorboard`.
        update_freq: `"epoch"`, or an int n to also write the batch loss (`batch_loss`) and the
            learning rate (`batch_lr`) every n optimizer steps, at step `global_step`. Each write
            reads the loss from the device (a sync), hence the interval.
        histogram_freq: write a histogram of every parameter every this many epochs (0: never).
        write_graph: write the model graph, traced with the inputs of the first training batch
            (positional inputs only; the model is traced in eval mode, which changes no state).

    Raises:
        ValueError: a bad `update_freq` or `histogram_freq`; at the start of `fit`, no `log_dir` and
            no `run_dir`.
        ImportError: at the start of `fit`, when the `tensorboard` package is missing.

    Example:
        >>> board = TensorBoard("runs/tb", update_freq=100, histogram_freq=5)
        >>> learner.fit(model, train, epochs=10, validation_data=val, callbacks=[board])  # doctest: +SKIP
        >>> # then: tensorboard --logdir runs/tb
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        update_freq: str | int = "epoch",
        histogram_freq: int = 0,
        write_graph: bool = False,
    ) -> None:
        self.log_dir = check_path(log_dir, "log_dir", allow_none=True, owner="TensorBoard")
        self.update_every = Every.parse(update_freq, "update_freq", owner="TensorBoard")
        check_int(histogram_freq, "histogram_freq", minimum=0, owner="TensorBoard")
        self.histogram_every = Every(histogram_freq, "epoch") if histogram_freq else None
        self.update_freq, self.histogram_freq = update_freq, histogram_freq
        self.write_graph = check_bool(write_graph, "write_graph", owner="TensorBoard")
        self.writers: dict[str, Any] = {}
        self._graph_inputs: tuple[Any, ...] | None = None
        self._graph_hook: Any = None
        self._last_logs: dict[str, Any] = {}

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self.learner.is_main_process:
            return
        writer_class = _summary_writer()
        folder = self._resolve_dir()
        self.writers = {run: writer_class(os.path.join(folder, run)) for run in ("train", "validation")}
        self.writers["train"].add_text("config", _markdown_table(self.learner.config()), self.learner.epoch)
        if self.write_graph:
            self._graph_hook = self.model.register_forward_pre_hook(self._capture_inputs)

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        if not self.writers:
            return
        if self._graph_inputs is not None:
            self._write_graph()
        learner = self.learner
        if self.update_every.step_due(learner):
            train = self.writers["train"]
            if learner.loss is not None:
                train.add_scalar("batch_loss", float(learner.loss.detach()), learner.global_step)  # a sync
            train.add_scalar("batch_lr", learner.learning_rates().get("lr", float("nan")), learner.global_step)

    def on_test_end(self, logs: dict[str, Any]) -> None:
        if not self.writers or not self.learner.fitting:
            return
        validation, step = self.writers["validation"], self.learner.global_step
        for key, value in logs.items():
            if isinstance(value, (int, float)):
                validation.add_scalar(f"evaluation_{key}_vs_iterations", value, step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self.writers:
            return
        for key, value in logs.items():
            run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            if isinstance(value, (int, float)):
                self.writers[run].add_scalar(f"epoch_{name}", value, epoch)
        if self.histogram_every is not None and self.histogram_every.epoch_due(epoch):
            for name, parameter in self.model.named_parameters():
                self.writers["train"].add_histogram(name, parameter.detach().float().cpu(), epoch)
        self._last_logs = dict(logs)
        for writer in self.writers.values():
            writer.flush()  # each epoch is on disk, for a TensorBoard that is watching

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self._graph_hook is not None:
            self._graph_hook.remove()
            self._graph_hook = None
        if not self.writers:
            return
        self._write_hparams()
        for writer in self.writers.values():
            writer.close()
        self.writers = {}

    def _resolve_dir(self) -> str:
        if self.log_dir is not None:
            return self.log_dir
        if self.learner.run_dir is None:
            raise ValueError("TensorBoard() needs a log_dir, or Learner(run_dir=...) to write run_dir/tensorboard.")
        return os.path.join(self.learner.run_dir, "tensorboard")

    def _capture_inputs(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self._graph_hook.remove()  # the first forward is enough
        self._graph_hook = None
        self._graph_inputs = args

    def _write_graph(self) -> None:
        inputs, self._graph_inputs = self._graph_inputs, None
        if not inputs:
            raise ValueError(
                "TensorBoard(write_graph=True) traces model(*inputs), but this model was called with keyword "
                "arguments only (a dict batch). Use write_graph=False."
            )
        with torch.no_grad(), warnings.catch_warnings():
            # TensorBoard's add_graph traces with torch.jit.trace, which recent torch releases mark deprecated:
            # a warning about a call the user never made, with nothing they could change.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
            self.writers["train"].add_graph(self.model, inputs, use_strict_trace=False)

    def _write_hparams(self) -> None:
        hparams = {
            key: value
            for key, value in self.learner.config()["hparams"].items()
            if isinstance(value, (bool, int, float, str))  # what the HParams dashboard can show
        }
        if not hparams:
            return
        metrics = {f"hparam/{key}": value for key, value in self._last_logs.items() if isinstance(value, (int, float))}
        # run_name="." keeps the summary inside train/ instead of a new run named after the clock.
        self.writers["train"].add_hparams(hparams, metrics, run_name=".")
