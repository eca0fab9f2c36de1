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

With ``knnlm=true`` the kNN-LM's training-set datastore is searched once, at the largest ``k``
of the grid, on every ``knnlm_stride``-th target; every ``(k, τ, λ)`` is then scored on the
stored ``(distance, next word)`` lists. With ``dyneval=true`` dynamic evaluation's ``(lr,
decay)`` grid is run on the split's first ``dyneval_max_tokens`` tokens (one adapted pass per
point). With four memories a joint grid would multiply, so each is tuned alone and then only
the λs of every combination of two or more (:func:`mixture_rows`, ``mix_lambdas``, the other
settings fixed at each memory's own best), the combinations with dynamic evaluation on the
adapted model's stream::

    "best_mixtures": {"+cache+knnlm": {"cache": {...}, "knnlm": {...}, "ppl": 88.0}, ...,
                      "+dyneval+cache": {"dyneval": {...}, "cache": {...}, "ppl": 80.1}, ...}
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from fastbind.errors import BadSetting
from fastbind.training.distributed import check_device
from fastbind.evaluation import (
    MEMORIES, CacheSettings, KNNLMSettings, MbPASettings, cache_log_probs, check_sample_strides, knnlm_log_probs,
    knnlm_neighbours, mbpa_log_probs, mix_variant, variant_name, variant_settings, with_sample_variants,
)
from fastbind.evaluation.dyneval import DynEvalSettings

__all__ = ["SweepConfig", "apply_best", "best_parts", "best_row", "grid_search", "memory_log_probs", "mixture_rows",
           "row_parts", "row_settings", "sweep_markdown"]


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
    # kNN-LM: a datastore of the training split, searched once at the largest k
    knnlm: bool = False
    knnlm_ks: tuple[int, ...] = (16, 64, 256, 1024)
    knnlm_temperatures: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)
    knnlm_lambdas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
    knnlm_stride: int = 1  # score on every n-th target (exact search of a large datastore is costly)
    test_knnlm_stride: int = 1
    knnlm_backend: Literal["exact", "faiss"] = "exact"
    knnlm_nlist: int = 1024
    knnlm_nprobe: int = 32
    knnlm_dtype: Literal["float16", "float32"] = "float16"
    # dynamic evaluation (Krause et al. 2018), tuned on a prefix of the split
    dyneval: bool = False
    dyneval_lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4)
    dyneval_decays: tuple[float, ...] = (0.0, 0.002, 0.01)
    dyneval_eps: float = 2e-5
    dyneval_segment: int = 0  # recurrent: tokens per step (0: 5); transformer: the reading's stride (0: it)
    dyneval_stats_tokens: int = 0  # training tokens for the gradient statistics (0: all)
    dyneval_stats_batch: int = 100
    dyneval_max_tokens: int = 50000  # tune on the split's first N tokens (0: all)
    mix_lambdas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)  # each memory's λ in the combinations' grid
    progress: bool = True

    def __post_init__(self) -> None:  # bad settings fail before the run is loaded
        check_device(self.device)
        if self.split not in ("valid", "test", "train"):
            raise BadSetting("split", f"must be valid, test or train, got {self.split!r}")
        if self.split == "test" and self.apply_test:
            raise BadSetting("split", "split=test would tune on the split it then reports: sweep on valid, or set "
                                      "apply_test=false")
        if self.split == "train" and self.knnlm:
            raise BadSetting("split", "knnlm on the train split finds every query in its own datastore: sweep on valid")
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
        if self.knnlm:
            for name in ("knnlm_ks", "knnlm_temperatures", "knnlm_lambdas"):
                if not getattr(self, name):
                    raise BadSetting(name, "needs at least one value (or knnlm=false)")
            self.knnlm_settings(max(self.knnlm_ks), self.knnlm_temperatures[0])  # each setting's own bounds
            for name in ("knnlm_ks", "knnlm_temperatures"):
                if any(not v > 0 for v in getattr(self, name)):
                    raise BadSetting(name, f"each must be > 0, got {list(getattr(self, name))}")
            if any(not 0 < x < 1 for x in self.knnlm_lambdas):  # λ 0 would score every target, not the sample
                raise BadSetting("knnlm_lambdas", f"each must be in (0, 1), got {list(self.knnlm_lambdas)}")
            if self.test_knnlm_stride < 1:
                raise BadSetting("test_knnlm_stride", f"must be >= 1, got {self.test_knnlm_stride}")
            if self.mbpa:  # the combinations score the targets both memories score
                for a, b in (("mbpa_stride", "knnlm_stride"), ("test_mbpa_stride", "test_knnlm_stride")):
                    check_sample_strides(getattr(self, a), getattr(self, b), a, b)
        if self.dyneval:
            for name in ("dyneval_lrs", "dyneval_decays"):
                if not getattr(self, name):
                    raise BadSetting(name, "needs at least one value (or dyneval=false)")
            if any(not v > 0 for v in self.dyneval_lrs):
                raise BadSetting("dyneval_lrs", f"each must be > 0, got {list(self.dyneval_lrs)}")
            if any(not v >= 0 for v in self.dyneval_decays):
                raise BadSetting("dyneval_decays", f"each must be >= 0, got {list(self.dyneval_decays)}")
            self.dyneval_settings(self.dyneval_lrs[0], self.dyneval_decays[0])  # eps, segment, stats bounds
            if self.dyneval_max_tokens < 0:
                raise BadSetting("dyneval_max_tokens", f"must be >= 0 (0 = all), got {self.dyneval_max_tokens}")
        if any(not 0 < x < 1 for x in self.mix_lambdas) or not self.mix_lambdas:
            raise BadSetting("mix_lambdas", f"each must be in (0, 1), at least one, got {list(self.mix_lambdas)}")
        if self.tag and not all(c.isalnum() or c in "-_." for c in self.tag):
            raise BadSetting("tag", f"may hold only letters, digits, '-', '_' and '.', got {self.tag!r}")

    def knnlm_settings(self, k: int, temperature: float, lam: float = 0.0, *, stride: int | None = None
                       ) -> KNNLMSettings:
        """One kNN-LM grid point (``stride``: ``knnlm_stride`` unless given)."""
        return KNNLMSettings(lam=lam, k=k, temperature=temperature,
                             stride=self.knnlm_stride if stride is None else stride, backend=self.knnlm_backend,
                             nlist=self.knnlm_nlist, nprobe=self.knnlm_nprobe, dtype=self.knnlm_dtype)

    def dyneval_settings(self, lr: float, decay: float) -> DynEvalSettings:
        """One dynamic-evaluation grid point."""
        return DynEvalSettings(lr=lr, decay=decay, eps=self.dyneval_eps, segment=self.dyneval_segment,
                               stats_tokens=self.dyneval_stats_tokens, stats_batch=self.dyneval_stats_batch)

    def mbpa_settings(self, size: int, k: int, steps: int, lam: float = 0.0, *, stride: int | None = None
                      ) -> MbPASettings:
        """One MbPA grid point (``stride``: ``mbpa_stride`` unless given)."""
        return MbPASettings(lam=lam, size=size, k=k, steps=steps, lr=self.lr, l2=self.l2, eps=self.eps,
                            stride=self.mbpa_stride if stride is None else stride)


