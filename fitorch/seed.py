"""Seeding every random number generator a training run touches, and reading their states back."""

from __future__ import annotations

import os
import random

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
