"""Grid search of the evaluation-time memories' settings over one stream, and the best applied.

The model runs over the split once (:func:`~fastbind.evaluation.collect_stream`); its
output-layer inputs, targets and log-probabilities are kept, so each grid point costs only
memory work: one cache pass per (size, θ), one MbPA pass per (size, K, steps), and the mixing
weights λ are searched on the stored log-probabilities for free. Defaults are the paper's grids
(Rae et al. 2018, appendix A.1): θ ∈ {0.1, 0.2, 0.3}, λ_cache ∈ {0.05 … 0.35}, size ∈ {1000,
5000, 8000, 9000, 10000}, λ_mbpa ∈ {0.02 … 0.10}, K ∈ {512, 1024}, steps ∈ {1, 2}, lr 0.3,
l2 0.5, the MbPA memory the size of the cache.

Every grid row is a variant's settings in the layout of evaluation records
(:func:`~fastbind.evaluation.variant_settings`) with its perplexity beside them::

    {"cache": {"size": 5000, "theta": 0.2, "lambda": 0.1}, "ppl": 93.2}
    {"mbpa": {"size": 5000, "k": 1024, "steps": 1, ..., "lambda": 0.04}, "ppl": 97.0}
    {"cache": {...}, "mbpa": {...}, "ppl": 90.1}                    (the mixture)

MbPA costs far more than the cache (one step: a ``V``-sized distribution per neighbour; two
steps: ``O(K·V·d)`` per target), so ``mbpa_stride`` scores MbPA on a systematic sample of the
targets while the memory still reads every step; MbPA and the mixture are then chosen on that
sample, the cache on every target.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from fastbind.errors import BadSetting
from fastbind.training.distributed import check_device
from fastbind.evaluation import (
    CacheSettings, MbPASettings, cache_log_probs, mbpa_log_probs, mix_variant, variant_name,
    variant_settings, with_sample_variants,
)

__all__ = ["SweepConfig", "apply_best", "grid_search", "row_settings", "sweep_markdown"]


@dataclass
class SweepConfig:
    """Settings of ``fastbind lm-sweep`` (the run folder is the positional argument)."""

    split: str = "valid"
    max_tokens: int = 0  # sweep on the first N tokens of the split (0 = all)
    checkpoint: str = "best"
    bptt: int = 100  # recurrent models: chunk length (the state is carried)
    window: int = 0  # arch=transformer: tokens per forward; 0 = the run's training context (bptt)
    stride: int = 0  # arch=transformer: new targets per window; 0 = window/2
    device: str = "cpu"
    thetas: tuple[float, ...] = (0.1, 0.2, 0.3)
    cache_lambdas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
    sizes: tuple[int, ...] = (1000, 5000, 8000, 9000, 10000)
    mbpa: bool = True  # also sweep MbPA and the mixture (each MbPA pass is O(K·V) per token)
    mbpa_sizes: tuple[int, ...] | None = None  # MbPA memory sizes, each one of `sizes` (None: all of them)
    mbpa_lambdas: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08, 0.10)
    ks: tuple[int, ...] = (512, 1024)
    steps: tuple[int, ...] = (1, 2)
    lr: float = 0.3
    l2: float = 0.5
    eps: float = 1e-3
    # Score MbPA on every n-th target (the memory still sees every step); MbPA and mixture
    # settings are then chosen on that sample, the cache settings on every target.
    mbpa_stride: int = 1
    memory_chunk: int = 256
    apply_test: bool = True  # evaluate the best settings on the test split
    tag: str = ""  # suffix of the output files (sweep-valid-TAG.json, eval-test-TAG.json) to keep several sweeps
    test_max_tokens: int = 0
    test_mbpa_stride: int = 1  # the same sampling of MbPA on the test split
    progress: bool = True

    def __post_init__(self) -> None:  # bad settings fail before the run is loaded
        check_device(self.device)
        if self.split not in ("valid", "test", "train"):
            raise BadSetting("split", f"must be valid, test or train, got {self.split!r}")
        if self.checkpoint not in ("best", "last"):
            raise BadSetting("checkpoint", f"must be best or last, got {self.checkpoint!r}")
        grids = [("thetas", self.thetas), ("cache_lambdas", self.cache_lambdas), ("sizes", self.sizes)]
        if self.mbpa:
            grids += [("mbpa_lambdas", self.mbpa_lambdas), ("ks", self.ks), ("steps", self.steps)]
            if self.mbpa_sizes is not None:
                grids.append(("mbpa_sizes", self.mbpa_sizes))
        for name, values in grids:
            if not values:
                raise BadSetting(name, "needs at least one value" + (" (or mbpa=false)" if "mbpa" in name
                                                                       or name in ("ks", "steps") else ""))
        for name in ("cache_lambdas", "mbpa_lambdas"):
            bad = [x for x in getattr(self, name) if not 0 <= x < 1]
            if bad:
                raise BadSetting(name, f"each must be in [0, 1) (a memory's weight in the mixture), got {bad[0]}")
        if any(not t > 0 for t in self.thetas):
            raise BadSetting("thetas", f"each must be > 0, got {list(self.thetas)}")
        for name in ("sizes", "ks", "steps", "mbpa_sizes"):
            values = getattr(self, name) or ()
            if any(v < 1 for v in values):
                raise BadSetting(name, f"each must be >= 1, got {list(values)}")
        if self.mbpa_sizes and not set(self.mbpa_sizes) <= set(self.sizes):
            raise BadSetting("mbpa_sizes", f"each must be one of sizes {list(self.sizes)} (the mixture pairs "
                                           f"a cache and an MbPA memory of one size), got {list(self.mbpa_sizes)}")
        MbPASettings(lr=self.lr, l2=self.l2, eps=self.eps)  # MbPA's own bounds on lr, l2 and eps
        for name in ("bptt", "memory_chunk", "mbpa_stride", "test_mbpa_stride"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_tokens", "test_max_tokens"):
            if getattr(self, name) < 0:
                raise BadSetting(name, f"must be >= 0 (0 = all), got {getattr(self, name)}")
        for name in ("window", "stride"):
            if getattr(self, name) < 0:
                raise BadSetting(name, f"must be >= 1, or 0 for the default, got {getattr(self, name)}")
        if self.tag and not all(c.isalnum() or c in "-_." for c in self.tag):
            raise BadSetting("tag", f"may hold only letters, digits, '-', '_' and '.', got {self.tag!r}")

    def mbpa_settings(self, size: int, k: int, steps: int, lam: float = 0.0, *, stride: int | None = None
                      ) -> MbPASettings:
        """One MbPA grid point (``stride``: ``mbpa_stride`` unless given)."""
        return MbPASettings(lam=lam, size=size, k=k, steps=steps, lr=self.lr, l2=self.l2, eps=self.eps,
                            stride=self.mbpa_stride if stride is None else stride)


def _nll(lp: torch.Tensor) -> float:
    return float(-lp.double().mean())


def _row(ppl_lp: torch.Tensor, cache: CacheSettings | None = None, mbpa: MbPASettings | None = None) -> dict:
    return {**variant_settings(cache, mbpa), "ppl": math.exp(_nll(ppl_lp))}


def grid_search(H: torch.Tensor, Y: torch.Tensor, LP: torch.Tensor, W: torch.Tensor | None, b: torch.Tensor | None,
                cfg: SweepConfig) -> dict[str, Any]:
    """Perplexity of every grid point on one stream (``H, Y, LP`` of
    :func:`~fastbind.evaluation.collect_stream`; ``W, b`` the output layer, for MbPA).

    Returns:
        ``{"tokens", "model_ppl", "mbpa_stride", "mbpa_tokens", "model_ppl_mbpa_tokens",
        "best_cache", "best_mbpa", "best_mixture", "grid": {"cache", "mbpa", "mixture"}}``,
        each row and best in the layout of the module docstring (a best is None when its
        grid is empty).
    """
    mbpa_sizes = cfg.mbpa_sizes or cfg.sizes
    n_passes = len(cfg.sizes) * len(cfg.thetas) + (len(mbpa_sizes) * len(cfg.ks) * len(cfg.steps) if cfg.mbpa else 0)
    bar = tqdm(total=n_passes, desc="sweep", disable=not cfg.progress)
    lp_cache: dict[tuple[int, float], torch.Tensor] = {}
    for size, theta in itertools.product(cfg.sizes, cfg.thetas):
        lp_cache[(size, theta)] = cache_log_probs(H, Y, CacheSettings(size, theta), cfg.memory_chunk)
        bar.update(1)
    lp_mbpa: dict[tuple[int, int, int], torch.Tensor] = {}
    if cfg.mbpa:
        for size, k, steps in itertools.product(mbpa_sizes, cfg.ks, cfg.steps):
            s = cfg.mbpa_settings(size, k, steps)
            lp_mbpa[(size, k, steps)] = mbpa_log_probs(H, Y, W, b, s, size, cfg.memory_chunk)[::cfg.mbpa_stride]
            bar.update(1)
    bar.close()

    LP_s = LP[::cfg.mbpa_stride]  # the MbPA-scored targets
    cache_rows = [_row(mix_variant(LP, cache=(lam, lpc)), CacheSettings(size, theta, lam))
                  for (size, theta), lpc in lp_cache.items() for lam in cfg.cache_lambdas]
    mbpa_rows, mix_rows = [], []
    for (size, k, steps), lpm in lp_mbpa.items():
        for lam_m in cfg.mbpa_lambdas:
            mbpa = cfg.mbpa_settings(size, k, steps, lam_m)
            mbpa_rows.append(_row(mix_variant(LP_s, mbpa=(lam_m, lpm)), mbpa=mbpa))
            for theta, lam_c in itertools.product(cfg.thetas, cfg.cache_lambdas):
                if lam_c + lam_m >= 1:
                    continue
                lp = mix_variant(LP_s, cache=(lam_c, lp_cache[(size, theta)][::cfg.mbpa_stride]), mbpa=(lam_m, lpm))
                mix_rows.append(_row(lp, CacheSettings(size, theta, lam_c), mbpa))

    def best(rows: list[dict]) -> dict | None:
        return min(rows, key=lambda r: r["ppl"]) if rows else None

    return {
        "tokens": int(Y.numel()), "model_ppl": math.exp(_nll(LP)),
        "mbpa_stride": cfg.mbpa_stride, "mbpa_tokens": int(LP_s.numel()) if cfg.mbpa else 0,
        "model_ppl_mbpa_tokens": math.exp(_nll(LP_s)) if cfg.mbpa else None,
        "best_cache": best(cache_rows), "best_mbpa": best(mbpa_rows), "best_mixture": best(mix_rows),
        "grid": {"cache": cache_rows, "mbpa": mbpa_rows, "mixture": mix_rows},
    }


def row_settings(row: dict) -> tuple[CacheSettings | None, MbPASettings | None]:
    """The memories' settings of a grid row (or of a variant's ``settings`` in a record)."""
    c, m = row.get("cache"), row.get("mbpa")
    cache = CacheSettings(c["size"], c["theta"], c["lambda"]) if c else None
    mbpa = (MbPASettings(**{k: v for k, v in m.items() if k != "lambda"}, lam=m["lambda"]) if m else None)
    return cache, mbpa


def apply_best(H: torch.Tensor, Y: torch.Tensor, LP: torch.Tensor, W: torch.Tensor | None, b: torch.Tensor | None,
               result: dict, cfg: SweepConfig) -> tuple[dict[str, torch.Tensor], dict[str, dict | None]]:
    """Each variant with its own best settings of :func:`grid_search`'s ``result``, on another
    stream (MbPA scored on every ``test_mbpa_stride``-th target).

    Returns:
        ``(log-probs, settings)`` by variant name, ready for
        :func:`~fastbind.evaluation.bucket_results` and :func:`~fastbind.runs.eval_record`.
    """
    done: dict[tuple, torch.Tensor] = {}  # each distinct memory pass runs once

    def cache_lp(s: CacheSettings) -> torch.Tensor:
        if ("cache", s.size, s.theta) not in done:
            done[("cache", s.size, s.theta)] = cache_log_probs(H, Y, s, cfg.memory_chunk, cfg.progress)
        return done[("cache", s.size, s.theta)]

    def mbpa_lp(s: MbPASettings) -> torch.Tensor:
        if ("mbpa", s.size, s.k, s.steps) not in done:
            done[("mbpa", s.size, s.k, s.steps)] = mbpa_log_probs(H, Y, W, b, s, s.size, cfg.memory_chunk,
                                                                   cfg.progress)
        return done[("mbpa", s.size, s.k, s.steps)]

    lps: dict[str, torch.Tensor] = {"model": LP}
    settings: dict[str, dict | None] = {"model": None}
    lp_sample = None
    for name in ("best_cache", "best_mbpa", "best_mixture"):
        if result[name] is None:
            continue
        cache, mbpa = row_settings(result[name])
        if mbpa is not None:
            mbpa = replace(mbpa, stride=cfg.test_mbpa_stride)
        lp = mix_variant(LP, cache=(cache.lam, cache_lp(cache)) if cache else None,
                         mbpa=(mbpa.lam, mbpa_lp(mbpa)) if mbpa else None)
        variant = variant_name(cache is not None, mbpa is not None)
        lps[variant], settings[variant] = lp, variant_settings(cache, mbpa)
        if name == "best_mbpa":
            lp_sample = mbpa_lp(mbpa)
    return with_sample_variants(lps, lp_sample), settings


def sweep_markdown(r: dict) -> str:
    """The best row of each grid as a small markdown table."""
    lines = [f"Sweep on {r['split']} ({r['tokens']:,} tokens, checkpoint step {r['step']})", ""]
    if r.get("mbpa_stride", 1) > 1 and r["best_mbpa"]:
        lines += [f"MbPA and the mixture scored on every {r['mbpa_stride']}th target ({r['mbpa_tokens']:,} "
                  f"tokens; model ppl on them {r['model_ppl_mbpa_tokens']:.2f}); the rest on all.", ""]
    lines += ["| setting | ppl |", "|---|---|", f"| model | {r['model_ppl']:.2f} |"]
    c = r["best_cache"]["cache"]
    lines.append(f"| +cache (size {c['size']}, θ {c['theta']}, λ {c['lambda']}) | {r['best_cache']['ppl']:.2f} |")
    if r["best_mbpa"]:
        m = r["best_mbpa"]["mbpa"]
        lines.append(f"| +MbPA (size {m['size']}, K {m['k']}, steps {m['steps']}, λ {m['lambda']}) "
                     f"| {r['best_mbpa']['ppl']:.2f} |")
    if r["best_mixture"]:
        c, m = r["best_mixture"]["cache"], r["best_mixture"]["mbpa"]
        lines.append(f"| +cache+MbPA (size {c['size']}, θ {c['theta']}, λc {c['lambda']}, K {m['k']}, "
                     f"steps {m['steps']}, λm {m['lambda']}) | {r['best_mixture']['ppl']:.2f} |")
    return "\n".join(lines) + "\n"
