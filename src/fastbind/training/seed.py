"""Seeding for reproducible runs.

``seed_everything(seed)`` seeds every generator a recipe may draw from; call it once at
the start, before building the model, so that initialisation is reproducible. lm-train seeds
rank ``k`` of a distributed run with ``seed + k`` so that dropout masks differ between ranks;
the initial weights still agree because DDP broadcasts rank 0's, and data order comes from
the rank's rows of the batch, not from the RNG.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator, torch CPU and all CUDA devices.

    Args:
        seed: A non-negative integer below 2**32 (numpy's limit).

    Raises:
        ValueError: ``seed`` is out of range or not an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if CUDA is not yet initialised)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
