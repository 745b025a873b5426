"""One place that seeds every random number generator a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's, NumPy's global and torch's generators; return a fresh numpy Generator.

    Code in metarl draws from the returned (or another injected) Generator, never from
    NumPy's global state; the global seeds are set for third-party code that uses it.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (legacy global state, for third-party code)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
