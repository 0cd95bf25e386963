"""The benchmark workloads: their settings, data, models and the warm-up every contender shares.

Every contender of a workload trains the same architecture on the same tensors (generated from a
fixed seed), with the same batch size, optimizer, loss, number of epochs and validation set, so
that all of them take the same number of optimizer steps. Only torch is imported here: a
contender's own framework is imported by the contender, so the reference loop's process never
loads Accelerate or fitorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SEED = 0


@dataclass(frozen=True)
class Workload:
    """The settings of one training workload.

    Attributes:
        name: the key used on the command line and in the results.
        description: one line for the report.
        input_shape: shape of one sample.
        train_samples: samples in the training set.
        val_samples: samples in the validation set (evaluated once per epoch).
        batch_size: batch size of training and validation.
        epochs: training epochs.
        lr: AdamW learning rate (weight decay is torch's default, 0.01, everywhere).
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    train_samples: int
    val_samples: int
    batch_size: int = 64
    epochs: int = 1
    lr: float = 1e-3
    num_classes: int = 10

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last, short batch is kept, as every contender does)."""
        return math.ceil(self.train_samples / self.batch_size)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole fit."""
        return self.steps_per_epoch * self.epochs


WORKLOADS: dict[str, Workload] = {
    "tiny": Workload(
        name="tiny",
        description="MLP 64-256-256-10, 20,000 samples, batch 64, AdamW, cross-entropy, 2 epochs, "
        "validation on 4,000 samples each epoch, accuracy",
        input_shape=(64,),
        train_samples=20_000,
        val_samples=4_000,
        epochs=2,
    ),
    "cnn": Workload(
        name="cnn",
        description="conv net (conv16-pool-conv32-pool-linear) on 1x28x28, 6,000 samples, batch 64, "
        "AdamW, cross-entropy, 1 epoch, validation on 1,000 samples, accuracy",
        input_shape=(1, 28, 28),
        train_samples=6_000,
        val_samples=1_000,
        epochs=1,
    ),
}


def make_model(workload: Workload) -> nn.Module:
    """The workload's model, initialised from the fixed seed."""
    torch.manual_seed(SEED)
    if workload.name == "tiny":
        return nn.Sequential(
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, workload.num_classes),
        )
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, workload.num_classes),
    )


def make_data(workload: Workload) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(x_train, y_train, x_val, y_val)`: random float32 inputs with learnable int64 labels.

    The labels are the argmax of a fixed random linear map of the inputs, so the accuracy rises
    during training and a broken contender shows up in its logs.
    """
    generator = torch.Generator().manual_seed(SEED)
    total = workload.train_samples + workload.val_samples
    x = torch.randn(total, *workload.input_shape, generator=generator)
    projection = torch.randn(x[0].numel(), workload.num_classes, generator=generator)
    y = (x.reshape(total, -1) @ projection).argmax(dim=1)
    n = workload.train_samples
    return x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous()


def warm_up(workload: Workload, steps: int = 20) -> None:
    """Run a few plain-torch training and evaluation steps on a throwaway model.

    Every contender calls this before its timer starts, so the one-off costs of the first
    kernels and allocations are excluded in the same way for all of them.
    """
    model = make_model(workload)
    optimizer = torch.optim.AdamW(model.parameters(), lr=workload.lr)
    loss_fn = nn.CrossEntropyLoss()
    inputs = torch.randn(workload.batch_size, *workload.input_shape)
    targets = torch.randint(workload.num_classes, (workload.batch_size,))
    for _ in range(steps):
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for _ in range(steps):
            model(inputs).argmax(dim=1)
