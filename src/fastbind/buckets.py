"""Perplexity split by training-frequency bucket (Rae et al. 2018, Table 2).

A target token belongs to the bucket of its class's number of occurrences in the training
split; with the default edges (100, 1000, 10000) the buckets are ``>10K``, ``1K-10K``,
``100-1K`` and ``<100`` (a count equal to an edge goes to the upper bucket). Token losses are
summed per bucket with one ``bincount``, so the bucket perplexities recombine exactly to the
overall one: ``log ppl = Σ_b n_b log ppl_b / Σ_b n_b``.

Buckets are how evaluation reads a result, but the corpus statistics (``data/statistics.py``)
count tokens per bucket too; this module depends on torch alone, so it sits at the bottom of
the import order, below both, and neither has to import upward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

DEFAULT_EDGES = (100, 1000, 10000)


def _fmt(x: int) -> str:
    return f"{x // 1000}K" if x >= 1000 and x % 1000 == 0 else str(x)


def bucket_names(edges: tuple[int, ...] = DEFAULT_EDGES) -> list[str]:
    """Names from the most to the least frequent bucket, e.g. ``['>10K', '1K-10K', '100-1K', '<100']``."""
    edges = tuple(sorted(edges))
    names = [f"<{_fmt(edges[0])}"] + [f"{_fmt(a)}-{_fmt(b)}" for a, b in zip(edges, edges[1:])] + [f">{_fmt(edges[-1])}"]
    return names[::-1]


def class_buckets(train_counts: torch.Tensor, edges: tuple[int, ...] = DEFAULT_EDGES) -> torch.Tensor:
    """Bucket index per class ``(V,)``: 0 is the most frequent bucket (the order of :func:`bucket_names`)."""
    if list(edges) != sorted(edges) or len(set(edges)) != len(edges) or not edges:
        raise ValueError(f"bucket edges must be strictly increasing, got {list(edges)}")
    low_to_high = torch.bucketize(train_counts.long(), torch.tensor(edges, dtype=torch.long), right=True)
    return len(edges) - low_to_high


@dataclass
class BucketedNLL:
    """Accumulates token negative log-likelihoods overall and per bucket."""

    class_bucket: torch.Tensor  # (V,)
    names: list[str]
    nll: torch.Tensor = field(init=False)
    tokens: torch.Tensor = field(init=False)

    @classmethod
    def from_counts(cls, train_counts: torch.Tensor, edges: tuple[int, ...] = DEFAULT_EDGES) -> "BucketedNLL":
        return cls(class_buckets(train_counts, edges), bucket_names(edges))

    def __post_init__(self) -> None:
        self.nll = torch.zeros(len(self.names), dtype=torch.float64)
        self.tokens = torch.zeros(len(self.names), dtype=torch.int64)

    def add(self, nll: torch.Tensor, targets: torch.Tensor) -> None:
        """Add token losses ``nll (...)`` (nats) of ``targets (...)``."""
        b = self.class_bucket.to(targets.device)[targets.reshape(-1)]
        k = len(self.names)
        self.nll += torch.bincount(b, weights=nll.reshape(-1).double(), minlength=k).cpu()
        self.tokens += torch.bincount(b, minlength=k).cpu()

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def mean_nll(self) -> float:
        return float(self.nll.sum() / max(1, self.total_tokens))

    def result(self) -> dict:
        """``{"ppl", "nll", "tokens", "buckets": [{"name", "tokens", "ppl"}, ...]}``."""
        buckets = []
        for name, s, n in zip(self.names, self.nll.tolist(), self.tokens.tolist()):
            buckets.append({"name": name, "tokens": n, "ppl": _exp(s / n) if n else None})
        return {"ppl": _exp(self.mean_nll), "nll": self.mean_nll, "tokens": self.total_tokens, "buckets": buckets}


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")
