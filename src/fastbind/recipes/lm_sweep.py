"""``fastbind lm-sweep RUN_DIR``: grid search of cache / MbPA settings on the validation split.

The model runs over the split once; its output-layer inputs, targets and log-probabilities
are kept, so each grid point costs only memory work: one cache pass per (size, θ), one MbPA
pass per (size, K, steps), and the mixing weights λ are searched on the stored
log-probabilities for free. Defaults are the paper's grids (Rae et al. 2018, appendix A.1):
θ ∈ {0.1, 0.2, 0.3}, λ_cache ∈ {0.05 … 0.35}, size ∈ {1000, 5000, 8000, 9000, 10000},
λ_mbpa ∈ {0.02 … 0.10}, K ∈ {512, 1024}, steps ∈ {1, 2}, lr 0.3, l2 0.5, the MbPA memory the
size of the cache. Writes ``RUN_DIR/sweep-<split>.json`` and ``sweep-<split>.md`` and, with
``apply_test=true``, evaluates the best settings on the test split (``eval-test.json``)::

    fastbind lm-sweep runs/ptb-hebb
    fastbind lm-sweep runs/ptb-hebb mbpa=false                  # cache only
    fastbind lm-sweep runs/ptb-hebb max_tokens=20000 ks=[1024] steps=[1]
    fastbind lm-sweep runs/wt2-hebb mbpa_stride=10              # MbPA on every 10th target

MbPA costs far more than the cache (one step: a ``V``-sized distribution per neighbour;
two steps: ``O(K·V·d)`` per target), so on a CPU ``mbpa_stride`` / ``test_mbpa_stride``
estimate the MbPA variants from a systematic sample of the targets while the memory still
reads every step; the model and cache are then also reported on that sample.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastbind.errors import UserError
from fastbind.evaluation import (
    CacheSettings, MbPASettings, bucket_results, cache_defined, cache_log_probs, collect_stream, format_table,
    mbpa_log_probs, with_sample_variants,
)
from fastbind.lm import LMRun, load_lm_run
from fastbind.memory import mix_log_probs
from fastbind.runs import RunFolder, eval_record
from fastbind.training.config import parse_cli


@dataclass
class SweepConfig:
    """Settings of ``fastbind lm-sweep`` (the run folder is the positional argument)."""

    split: str = "valid"
    max_tokens: int = 0  # sweep on the first N tokens of the split (0 = all)
    checkpoint: str = "best"
    bptt: int = 100
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
        if self.split not in ("valid", "test", "train"):
            raise UserError(f"split must be valid, test or train, got {self.split!r}")
        if not self.thetas or not self.cache_lambdas or not self.sizes:
            raise UserError("thetas, cache_lambdas and sizes must each have at least one value")
        if self.mbpa and (not self.mbpa_lambdas or not self.ks or not self.steps or self.mbpa_sizes == ()):
            raise UserError("mbpa_lambdas, ks, steps and mbpa_sizes must each have at least one value (or mbpa=false)")
        if self.mbpa_sizes and not set(self.mbpa_sizes) <= set(self.sizes):
            raise UserError(f"every mbpa_sizes value must be one of sizes {list(self.sizes)} (the mixture pairs "
                            f"a cache and an MbPA memory of one size), got {list(self.mbpa_sizes)}")
        if self.tag and not all(c.isalnum() or c in "-_." for c in self.tag):
            raise UserError(f"tag may hold only letters, digits, '-', '_' and '.', got {self.tag!r}")
        for name in ("mbpa_stride", "test_mbpa_stride"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")


def _nll(lp: torch.Tensor) -> float:
    return float(-lp.double().mean())


def sweep(run_dir: Path, cfg: SweepConfig) -> dict:
    """Run the grid on ``cfg.split``; writes ``sweep-<split>[-<tag>].json``/``.md`` (and, with
    ``apply_test``, the test evaluation) and returns the sweep result."""
    run = RunFolder(run_dir)
    lm = load_lm_run(run, cfg.checkpoint, cfg.device)
    _, model, corpus, ck = lm
    if cfg.mbpa and model.is_adaptive:
        raise UserError("MbPA adapts a full softmax output layer; this run has softmax=adaptive: sweep the cache "
                        "alone with mbpa=false")
    H, Y, LP = collect_stream(model, getattr(corpus, cfg.split), bptt=cfg.bptt, device=torch.device(cfg.device),
                              max_tokens=cfg.max_tokens, progress=cfg.progress)
    W, b = model.output_layer() if cfg.mbpa else (None, None)
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
            s = MbPASettings(lam=1.0, size=size, k=k, steps=steps, lr=cfg.lr, l2=cfg.l2, eps=cfg.eps,
                             stride=cfg.mbpa_stride)
            lp_mbpa[(size, k, steps)] = mbpa_log_probs(H, Y, W, b, s, size, cfg.memory_chunk)[::cfg.mbpa_stride]
            bar.update(1)
    bar.close()

    model_nll = _nll(LP)
    LP_s = LP[::cfg.mbpa_stride]  # the MbPA-scored targets
    defined = cache_defined(LP.numel(), LP.device)  # the cache is empty at the first target
    defined_s = defined[::cfg.mbpa_stride]
    cache_rows = []
    for (size, theta), lpc in lp_cache.items():
        for lam in cfg.cache_lambdas:
            cache_rows.append({"size": size, "theta": theta, "lambda": lam,
                               "ppl": math.exp(_nll(mix_log_probs(LP, (lam, lpc, defined))))})
    best_cache = min(cache_rows, key=lambda r: r["ppl"])
    mbpa_rows, mix_rows = [], []
    for (size, k, steps), lpm in lp_mbpa.items():
        for lam_m in cfg.mbpa_lambdas:
            mbpa_rows.append({"size": size, "k": k, "steps": steps, "lambda": lam_m,
                              "ppl": math.exp(_nll(mix_log_probs(LP_s, (lam_m, lpm))))})
            for theta, lam_c in itertools.product(cfg.thetas, cfg.cache_lambdas):
                if lam_c + lam_m >= 1:
                    continue
                lp = mix_log_probs(LP_s, (lam_c, lp_cache[(size, theta)][::cfg.mbpa_stride], defined_s), (lam_m, lpm))
                mix_rows.append({"size": size, "theta": theta, "cache_lambda": lam_c, "k": k, "steps": steps,
                                 "mbpa_lambda": lam_m, "ppl": math.exp(_nll(lp))})
    result = {
        "split": cfg.split, "tokens": int(Y.numel()), "step": int(ck["step"]), "model_ppl": math.exp(model_nll),
        "mbpa_stride": cfg.mbpa_stride, "mbpa_tokens": int(LP_s.numel()) if cfg.mbpa else 0,
        "model_ppl_mbpa_tokens": math.exp(_nll(LP_s)) if cfg.mbpa else None,
        "best_cache": best_cache, "best_mbpa": min(mbpa_rows, key=lambda r: r["ppl"]) if mbpa_rows else None,
        "best_mixture": min(mix_rows, key=lambda r: r["ppl"]) if mix_rows else None,
        "grid": {"cache": cache_rows, "mbpa": mbpa_rows, "mixture": mix_rows},
    }
    name = f"sweep-{cfg.split}-{cfg.tag}" if cfg.tag else f"sweep-{cfg.split}"
    run.write_result(name, result)
    md = sweep_markdown(result)
    run.write_text(f"{name}.md", md)
    result["markdown"] = md
    if cfg.apply_test:
        result["test"] = apply_to_split(run, lm, result, cfg, "test")
    return result


def apply_to_split(run: RunFolder, lm: LMRun, result: dict, cfg: SweepConfig, split: str = "test") -> dict:
    """Evaluate each variant with its own best validation settings on ``split``; writes eval-<split>.json.

    ``lm`` is the run as the sweep loaded it (model, corpus and checkpoint are not read again).
    """
    train_cfg, model, corpus, ck = lm
    H, Y, LP = collect_stream(model, getattr(corpus, split), bptt=cfg.bptt, device=torch.device(cfg.device),
                              max_tokens=cfg.test_max_tokens, progress=cfg.progress)
    W, b = model.output_layer() if cfg.mbpa else (None, None)
    bc, bm, bx = result["best_cache"], result["best_mbpa"], result["best_mixture"]
    lps = {"model": LP}
    settings: dict = {"model": None}

    done: dict[tuple, torch.Tensor] = {}  # each distinct memory pass runs once

    def cache_lp(size: int, theta: float) -> torch.Tensor:
        if ("cache", size, theta) not in done:
            done[("cache", size, theta)] = cache_log_probs(H, Y, CacheSettings(size, theta), cfg.memory_chunk,
                                                           cfg.progress)
        return done[("cache", size, theta)]

    def mbpa_lp(size: int, k: int, steps: int) -> torch.Tensor:
        if ("mbpa", size, k, steps) not in done:
            s = MbPASettings(lam=1.0, size=size, k=k, steps=steps, lr=cfg.lr, l2=cfg.l2, eps=cfg.eps,
                             stride=cfg.test_mbpa_stride)
            done[("mbpa", size, k, steps)] = mbpa_log_probs(H, Y, W, b, s, size, cfg.memory_chunk, cfg.progress)
        return done[("mbpa", size, k, steps)]

    defined = cache_defined(LP.numel(), LP.device)  # the cache is empty at the first target
    lps["+cache"] = mix_log_probs(LP, (bc["lambda"], cache_lp(bc["size"], bc["theta"]), defined))
    settings["+cache"] = bc
    if bm is not None:
        lps["+mbpa"] = mix_log_probs(LP, (bm["lambda"], mbpa_lp(bm["size"], bm["k"], bm["steps"])))
        settings["+mbpa"] = bm
    if bx is not None:
        lps["+cache+mbpa"] = mix_log_probs(LP, (bx["cache_lambda"], cache_lp(bx["size"], bx["theta"]), defined),
                                           (bx["mbpa_lambda"], mbpa_lp(bx["size"], bx["k"], bx["steps"])))
        settings["+cache+mbpa"] = bx
    if bm is not None:
        lps = with_sample_variants(lps, done[("mbpa", bm["size"], bm["k"], bm["steps"])])
    results = bucket_results(lps, Y, corpus.train_counts, tuple(train_cfg.buckets))
    out = eval_record(results, variant_settings=settings, split=split, checkpoint=cfg.checkpoint,
                      step=int(ck["step"]), edges=list(train_cfg.buckets), head=train_cfg.model.head,
                      data=train_cfg.data, tuned_on=cfg.split, mbpa_stride=cfg.test_mbpa_stride)
    out["path"] = str(run.write_eval(out, tag=cfg.tag))
    return out


def sweep_markdown(r: dict) -> str:
    lines = [f"Sweep on {r['split']} ({r['tokens']:,} tokens, checkpoint step {r['step']})", ""]
    if r.get("mbpa_stride", 1) > 1 and r["best_mbpa"]:
        lines += [f"MbPA and the mixture scored on every {r['mbpa_stride']}th target ({r['mbpa_tokens']:,} "
                  f"tokens; model ppl on them {r['model_ppl_mbpa_tokens']:.2f}); the rest on all.", ""]
    lines += ["| setting | ppl |", "|---|---|", f"| model | {r['model_ppl']:.2f} |"]
    c = r["best_cache"]
    lines.append(f"| +cache (size {c['size']}, θ {c['theta']}, λ {c['lambda']}) | {c['ppl']:.2f} |")
    if r["best_mbpa"]:
        m = r["best_mbpa"]
        lines.append(f"| +MbPA (size {m['size']}, K {m['k']}, steps {m['steps']}, λ {m['lambda']}) | {m['ppl']:.2f} |")
    if r["best_mixture"]:
        x = r["best_mixture"]
        lines.append(f"| +cache+MbPA (size {x['size']}, θ {x['theta']}, λc {x['cache_lambda']}, K {x['k']}, "
                     f"steps {x['steps']}, λm {x['mbpa_lambda']}) | {x['ppl']:.2f} |")
    return "\n".join(lines) + "\n"


CONFIG = SweepConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, SweepConfig)
    if len(rest) != 1:
        raise UserError("give exactly one run folder: fastbind lm-sweep RUN_DIR [key=value ...]")
    result = sweep(Path(rest[0]), cfg)
    print(result["markdown"])
    if "test" in result:
        t = result["test"]
        for name, v in t["variants"].items():
            print(format_table(v, f"test, {name}:"))
        print(f"wrote {t['path']}")
    return 0