def _nll(lp: torch.Tensor) -> float:
    return float(-lp.double().mean())


def _row(ppl_lp: torch.Tensor, cache: CacheSettings | None = None, mbpa: MbPASettings | None = None,
         knnlm: KNNLMSettings | None = None, dyneval: DynEvalSettings | None = None) -> dict:
    scored = ppl_lp[~torch.isnan(ppl_lp)]
    return {**(variant_settings(cache, mbpa, knnlm, dyneval) or {}), "ppl": math.exp(_nll(scored)),
            "tokens": int(scored.numel())}


def grid_search(H: torch.Tensor, Y: torch.Tensor, LP: torch.Tensor, W: torch.Tensor | None, b: torch.Tensor | None,
                cfg: SweepConfig, store: Any = None, memo: dict | None = None) -> dict[str, Any]:
    """Perplexity of every grid point on one stream (``H, Y, LP`` of
    :func:`~fastbind.evaluation.collect_stream`; ``W, b`` the output layer, for MbPA).

    Returns:
        ``{"tokens", "model_ppl", "mbpa_stride", "mbpa_tokens", "model_ppl_mbpa_tokens",
        "best_cache", "best_mbpa", "best_mixture", "grid": {"cache", "mbpa", "mixture"}}``,
        each row and best in the layout of the module docstring (a best is None when its
        grid is empty); with ``knnlm``, also ``"best_knnlm"``, ``"knnlm_stride"``,
        ``"knnlm_tokens"``, ``"model_ppl_knnlm_tokens"`` and the grid's ``"knnlm"`` rows.
        ``memo``, when given, receives every memory pass by the keys of
        :func:`memory_log_probs`, so that the combinations reuse them.
    """
    mbpa_sizes = cfg.mbpa_sizes or cfg.sizes
    n_passes = len(cfg.sizes) * len(cfg.thetas) + (len(mbpa_sizes) * len(cfg.ks) * len(cfg.steps) if cfg.mbpa else 0)
    bar = tqdm(total=n_passes, desc="sweep", disable=not cfg.progress)
    lp_cache: dict[tuple[int, float], torch.Tensor] = {}
    for size, theta in itertools.product(cfg.sizes, cfg.thetas):
        lp_cache[(size, theta)] = cache_log_probs(H, Y, CacheSettings(size, theta), cfg.memory_chunk)
        if memo is not None:  # for memory_log_probs over the same stream
            memo[("cache", size, theta)] = lp_cache[(size, theta)]
        bar.update(1)
    lp_mbpa: dict[tuple[int, int, int], torch.Tensor] = {}
    if cfg.mbpa:
        for size, k, steps in itertools.product(mbpa_sizes, cfg.ks, cfg.steps):
            s = cfg.mbpa_settings(size, k, steps)
            full = mbpa_log_probs(H, Y, W, b, s, size, cfg.memory_chunk)
            lp_mbpa[(size, k, steps)] = full[::cfg.mbpa_stride]
            if memo is not None:
                memo[("mbpa", size, k, steps, cfg.mbpa_stride)] = full
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

    knn_rows: list[dict] = []
    if cfg.knnlm:
        if store is None:
            raise ValueError("knnlm=true needs the run's datastore (store=)")
        pos, dist, values = knnlm_neighbours(H, store, cfg.knnlm_settings(max(cfg.knnlm_ks), 1.0), progress=cfg.progress)
        for k, tau in itertools.product(cfg.knnlm_ks, cfg.knnlm_temperatures):
            lpk = knnlm_log_probs(H, Y, store, cfg.knnlm_settings(k, tau), neighbours=(pos, dist, values))
            if memo is not None:
                memo[("knnlm", k, tau, cfg.knnlm_stride)] = lpk
            for lam in cfg.knnlm_lambdas:
                knn_rows.append(_row(mix_variant(LP, knnlm=(lam, lpk)), knnlm=cfg.knnlm_settings(k, tau, lam)))

    result = {
        "tokens": int(Y.numel()), "model_ppl": math.exp(_nll(LP)),
        "mbpa_stride": cfg.mbpa_stride, "mbpa_tokens": int(LP_s.numel()) if cfg.mbpa else 0,
        "model_ppl_mbpa_tokens": math.exp(_nll(LP_s)) if cfg.mbpa else None,
        "best_cache": best_row(cache_rows), "best_mbpa": best_row(mbpa_rows), "best_mixture": best_row(mix_rows),
        "grid": {"cache": cache_rows, "mbpa": mbpa_rows, "mixture": mix_rows},
    }
    if cfg.knnlm:
        result.update({"knnlm_stride": cfg.knnlm_stride, "knnlm_tokens": int(LP[::cfg.knnlm_stride].numel()),
                       "model_ppl_knnlm_tokens": math.exp(_nll(LP[::cfg.knnlm_stride])), "best_knnlm": best_row(knn_rows)})
        result["grid"]["knnlm"] = knn_rows
    return result


