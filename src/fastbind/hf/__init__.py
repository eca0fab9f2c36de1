"""Hugging Face ``transformers`` models with fastbind's mechanisms (``pip install fastbind[hf]``).

Not imported by ``import fastbind``; the Hebbian output layer and its capture need only torch
(:mod:`fastbind.hf.head`), the ``Trainer`` callback and the evaluation of a model folder need
``transformers`` and import it when first used.

- :func:`hebbian_head` replaces a causal LM's output layer, in place, by a
  :class:`~fastbind.layers.HebbianSoftmax` with the same weights; :func:`to_linear` puts the
  model's own linear layer back; :func:`save_pretrained` saves the model as its own
  architecture plus the counts.
- :class:`HebbianMemorizer` (plain training loops) and :class:`HebbianCallback`
  (``transformers.Trainer``) memorize once per optimizer step.
- :func:`evaluate_model` (``fastbind lm-eval model=PATH text=FILE out=DIR``): the windowed
  evaluation of a local model folder with the evaluation-time memories.

See docs/huggingface.md.
"""

from __future__ import annotations

from typing import Any

from fastbind.hf.head import (
    COUNTS_FILE, HebbianMemorizer, hebbian_head, load_counts, output_layer, save_pretrained, to_linear, token_counts,
)

__all__ = ["COUNTS_FILE", "HFCausalLM", "HebbianCallback", "HebbianMemorizer", "evaluate_model", "hebbian_head",
           "load_counts", "output_layer", "save_pretrained", "to_linear", "token_counts"]

_LAZY = {"HebbianCallback": "fastbind.hf.callback", "HFCausalLM": "fastbind.hf.evaluate",
         "evaluate_model": "fastbind.hf.evaluate"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        from fastbind.hf.evaluate import require_transformers  # noqa: PLC0415

        require_transformers()
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastbind.hf' has no attribute {name!r}")
