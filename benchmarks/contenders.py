"""The contenders: one function per way of training a workload, each returning the last epoch's logs.

Each `fit_*` function receives a freshly initialised model and the workload's tensors and does
everything a user's script would do from there: build the loaders, the optimizer and the
framework's objects, train, validate after every epoch, and read the epoch values once per epoch.
Their frameworks are imported by `import_framework` before the timer starts, so the functions
themselves find them in `sys.modules` and import time is not charged to the fit.

The reference is `fit_torch`, the loop a careful user writes by hand: `model.train()` / `eval()`,
`no_grad` for validation, loss and accuracy accumulated as tensors and read once per epoch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from workloads import SEED, Workload

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Logs = dict[str, float]

# The modules each contender needs; None means the framework is an optional extra.
FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "torch": (),
    "accelerate": ("accelerate",),
    "fitorch": ("fitorch", "fitorch.callbacks"),
    "fitorch_verbose0": ("fitorch", "fitorch.callbacks"),
    "lightning": ("lightning",),
    "keras": ("keras",),
}

LABELS: dict[str, str] = {
    "torch": "hand-written PyTorch loop (reference)",
    "accelerate": "hand-written Accelerate loop",
    "fitorch": "Learner.fit, defaults (the progress bar drawn to a terminal that discards it)",
    "fitorch_verbose0": "Learner.fit(verbose=0)",
    "lightning": "Lightning Trainer.fit",
    "keras": "Keras 3 model.fit (torch backend)",
}


def import_framework(contender: str) -> None:
    """Import what `contender` needs (outside the timed region).

    Raises:
        ImportError: an optional framework (Lightning, Keras) is not installed.
    """
    if contender == "keras":
        os.environ["KERAS_BACKEND"] = "torch"  # must be set before keras is imported
    for module in FRAMEWORKS[contender]:
        importlib.import_module(module)


def available(contender: str) -> bool:
    """Whether the framework of `contender` can be imported, without importing it."""
    return all(importlib.util.find_spec(module.split(".")[0]) is not None for module in FRAMEWORKS[contender])


def _loaders(workload: Workload, data: Data) -> tuple[DataLoader, DataLoader]:
    x, y, x_val, y_val = data
    train = DataLoader(TensorDataset(x, y), batch_size=workload.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=workload.batch_size)
    return train, val


Sums = tuple[torch.Tensor, torch.Tensor, int]  # loss sum, correct predictions, samples


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> Sums:
    """One epoch of the hand-written loop; the sums stay tensors, read once by the caller."""
    model.train()
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for inputs, targets in loader:
        outputs = model(inputs)
        loss = loss_fn(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(targets)
        correct += (outputs.argmax(dim=1) == targets).sum()
        seen += len(targets)
    return loss_sum, correct, seen


def evaluate_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> Sums:
    """One validation pass of the hand-written loop (`eval()`, `no_grad`), as sums."""
    model.eval()
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    with torch.no_grad():
        for inputs, targets in loader:
            outputs = model(inputs)
            loss_sum += loss_fn(outputs, targets) * len(targets)
            correct += (outputs.argmax(dim=1) == targets).sum()
            seen += len(targets)
    return loss_sum, correct, seen


def fit_torch(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """The reference: a hand-written PyTorch loop."""
    train_loader, val_loader = _loaders(workload, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=workload.lr)
    loss_fn = nn.CrossEntropyLoss()
    logs: Logs = {}
    for _ in range(workload.epochs):
        loss_sum, correct, seen = train_epoch(model, train_loader, optimizer, loss_fn)
        logs = {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen}
        logs.update(_evaluate_torch(model, val_loader, loss_fn))
    return logs


def _evaluate_torch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> Logs:
    loss_sum, correct, seen = evaluate_epoch(model, loader, loss_fn)
    return {"val_loss": loss_sum.item() / seen, "val_accuracy": correct.item() / seen}


def fit_accelerate(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """A hand-written Hugging Face Accelerate loop (one process, so no gathering is needed)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    train_loader, val_loader = _loaders(workload, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=workload.lr)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    loss_fn = nn.CrossEntropyLoss()
    logs: Logs = {}
    for _ in range(workload.epochs):
        model.train()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for inputs, targets in train_loader:
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(targets)
            correct += (outputs.argmax(dim=1) == targets).sum()
            seen += len(targets)
        logs = {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen}
        logs.update(_evaluate_torch(model, val_loader, loss_fn))
    return logs


