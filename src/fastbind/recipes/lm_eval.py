"""``fastbind lm-eval RUN_DIR [split=test] [key=value ...]``: perplexity by frequency bucket.

Evaluates a trained run's checkpoint on one split as one contiguous stream (batch 1 by
default, recurrent state carried across chunks) and reports the perplexity overall and per
training-frequency bucket (``>10K``, ``1K-10K``, ``100-1K``, ``<100`` by default), as in
Table 2 of Rae et al. (2018). Prints a table and writes ``RUN_DIR/eval-<split>.json``::

    {"ppl": 124.5, "nll": 4.82, "tokens": 82430, "split": "test", "checkpoint": "best",
     "step": 9000, "buckets": [{"name": ">10K", "tokens": 51234, "ppl": 40.1}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from fastbind.errors import UserError
from fastbind.recipes.lm_train import LMTrainConfig, build_model, evaluate, load_data, vocab_digest
from fastbind.training.buckets import BucketedNLL
from fastbind.training.checkpoint import atomic_write, load_checkpoint
from fastbind.training.config import from_dict, parse_cli


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


def load_run(run_dir: Path, which: str = "best", device: str = "cpu", data_dir: str | None = None):
    """``(train_cfg, model, corpus, checkpoint)`` of a run folder; checks the vocabulary."""
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json)")
    try:
        train_cfg = from_dict(LMTrainConfig, json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e.msg})") from None
    if data_dir is not None:
        train_cfg = replace(train_cfg, data_dir=data_dir)
    ck_path = run_dir / f"{which}.pt"
    if not ck_path.is_file() and which == "best" and (run_dir / "last.pt").is_file():
        ck_path = run_dir / "last.pt"  # a run without validation has no best.pt
    if not ck_path.is_file():
        raise UserError(f"{run_dir} has no checkpoint {which}.pt")
    ck = load_checkpoint(ck_path)
    corpus = load_data(train_cfg)
    if ck.get("vocab_digest") != vocab_digest(corpus):
        raise UserError(f"{ck_path} was trained on a different vocabulary ({ck.get('vocab_size')} types) than "
                        f"data={train_cfg.data} gives now ({len(corpus.vocab)} types)")
    model = build_model(train_cfg, len(corpus.vocab))
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{ck_path} does not match the run's model settings ({str(e).splitlines()[0]})") from None
    return train_cfg, model.to(device), corpus, ck


def format_table(result: dict, title: str) -> str:
    lines = [title, f"  {'bucket':<10} {'tokens':>10} {'ppl':>12}"]
    for b in result["buckets"]:
        ppl = "–" if b["ppl"] is None else f"{b['ppl']:,.2f}"
        lines.append(f"  {b['name']:<10} {b['tokens']:>10,} {ppl:>12}")
    lines.append(f"  {'all':<10} {result['tokens']:>10,} {result['ppl']:>12,.2f}")
    return "\n".join(lines)


def run_eval(run_dir: Path, cfg: LMEvalConfig) -> dict:
    train_cfg, model, corpus, ck = load_run(run_dir, cfg.checkpoint, cfg.device, cfg.data_dir)
    edges = tuple(cfg.buckets) if cfg.buckets is not None else tuple(train_cfg.buckets)
    acc = BucketedNLL.from_counts(corpus.train_counts, edges)
    tokens = getattr(corpus, cfg.split)
    result = evaluate(model, tokens, batch_size=cfg.batch_size, bptt=cfg.bptt, acc=acc,
                      device=torch.device(cfg.device), max_tokens=cfg.max_tokens, progress=cfg.progress)
    result.update({"split": cfg.split, "checkpoint": cfg.checkpoint, "step": int(ck["step"]),
                   "edges": list(edges), "head": train_cfg.model.head, "data": train_cfg.data})
    if corpus.entropy and cfg.split in corpus.entropy and not cfg.max_tokens:
        result["generator_entropy_nats"] = corpus.entropy[cfg.split]
    out = run_dir / f"eval-{cfg.split}.json"
    atomic_write(out, lambda fh: fh.write(json.dumps(result, indent=2).encode()))
    result["path"] = str(out)
    return result


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, LMEvalConfig)
    if len(rest) != 1:
        raise UserError("give exactly one run folder: fastbind lm-eval RUN_DIR [split=test] [key=value ...]")
    run_dir = Path(rest[0])
    result = run_eval(run_dir, cfg)
    print(format_table(result, f"{run_dir} ({result['head']}, step {result['step']}) — {cfg.split} perplexity"))
    print(f"wrote {result['path']}")
    return 0


__all__ = ["LMEvalConfig", "format_table", "load_run", "run_eval"]
