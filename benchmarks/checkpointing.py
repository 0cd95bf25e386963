"""The "checkpoint" workload: save and load a ResNet-18-sized training state.

The state is torchvision's ResNet-18 (11.7 M parameters) with an AdamW optimizer that has taken
one real step, so its moments are full-size tensors: about 140 MB in all. fitorch's contender
uses `fitorch.save_checkpoint(learner, path)` / `fitorch.load_checkpoint(learner, path)`; the
reference is `torch.save` / `torch.load` of the model and optimizer state dicts followed by
`load_state_dict`, which is what a hand-written loop does. `torch_fsync` is the reference made
as durable as fitorch's atomic writes (written beside, fsynced, renamed), for information.

Each process first saves and loads once untimed (the same warm-up for every contender), flushes
the page cache's dirty pages (`os.sync`, untimed), then times one save and one load. Loading reads
what was just written (from the page cache, for every contender alike) and restores it into the
live model and optimizer.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CONTENDERS = ("torch", "fitorch", "torch_fsync")
LABELS = {
    "torch": "torch.save / torch.load + load_state_dict (reference)",
    "fitorch": "fitorch.save_checkpoint / load_checkpoint",
    "torch_fsync": "torch.save + fsync + rename (as durable as fitorch), for information",
}


def fitorch_checkpoint_available() -> bool:
    """Whether this fitorch has `save_checkpoint` and `load_checkpoint` yet."""
    import fitorch

    return hasattr(fitorch, "save_checkpoint") and hasattr(fitorch, "load_checkpoint")


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 64, generator=generator), torch.randint(1000, (2,), generator=generator)


def _resnet18() -> torch.nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18()


def _torch_state() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _resnet18()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, targets = _batch()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def _fitorch_learner() -> Any:
    from fitorch import Learner

    learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-3, verbose=0, cpu=True)
    learner.fit(_resnet18(), _batch(), epochs=1, batch_size=2)  # one optimizer step
    return learner


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def run(contender: str) -> dict[str, Any]:
    """Warm up, then time one save and one load of the state; returns seconds and the size on disk."""
    with tempfile.TemporaryDirectory(prefix="fitorch-bench-") as folder:
        if contender == "fitorch":
            import fitorch

            learner = _fitorch_learner()
            save = lambda path: fitorch.save_checkpoint(learner, path)
            load = lambda path: fitorch.load_checkpoint(learner, path)
        else:
            model, optimizer = _torch_state()
            save = lambda path: _torch_save(model, optimizer, path, durable=contender == "torch_fsync")
            load = lambda path: _torch_load(model, optimizer, path)
        save(Path(folder, "warm-up"))
        load(Path(folder, "warm-up"))
        path = Path(folder, "timed")
        os.sync()  # start from clean page cache, so no earlier write is still being flushed
        started = time.perf_counter()
        save(path)
        save_s = time.perf_counter() - started
        os.sync()
        started = time.perf_counter()
        load(path)
        load_s = time.perf_counter() - started
        return {"save_s": save_s, "load_s": load_s, "size_mb": _size_mb(path)}


def _torch_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path, durable: bool) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    if not durable:
        torch.save(state, path)
        return
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _torch_load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
