"""The training recipe of the weight-averaging resume test, and the process that resumes it.

Imported by tests/callbacks/test_weight_averaging.py (the recipe, so both sides train the same thing)
and run as a script:

    python averaging_job.py EPOCHS CHECKPOINT OUT [CHECKPOINT OUT ...]   # continue runs to EPOCHS
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fitorch import Learner
from fitorch.callbacks import WeightAveraging

SAMPLES, FEATURES, CLASSES, BATCH_SIZE = 70, 8, 3, 8  # 9 batches an epoch, the last one short


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    return x, (x @ torch.randn(FEATURES, CLASSES, generator=generator)).argmax(dim=1)


def make_model(seed: int = 0) -> nn.Module:
    """Batch norm (buffers the average keeps) and dropout (random draws the resume must restore)."""
    torch.manual_seed(seed)
    layers = [nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, CLASSES)]
    return nn.Sequential(*layers)


def make_averaging() -> WeightAveraging:
    return WeightAveraging("ema", decay=0.8, every=2, start_step=3)


def fit(model: nn.Module, epochs: int, callbacks: list, **options) -> Learner:
    """AdamW, shuffling, accumulation windows of 2, validation on the averaged weights."""
    x, y = make_data()
    learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-2, seed=7, verbose=0, grad_accum_steps=2)
    learner.fit(
        model, (x, y), epochs, batch_size=BATCH_SIZE, validation_data=(x[:24], y[:24]), callbacks=callbacks, **options
    )
    return learner


def final_state(learner: Learner, averaging: WeightAveraging) -> dict[str, torch.Tensor]:
    """The model, the averaged model and the optimizer state, flattened, for a bit-exact comparison."""
    tensors = {f"model.{key}": value.detach().clone() for key, value in learner.model.state_dict().items()}
    tensors.update({f"averaged.{key}": value.clone() for key, value in averaging.averaged_model.state_dict().items()})
    for index, state in learner.optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value.clone() for key, value in state.items()})
    return tensors


def resume(epochs: int, checkpoint: str, out: str) -> None:
    """Continue the run saved in `checkpoint` to `epochs`; a model initialised differently proves the load."""
    averaging = make_averaging()
    learner = fit(make_model(seed=123), epochs, [averaging], resume=checkpoint)
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(final_state(learner, averaging), str(Path(out) / "final.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    epochs, pairs = int(sys.argv[1]), sys.argv[2:]
    for checkpoint, out in zip(pairs[::2], pairs[1::2]):
        resume(epochs, checkpoint, out)
