from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fastbind.training.seed import seed_everything


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(2).tolist(), torch.nn.Linear(3, 2).weight.tolist()


def test_seed_everything_reproduces() -> None:
    seed_everything(123)
    a = _draws()
    seed_everything(123)
    b = _draws()
    seed_everything(124)
    c = _draws()
    assert a == b
    assert all(x != y for x, y in zip(a, c, strict=True))  # every generator depends on the seed


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True])
def test_seed_validation(bad: object) -> None:
    with pytest.raises(ValueError):
        seed_everything(bad)  # type: ignore[arg-type]