def best_row(rows: list[dict]) -> dict | None:
    """The row of lowest perplexity (None for no rows); a diverged row (NaN or inf, e.g. dynamic
    evaluation at too high a learning rate) is never chosen over a finite one."""
    return min(rows, key=lambda r: (not math.isfinite(r["ppl"]), r["ppl"] if math.isfinite(r["ppl"]) else 0.0)
               ) if rows else None


def best_parts(result: dict) -> dict[str, Any]:
    """Each memory's own best settings in a :func:`grid_search` result (λ kept), by memory name."""
    parts: dict[str, Any] = {}
    for name in MEMORIES:
        row = result.get(f"best_{name}")
        if row is not None:
            parts[name] = row_parts(row)[name]
    return parts


def memory_log_probs(H: torch.Tensor, Y: torch.Tensor, parts: dict[str, Any], W: torch.Tensor | None,
                     b: torch.Tensor | None, store: Any, cfg: SweepConfig, memo: dict | None = None
                     ) -> dict[str, torch.Tensor]:
    """``log p_memory(y_t)`` of each memory in ``parts`` (name → settings) over one stream
    (NaN where a sampling memory did not score); ``memo`` keeps passes for reuse."""
    memo = {} if memo is None else memo
    out = {}
    for name, s in parts.items():
        if name == "cache":
            key = ("cache", s.size, s.theta)
            if key not in memo:
                memo[key] = cache_log_probs(H, Y, s, cfg.memory_chunk, cfg.progress)
        elif name == "mbpa":
            key = ("mbpa", s.size, s.k, s.steps, s.stride)
            if key not in memo:
                memo[key] = mbpa_log_probs(H, Y, W, b, s, s.size, cfg.memory_chunk, cfg.progress)
        else:
            key = ("knnlm", s.k, s.temperature, s.stride)
            if key not in memo:
                memo[key] = knnlm_log_probs(H, Y, store, s, progress=cfg.progress)
        out[name] = memo[key]
    return out


