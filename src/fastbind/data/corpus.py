"""The corpus type every reader returns: a vocabulary and three splits of token ids.

Splits are 1-D int64 tensors with ``<eos>`` appended at every line end (the pytorch/examples
``word_language_model`` convention: each line, blank ones included, contributes its
whitespace-split words followed by one ``<eos>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fastbind.data.vocab import Vocabulary
from fastbind.errors import UserError

SPLITS: tuple[str, str, str] = ("train", "valid", "test")


@dataclass
class Corpus:
    """A tokenized corpus, ready for batching.

    Attributes:
        name: e.g. ``"wikitext-2"``, ``"ptb"``, ``"synthetic"``.
        vocab: the :class:`Vocabulary`; ids index it.
        train: ``(N_train,)`` int64 token ids, ``<eos>`` at every line end.
        valid: ``(N_valid,)`` int64 token ids.
        test: ``(N_test,)`` int64 token ids.
        train_counts: ``(len(vocab),)`` int64, occurrences of each id in ``train`` (for
            frequency buckets).
        entropy: for synthetic corpora only, split -> mean ``-log p_gen(w_t | history)`` in
            nats/token, the irreducible cross-entropy; ``None`` for real text.
    """

    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_counts: torch.Tensor
    entropy: dict[str, float] | None = None

    @classmethod
    def from_arrays(
        cls,
        name: str,
        vocab: Vocabulary,
        arrays: Mapping[str, np.ndarray],
        entropy: dict[str, float] | None = None,
    ) -> Corpus:
        """Wrap integer id arrays (any int dtype, shape ``(N,)``) as int64 tensors."""
        splits = {}
        for s in SPLITS:
            a = np.asarray(arrays[s]).reshape(-1)
            if a.dtype != np.int64 or not a.flags.writeable:  # e.g. an int32 memory-mapped cache file
                a = a.astype(np.int64)
            splits[s] = torch.from_numpy(a)
        counts = torch.bincount(splits["train"], minlength=len(vocab))
        return cls(name, vocab, splits["train"], splits["valid"], splits["test"], counts, entropy)

    def split(self, name: str) -> torch.Tensor:
        """The ``(N,)`` id tensor of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
        return getattr(self, name)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s)):,}" for s in SPLITS)
        ent = "" if self.entropy is None else ", entropy=" + str({k: round(v, 4) for k, v in self.entropy.items()})
        return f"Corpus(name={self.name!r}, vocab={len(self.vocab):,}, {sizes}{ent})"
