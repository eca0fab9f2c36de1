"""``fastbind demo``: the main job — softmax vs Hebbian Softmax on the synthetic long-tail corpus.

Trains two LSTM language models that differ only in their output layer (same seed, data,
model size and number of steps), evaluates both on the test split by training-frequency
bucket, prints a Table 1/2-style comparison together with the generator's own per-token
entropy (the best perplexity any model can reach on this corpus), and writes plots and a
markdown report. Needs no download and runs in a few minutes on 2 CPU cores::

    fastbind demo                         # runs/demo/{softmax,hebbian,report}
    fastbind demo out=/tmp/d max_steps=50 # any lm-train key=value applies to both runs

Re-running with the same ``out`` resumes (or reuses) the finished runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

from fastbind.data.synthetic import SyntheticConfig, token_nll
from fastbind.errors import UserError
from fastbind.lm import LMTrainConfig, load_data
from fastbind.models.lstm_lm import LMConfig
from fastbind.recipes.lm_eval import LMEvalConfig, run_eval
from fastbind.recipes.lm_train import train
from fastbind.recipes.report import build_report
from fastbind.training.buckets import BucketedNLL
from fastbind.training.config import parse_cli, resolve_key


def demo_defaults() -> LMTrainConfig:
    """The demo's budget: ~10k word types, 600k training tokens, two runs of ~2 minutes on 2 cores."""
    return LMTrainConfig(
        out="runs/demo",
        max_steps=400,
        eval_every=100,
        eval_max_tokens=10000,
        model=LMConfig(emb_dim=128, hidden=128, tied=False, T=100, gamma=0.1),
        synthetic=SyntheticConfig(background_vocab=5000, entity_pool=5000, train_tokens=600_000,
                                  valid_tokens=30_000, test_tokens=50_000),
    )


def generator_limit(cfg: LMTrainConfig, edges: tuple[int, ...]) -> dict:
    """Perplexity of the generator itself on the evaluated test targets, per bucket."""
    corpus = load_data(cfg)
    nll = token_nll(corpus, "test", cfg.synthetic, cfg.seed)
    acc = BucketedNLL.from_counts(corpus.train_counts, edges)
    acc.add(nll[1:], corpus.test[1:])  # the evaluated targets: every token after the first
    return acc.result()


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def comparison_table(results: dict[str, dict], limit: dict | None) -> str:
    names = [b["name"] for b in next(iter(results.values()))["buckets"]]
    rows = [f"| model | test ppl | {' | '.join(names)} |", "|---|---" + "|---" * len(names) + "|"]
    for label, r in list(results.items()) + ([("generator (entropy limit)", limit)] if limit else []):
        cells = [_fmt(b["ppl"]) for b in r["buckets"]]
        rows.append(f"| {label} | {_fmt(r['ppl'])} | {' | '.join(cells)} |")
    tokens = next(iter(results.values()))["buckets"]
    rows.append(f"| test tokens | {next(iter(results.values()))['tokens']:,} | "
                + " | ".join(f"{b['tokens']:,}" for b in tokens) + " |")
    return "\n".join(rows)


def run_demo(cfg: LMTrainConfig) -> dict:
    out = Path(cfg.out)
    t0 = time.perf_counter()
    results, runs = {}, []
    for head in ("softmax", "hebbian"):
        run_cfg = replace(cfg, out=str(out / head), model=replace(cfg.model, head=head))
        print(f"== training {head} ({cfg.max_steps} steps) -> {run_cfg.out}", flush=True)
        train(run_cfg)
        print(f"== evaluating {head} on the test split", flush=True)
        results[head] = run_eval(Path(run_cfg.out), LMEvalConfig(split="test", progress=cfg.progress))
        runs.append(Path(run_cfg.out))
    limit = generator_limit(cfg, tuple(cfg.buckets)) if cfg.data.strip().lower() == "synthetic" else None
    table = comparison_table(results, limit)
    report = build_report(runs, out / "report", split="test", title="fastbind demo: softmax vs Hebbian Softmax")
    print()
    print(f"Test perplexity by training-frequency bucket ({cfg.data}, {cfg.max_steps} steps each, seed {cfg.seed}):")
    print(table)
    if limit:
        for head, r in results.items():
            print(f"{head}: {r['nll'] - limit['nll']:.3f} nats/token above the generator's entropy "
                  f"({math.exp(limit['nll']):.1f} ppl)")
    print(f"plots and report: {report['validation']}, {report['buckets']}, {report['markdown']}")
    print(f"demo took {time.perf_counter() - t0:.0f} s")
    return {"results": results, "limit": limit, "table": table, "report": report}


CONFIG = demo_defaults()  # for `fastbind demo --help`: the demo's own defaults


def main(argv: list[str]) -> int:
    if any(resolve_key(LMTrainConfig, a.partition("=")[0].strip()) == "model.head" for a in argv if "=" in a):
        raise UserError("the demo trains both heads; drop head=/model.head=")
    cfg, rest = parse_cli(argv, LMTrainConfig, base=demo_defaults())
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/demo)")
    run_demo(cfg)
    return 0