def mixture_rows(LP: torch.Tensor, parts: dict[str, Any], lps: dict[str, torch.Tensor], lambdas: tuple[float, ...],
                 dyneval: DynEvalSettings | None = None) -> dict[str, list[dict]]:
    """The λ grid of every combination of memories (of two or more; of one or more over a
    dynamically evaluated stream, ``dyneval`` given): the memories' other settings fixed
    (``parts``, their log-probs ``lps`` over the stream ``LP``), each λ from ``lambdas`` (sums
    below 1); each row scored on the targets every memory of its combination scored.

    Returns:
        variant name → its rows.
    """
    names = [n for n in MEMORIES if n in parts]
    out: dict[str, list[dict]] = {}
    first = 1 if dyneval is not None else 2
    for r in range(first, len(names) + 1):
        for combo in itertools.combinations(names, r):
            rows = []
            for lams in itertools.product(lambdas, repeat=len(combo)):
                if sum(lams) >= 1:
                    continue
                mixed = mix_variant(LP, **{n: (lam, lps[n]) for n, lam in zip(combo, lams)})
                settings = {n: replace(parts[n], lam=lam) for n, lam in zip(combo, lams)}
                rows.append(_row(mixed, **settings, dyneval=dyneval))
            out[variant_name(**{n: True for n in combo}, dyneval=dyneval is not None)] = rows
    return out


def row_parts(row: dict) -> dict[str, Any]:
    """The settings of every part of a grid row (or of a variant's ``settings`` in a record), by
    name (``cache``, ``mbpa``, ``knnlm``, ``dyneval``)."""
    cache, mbpa = row_settings(row)
    out: dict[str, Any] = {"cache": cache, "mbpa": mbpa}
    k = row.get("knnlm")
    if k:
        out["knnlm"] = KNNLMSettings(**{key: v for key, v in k.items() if key != "lambda"}, lam=k["lambda"])
    d = row.get("dyneval")
    if d:
        out["dyneval"] = DynEvalSettings(**d)
    return {name: s for name, s in out.items() if s is not None}


def row_settings(row: dict) -> tuple[CacheSettings | None, MbPASettings | None]:
    """The memories' settings of a grid row (or of a variant's ``settings`` in a record)."""
    c, m = row.get("cache"), row.get("mbpa")
    cache = CacheSettings(c["size"], c["theta"], c["lambda"]) if c else None
    mbpa = (MbPASettings(**{k: v for k, v in m.items() if k != "lambda"}, lam=m["lambda"]) if m else None)
    return cache, mbpa