def _fit_learner(workload: Workload, model: nn.Module, data: Data, verbose: int) -> Logs:
    from gpu_parts import NullTerminal  # discards, but says it is a terminal: the bar draws as on a console

    from fitorch import Learner, callbacks

    x, y, x_val, y_val = data
    extra = [callbacks.ProgressBar(file=NullTerminal())] if verbose else []
    learner = Learner(
        loss="cross_entropy", optimizer="adamw", lr=workload.lr, metrics=["accuracy"], verbose=verbose, cpu=True
    )
    history = learner.fit(
        model,
        (x, y),
        epochs=workload.epochs,
        validation_data=(x_val, y_val),
        batch_size=workload.batch_size,
        callbacks=extra,
    )
    return {key: values[-1] for key, values in history.history.items() if key != "lr"}


def fit_fitorch(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """`Learner.fit` with its defaults: `verbose=1`, the progress bar written to a null stream."""
    return _fit_learner(workload, model, data, verbose=1)


def fit_fitorch_verbose0(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """`Learner.fit(verbose=0)`: no progress output."""
    return _fit_learner(workload, model, data, verbose=0)


def fit_lightning(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """Lightning's `Trainer.fit` on the CPU, without logger, checkpointing, progress bar or sanity check."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.loss_fn = nn.CrossEntropyLoss()

        def _step(self, batch: Any, prefix: str) -> torch.Tensor:
            inputs, targets = batch
            outputs = self.model(inputs)
            loss = self.loss_fn(outputs, targets)
            accuracy = (outputs.argmax(dim=1) == targets).float().mean()
            n = len(targets)
            self.log(f"{prefix}loss", loss, on_step=False, on_epoch=True, batch_size=n)
            self.log(f"{prefix}accuracy", accuracy, on_step=False, on_epoch=True, batch_size=n)
            return loss

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._step(batch, "")

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self._step(batch, "val_")

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=workload.lr)

    train_loader, val_loader = _loaders(workload, data)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=workload.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(), train_loader, val_loader)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def fit_keras(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """Keras 3 on the torch backend: the same architecture as a Keras model, `model.fit` on arrays.

    The torch `model` is not used: Keras builds its own layers (same shapes, Keras initialisers).
    """
    import keras

    keras.utils.set_random_seed(SEED)
    keras_model = _keras_model(workload)
    keras_model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=workload.lr, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y, x_val, y_val = (tensor.numpy() for tensor in data)
    history = keras_model.fit(
        x,
        y,
        batch_size=workload.batch_size,
        epochs=workload.epochs,
        validation_data=(x_val, y_val),
        shuffle=True,
        verbose=0,
    )
    return {key: float(values[-1]) for key, values in history.history.items()}


def _keras_model(workload: Workload) -> Any:
    import keras
    from keras import layers

    if workload.name == "tiny":
        return keras.Sequential(
            [
                keras.Input(workload.input_shape),
                layers.Dense(256, activation="relu"),
                layers.Dense(256, activation="relu"),
                layers.Dense(workload.num_classes),
            ]
        )
    keras.config.set_image_data_format("channels_first")  # the torch layout, so no transposes
    return keras.Sequential(
        [
            keras.Input(workload.input_shape),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(workload.num_classes),
        ]
    )


FIT_FUNCTIONS: dict[str, Callable[[Workload, nn.Module, Data], Logs]] = {
    "torch": fit_torch,
    "accelerate": fit_accelerate,
    "fitorch": fit_fitorch,
    "fitorch_verbose0": fit_fitorch_verbose0,
    "lightning": fit_lightning,
    "keras": fit_keras,
}
