"""``fastbind lm-eval RUN_DIR [split=test] [key=value ...]``: perplexity by frequency bucket.

With ``cache.lambda=0.1`` and/or ``mbpa.lambda=0.04`` it also evaluates dynamic-evaluation
variants (Rae et al. 2018, Table 1): a neural cache and MbPA over the split's stream, mixed
with the model in probability space, reported as ``model``, ``+cache``, ``+mbpa`` and
``+cache+mbpa`` under ``"variants"`` (the top-level numbers stay the model's own).

Evaluates a trained run's checkpoint on one split as one contiguous stream (batch 1 by
default, recurrent state carried across chunks) and reports the perplexity overall and per
training-frequency bucket (``>10K``, ``1K-10K``, ``100-1K``, ``<100`` by default), as in
Table 2 of Rae et al. (2018). Prints a table and writes ``RUN_DIR/eval-<split>.json``, one
layout with or without memories (:func:`fastbind.runs.eval_record`)::

    {"ppl": 124.5, "nll": 4.82, "tokens": 82430,
     "buckets": [{"name": ">10K", "tokens": 51234, "ppl": 40.1}, ...],
     "variants": {"model": {"ppl": 124.5, ..., "settings": null}, "+cache": {...}, ...},
     "split": "test", "checkpoint": "best", "step": 9000, ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from fastbind.errors import UserError
from fastbind.evaluation import (
    CacheSettings, MbPASettings, bucket_results, cache_log_probs, collect_stream, evaluate, format_table,
    mbpa_log_probs, variant_log_probs,
)
from fastbind.lm import load_lm_run
from fastbind.runs import RunFolder, eval_record
from fastbind.buckets import BucketedNLL
from fastbind.training.config import parse_cli, to_dict


@dataclass
class LMEvalConfig:
    """Settings of ``fastbind lm-eval`` (the run folder is the positional argument)."""

    split: Literal["valid", "test", "train"] = "test"
    checkpoint: Literal["best", "last"] = "best"
    batch_size: int = 1  # contiguous rows; 1 = the whole split as one stream
    bptt: int = 100  # chunk length (state is carried, so it only trades memory for speed)
    buckets: tuple[int, ...] | None = None  # bucket edges; None = the run's
    max_tokens: int = 0  # evaluate only the first N tokens (0 = all)
    device: str = "cpu"
    data_dir: str | None = None  # override the run's data cache folder
    progress: bool = True
    memory_chunk: int = 256  # queries per memory call (results do not depend on it)
    cache: CacheSettings = field(default_factory=CacheSettings)
    mbpa: MbPASettings = field(default_factory=MbPASettings)


def run_eval(run_dir: Path, cfg: LMEvalConfig) -> dict:
    """Evaluate a run on ``cfg.split``; writes and returns its :func:`~fastbind.runs.eval_record` (plus ``path``)."""
    run = RunFolder(run_dir)
    train_cfg, model, corpus, ck = load_lm_run(run, cfg.checkpoint, cfg.device, cfg.data_dir)
    edges = tuple(cfg.buckets) if cfg.buckets is not None else tuple(train_cfg.buckets)
    tokens = getattr(corpus, cfg.split)
    use_cache, use_mbpa = cfg.cache.lam > 0, cfg.mbpa.lam > 0
    context = {}
    if use_mbpa and model.is_adaptive:
        raise UserError("MbPA adapts a full softmax output layer; this run has softmax=adaptive (use the cache alone)")
    if use_cache or use_mbpa:
        if cfg.batch_size != 1:
            raise UserError("cache/MbPA evaluation reads the split as one stream: use batch_size=1")
        H, Y, LP = collect_stream(model, tokens, bptt=cfg.bptt, device=torch.device(cfg.device),
                                  max_tokens=cfg.max_tokens, progress=cfg.progress)
        lp_c = cache_log_probs(H, Y, cfg.cache, cfg.memory_chunk, cfg.progress) if use_cache else None
        W, b = model.output_layer() if use_mbpa else (None, None)
        lp_m = (mbpa_log_probs(H, Y, W, b, cfg.mbpa, cfg.cache.size, cfg.memory_chunk, cfg.progress)
                if use_mbpa else None)
        variants = bucket_results(variant_log_probs(LP, lp_c, lp_m, cfg.cache.lam, cfg.mbpa.lam), Y,
                                  corpus.train_counts, edges)
        memories = {"cache": to_dict(cfg.cache) if use_cache else None, "mbpa": to_dict(cfg.mbpa) if use_mbpa else None}
        settings = {"+cache": {"cache": memories["cache"]}, "+mbpa": {"mbpa": memories["mbpa"]},
                    "+cache+mbpa": memories}
        context["settings"] = memories
    else:
        acc = BucketedNLL.from_counts(corpus.train_counts, edges)
        variants = {"model": evaluate(model, tokens, batch_size=cfg.batch_size, bptt=cfg.bptt, acc=acc,
                                      device=torch.device(cfg.device), max_tokens=cfg.max_tokens,
                                      progress=cfg.progress)}
        settings = {}
    context.update({"split": cfg.split, "checkpoint": cfg.checkpoint, "step": int(ck["step"]),
                    "edges": list(edges), "head": train_cfg.model.head, "data": train_cfg.data})
    if corpus.entropy and cfg.split in corpus.entropy and not cfg.max_tokens:
        context["generator_entropy_nats"] = corpus.entropy[cfg.split]
    result = eval_record(variants, variant_settings=settings, **context)
    result["path"] = str(run.write_eval(result))
    return result


CONFIG = LMEvalConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, LMEvalConfig)
    if len(rest) != 1:
        raise UserError("give exactly one run folder: fastbind lm-eval RUN_DIR [split=test] [key=value ...]")
    run_dir = Path(rest[0])
    result = run_eval(run_dir, cfg)
    title = f"{run_dir} ({result['head']}, step {result['step']}) — {cfg.split} perplexity"
    for name, v in result["variants"].items():
        print(format_table(v, title if name == "model" else f"{name}:"))
    print(f"wrote {result['path']}")
    return 0


__all__ = ["LMEvalConfig", "run_eval"]