def apply_best(H: torch.Tensor, Y: torch.Tensor, LP: torch.Tensor, W: torch.Tensor | None, b: torch.Tensor | None,
               result: dict, cfg: SweepConfig, store: Any = None,
               dyneval_stream: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               ) -> tuple[dict[str, torch.Tensor], dict[str, dict | None]]:
    """Each variant with its own best settings of :func:`grid_search`'s ``result`` (and of the
    sweep's ``best_mixtures`` and ``best_dyneval``), on another stream (MbPA and the kNN-LM
    scored on every ``test_mbpa_stride``-th / ``test_knnlm_stride``-th target);
    ``dyneval_stream`` is that stream dynamically evaluated with ``best_dyneval``'s settings.

    Returns:
        ``(log-probs, settings)`` by variant name, ready for
        :func:`~fastbind.evaluation.bucket_results` and :func:`~fastbind.runs.eval_record`.
    """
    memo: dict[tuple, torch.Tensor] = {}  # each distinct memory pass runs once (per stream)
    dyn_memo: dict[tuple, torch.Tensor] = {}
    strides = {"mbpa": cfg.test_mbpa_stride, "knnlm": cfg.test_knnlm_stride}

    def variant(row: dict, dyn: bool) -> None:
        parts = row_parts(row)
        dyneval = parts.pop("dyneval", None)
        parts = {n: replace(s, stride=strides[n]) if n in strides else s for n, s in parts.items()}
        h, y, lp = dyneval_stream if dyn else (H, Y, LP)
        found = memory_log_probs(h, y, parts, W, b, store, cfg, dyn_memo if dyn else memo)
        name = variant_name(**{n: True for n in parts}, dyneval=dyn)
        lps[name] = mix_variant(lp, **{n: (s.lam, found[n]) for n, s in parts.items()})
        settings[name] = variant_settings(**parts, dyneval=dyneval)

    lps: dict[str, torch.Tensor] = {"model": LP}
    settings: dict[str, dict | None] = {"model": None}
    for name in ("best_cache", "best_mbpa", "best_mixture", "best_knnlm"):
        if result.get(name) is not None:
            variant(result[name], False)
    if dyneval_stream is not None and result.get("best_dyneval") is not None:
        lps["+dyneval"] = dyneval_stream[2]
        settings["+dyneval"] = variant_settings(dyneval=row_parts(result["best_dyneval"])["dyneval"])
    for name, row in (result.get("best_mixtures") or {}).items():
        if name not in lps and (dyneval_stream is not None or "dyneval" not in row):
            variant(row, "dyneval" in row)
    sampled = [lp for key, lp in {**memo, **dyn_memo}.items() if key[0] in ("mbpa", "knnlm")]
    return with_sample_variants(lps, *sampled), settings


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
    if r.get("best_knnlm"):
        k = r["best_knnlm"]["knnlm"]
        lines.append(f"| +kNN-LM (k {k['k']}, τ {k['temperature']}, λ {k['lambda']}; every {k['stride']} "
                     f"target(s), model {r['model_ppl_knnlm_tokens']:.2f} there) | {r['best_knnlm']['ppl']:.2f} |")
    if r.get("best_dyneval"):
        d = r["best_dyneval"]["dyneval"]
        lines.append(f"| +dyneval (lr {d['lr']}, decay {d['decay']}, segment {d['segment']}; first "
                     f"{r['dyneval_tokens']:,} tokens, model {r['model_ppl_dyneval_tokens']:.2f} there) "
                     f"| {r['best_dyneval']['ppl']:.2f} |")
    for name, row in (r.get("best_mixtures") or {}).items():
        lams = ", ".join(f"λ{n} {row[n]['lambda']}" for n in MEMORIES if n in row)
        lines.append(f"| {name} ({lams}; {row['tokens']:,} targets) | {row['ppl']:.2f} |")
    return "\n".join(lines) + "\n"
