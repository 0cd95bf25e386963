"""Seeding, and capturing and restoring every RNG state (what checkpoints store for an exact resume)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fitorch import seed_everything
from fitorch.seed import rng_states, set_rng_states


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first


def test_states_restored_give_the_same_draws_again():
    seed_everything(3)
    draws()
    saved = rng_states()
    expected = draws()
    draws()
    set_rng_states(saved)
    assert draws() == expected


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_seed_is_refused(seed, error):
    with pytest.raises(error, match="seed must be an int >= 0"):
        seed_everything(seed)
