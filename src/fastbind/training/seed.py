"""Seeding and determinism switches for reproducible runs.

``seed_everything(seed)`` seeds every generator a recipe may draw from; call it once at
the start, before building the model, so that initialisation is reproducible. All ranks of
a distributed run use the same seed so that their initial weights agree (DDP broadcasts
rank 0's weights anyway); data order comes from the rank's shard, not from the RNG.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["deterministic", "seed_everything"]


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


def deterministic(enabled: bool = True, *, warn_only: bool = False) -> None:
    """Switch torch's deterministic algorithms (and cuDNN's) on or off.

    Deterministic kernels can be slower, and some operations have none: with
    ``warn_only=False`` those raise a ``RuntimeError`` when called, with ``warn_only=True``
    they warn. cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts; it is set
    here when missing, which only helps if no CUDA work has happened yet.

    Args:
        enabled: True for reproducible kernels, False to restore torch's defaults.
        warn_only: Warn instead of raising on operations without a deterministic kernel.
    """
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
