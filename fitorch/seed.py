"""Seeding every random number generator a training run touches, and capturing and restoring their states.

Checkpoints store `gather_rng_states()` and a resume applies `set_rng_states()`, so that a resumed run
draws exactly the random numbers (dropout masks, augmentations) the uninterrupted run drew.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fitorch.checks import check_int


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with `seed`.

    Args:
        seed: any non-negative int.
        deterministic: also ask torch for deterministic algorithms (slower on GPU; some
            operations then raise if they have no deterministic implementation).

    Raises:
        TypeError: `seed` is not an int.
        ValueError: `seed` is negative.

    Example:
        >>> seed_everything(0)
        >>> a = torch.rand(2); seed_everything(0); torch.equal(a, torch.rand(2))
        True
    """
    check_int(seed, "seed", minimum=0, owner="seed_everything")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matrix products on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and every CUDA device) RNG states.

    Tuples and tensors as the libraries return them; `fitorch.storage.encode` stores them without pickle.
    """
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), position, has_gauss, gauss),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def gather_rng_states(accelerator: Any) -> list[dict[str, Any]]:
    """Every process's `rng_states()`, in process order (each process draws its own dropout masks).

    A collective call under several processes: every process must make it.
    """
    states = rng_states()
    if accelerator is None or accelerator.num_processes == 1:
        return [states]
    from accelerate.utils import gather_object

    # In-memory exchange between this run's own processes; nothing from disk is unpickled.
    return gather_object([states])


def set_rng_states(state: Mapping[str, Any]) -> None:
    """Restore what `rng_states()` returned (CUDA states only for the devices this machine has)."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state["torch_cuda"]:
        for device, cuda_state in enumerate(state["torch_cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
