"""Fixtures of the Hugging Face tests (the models themselves are in hf_models.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["gpt2", "llama"])
def family(request) -> str:
    """Each test runs on a GPT-2 and a Llama model."""
    return request.param
