"""``fastbind demo``: the main job — the project's Table 1 on the synthetic long-tail corpus.

Trains two LSTM language models that differ only in their output layer (softmax and Hebbian
Softmax; same seed, data, model size and number of steps), side by side in two processes.
For each it tunes a neural cache and MbPA on the validation split (a small grid, MbPA on a
stride of the targets; :mod:`fastbind.evaluation.sweep`) and evaluates the model alone,
+ cache, + MbPA and + both on the test split by training-frequency bucket. It prints one
table with the generator's own per-token entropy (the best perplexity any model can reach
on this corpus) and a few sentences on what the table shows — including where the Hebbian
head does not help at this budget — and writes plots and a markdown report. Needs no
download; about four minutes on 2 idle CPU cores::

    fastbind demo                          # runs/demo/{softmax,hebbian,report}
    fastbind demo out=/tmp/d max_steps=50  # any lm-train key=value applies to both runs (train.KEY too)
    fastbind demo memories=false           # the models alone
    fastbind demo parallel=false           # one head after the other, in this process

Re-running with the same ``out`` resumes (or reuses) the finished runs.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from fastbind.buckets import BucketedNLL
from fastbind.data.synthetic import SyntheticConfig, token_nll
from fastbind.errors import BadSetting, UserError
from fastbind.evaluation.sweep import SweepConfig
from fastbind.lm import LMEvalConfig, LMTrainConfig, evaluate_run, load_data, sweep_run, train
from fastbind.models.registry import LSTMConfig, ModelConfig
from fastbind.report.lm import build_report
from fastbind.training.config import parse_cli, resolve_key, top_keys


def demo_train_defaults() -> LMTrainConfig:
    """The demo's budget: ~10k word types, 600k training tokens, about 4 minutes on 2 idle cores."""
    return LMTrainConfig(
        out="runs/demo",
        max_steps=500,
        eval_every=100,
        eval_max_tokens=10000,
        model=ModelConfig(emb_dim=128, tied=False, T=100, gamma=0.05, objective="ip"),
        lstm=LSTMConfig(hidden=128),
        synthetic=SyntheticConfig(background_vocab=5000, entity_pool=5000, train_tokens=600_000,
                                  valid_tokens=30_000, test_tokens=50_000),
    )


@dataclass
class DemoConfig:
    """The demo's settings: the memories', and under ``train`` every ``lm-train`` key (applied to
    both runs, the head excepted), which the command line also takes without ``train.``."""

    memories: bool = True  # tune a neural cache and MbPA on validation and add them on test
    mbpa: bool = True  # include MbPA (with memories=true)
    memory_sizes: tuple[int, ...] = (1000, 3000)  # cache sizes tried; MbPA uses the largest
    mbpa_k: int = 64  # MbPA neighbours
    mbpa_stride: int = 8  # MbPA scored on every n-th target (its memory reads every one)
    parallel: bool = True  # train and evaluate the two heads at once, each on half the cores
    train: LMTrainConfig = field(default_factory=demo_train_defaults)

    # lm-train's keys (short ones too) at the top level, on command lines and in config files (presets)
    RENAMED: ClassVar[dict[str, str]] = {key: f"train.{key}" for key in top_keys(LMTrainConfig)}

    def __post_init__(self) -> None:
        if not self.memory_sizes or min(self.memory_sizes) < 1:
            raise BadSetting("memory_sizes", f"needs sizes >= 1, got {list(self.memory_sizes)}")
        for name in ("mbpa_k", "mbpa_stride"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")


def demo_defaults() -> DemoConfig:
    """The demo's settings before any key=value."""
    return DemoConfig()


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


VARIANT_ORDER = ("model", "+cache", "+mbpa", "+cache+mbpa", "model@sample", "+cache@sample")


def comparison_table(results: dict[str, dict], limit: dict | None) -> str:
    """One row per head and memory variant (MbPA rows and ``@sample`` rows on the sampled targets)."""
    first = next(iter(results.values()))
    names = [b["name"] for b in first["buckets"]]
    rows = [f"| model | test ppl | {' | '.join(names)} |", "|---|---" + "|---" * len(names) + "|"]
    entries = []
    for head, r in results.items():
        variants = r.get("variants") or {"model": r}
        for v in VARIANT_ORDER:
            if v in variants:
                label = {"model": head, "model@sample": f"{head} (sample)"}.get(v, f"{head} {v.replace('@sample', ' (sample)')}")
                entries.append((label, variants[v]))
    if limit:
        entries.append(("generator (entropy limit)", limit))
    for label, r in entries:
        cells = [_fmt(b["ppl"]) for b in r["buckets"]]
        rows.append(f"| {label} | {_fmt(r['ppl'])} | {' | '.join(cells)} |")
    rows.append(f"| test tokens | {first['tokens']:,} | " + " | ".join(f"{b['tokens']:,}" for b in first["buckets"]) + " |")
    sample = next((v for r in results.values() for k, v in (r.get("variants") or {}).items() if k.endswith("@sample")), None)
    if sample:
        rows.append(f"| sampled tokens (MbPA rows) | {sample['tokens']:,} | "
                    + " | ".join(f"{b['tokens']:,}" for b in sample["buckets"]) + " |")
    return "\n".join(rows)


def _train_config(cfg: DemoConfig, head: str) -> LMTrainConfig:
    """The lm-train settings of one of the demo's runs."""
    return replace(cfg.train, out=str(Path(cfg.train.out) / head), model=replace(cfg.train.model, head=head))


def demo_sweep(cfg: DemoConfig) -> SweepConfig:
    """The small memory grid the demo tunes on validation: the cache at every size in
    ``memory_sizes``, MbPA (and the mixture) at the largest, scored on every ``mbpa_stride``-th target."""
    return SweepConfig(split="valid", thetas=(0.05, 0.1, 0.2), cache_lambdas=(0.1, 0.2, 0.3, 0.4),
                       sizes=tuple(cfg.memory_sizes), mbpa=cfg.mbpa, mbpa_sizes=(max(cfg.memory_sizes),),
                       ks=(cfg.mbpa_k,), steps=(1,), mbpa_lambdas=(0.05, 0.1, 0.2), mbpa_stride=cfg.mbpa_stride,
                       test_mbpa_stride=cfg.mbpa_stride, progress=cfg.train.progress)


def _pct(new: float, old: float) -> str:
    return f"{100 * (new / old - 1):+.1f}%"


def summary_lines(results: dict[str, dict], limit: dict | None) -> list[str]:
    """What the table shows, in words, from its numbers."""
    lines = []
    soft, hebb = results.get("softmax"), results.get("hebbian")
    if soft and hebb:
        names = [b["name"] for b in soft["buckets"]]
        per = {b["name"]: b["ppl"] for b in soft["buckets"]}
        diffs = [f"{n} {_pct(b['ppl'], per[n])}" for n, b in zip(names, hebb["buckets"], strict=True) if b["tokens"]]
        verdict = "helps" if hebb["ppl"] < soft["ppl"] else "does not help"
        lines.append(f"Hebbian Softmax vs softmax, model alone: {_pct(hebb['ppl'], soft['ppl'])} test perplexity "
                     f"(by bucket: {', '.join(diffs)}) - at this budget it {verdict} overall.")
    for head in ("softmax", "hebbian"):
        r = results.get(head)
        if not r or "variants" not in r:
            continue
        v = r["variants"]
        parts = [f"{name} {_pct(v[name]['ppl'], v[base]['ppl'])}"
                 for name, base in (("+cache", "model"), ("+mbpa", "model@sample"), ("+cache+mbpa", "model@sample"))
                 if name in v and base in v]
        if parts:
            rare = v["+cache"]["buckets"][-1]["ppl"] / v["model"]["buckets"][-1]["ppl"] if "+cache" in v else None
            tail = f"; the cache changes the rarest bucket by {100 * (rare - 1):+.0f}%" if rare else ""
            lines.append(f"{head}: memories against the model alone (MbPA rows on the same sampled targets): "
                         f"{', '.join(parts)}{tail}.")
    if limit:
        for head, r in results.items():
            lines.append(f"{head}: {r['nll'] - limit['nll']:.3f} nats/token above the generator's entropy "
                         f"({math.exp(limit['nll']):.1f} ppl)")
    return lines


def _one_head(cfg: DemoConfig, head: str) -> dict:
    """Train one head's run and evaluate it on test (with the memories tuned on validation)."""
    run_cfg = _train_config(cfg, head)
    train(run_cfg)
    if cfg.memories:
        return sweep_run(Path(run_cfg.out), demo_sweep(cfg))["test"]
    return evaluate_run(Path(run_cfg.out), LMEvalConfig(split="test", progress=cfg.train.progress))


def _last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_bytes().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _side_by_side(cfg: DemoConfig, heads: tuple[str, ...]) -> dict[str, dict]:
    """Both heads at once in two processes, each with half the cores; one progress bar."""
    t = cfg.train
    threads = t.threads or max(1, (os.cpu_count() or 2) // 2)
    child = replace(cfg, train=replace(t, threads=threads, progress=False))
    then = ", then tuning the neural cache and MbPA on validation" if cfg.memories else ""
    print(f"== training {' and '.join(heads)} side by side ({t.max_steps} steps, {threads} thread(s) each){then}, "
          "then the test split", flush=True)
    with ProcessPoolExecutor(len(heads), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {head: pool.submit(_one_head, child, head) for head in heads}
        with tqdm(total=t.max_steps * len(heads), desc="train both", disable=not t.progress) as bar:
            while not all(f.done() for f in futures.values()):
                steps = min(sum(_last_step(Path(t.out) / head) for head in heads), bar.total)
                if steps > bar.n:  # redraw only on news (a log file gets one line per redraw)
                    bar.update(steps - bar.n)
                    if steps == bar.total:
                        bar.set_description("memories")
                time.sleep(1.0)
        return {head: f.result() for head, f in futures.items()}


def run_demo(cfg: DemoConfig) -> dict:
    t = cfg.train
    out = Path(t.out)
    t0 = time.perf_counter()
    heads = ("softmax", "hebbian")
    if cfg.parallel:
        results = _side_by_side(cfg, heads)
    else:
        results = {}
        for head in heads:
            print(f"== {head}: training ({t.max_steps} steps)" + (", then tuning the neural cache and MbPA on "
                  "validation" if cfg.memories else "") + ", then the test split", flush=True)
            results[head] = _one_head(cfg, head)
    runs = [out / head for head in heads]
    limit = generator_limit(t, tuple(t.buckets)) if t.data.strip().lower() == "synthetic" else None
    table = comparison_table(results, limit)
    report = build_report(runs, out / "report", split="test", title="fastbind demo: softmax vs Hebbian Softmax")
    print()
    print(f"Test perplexity by training-frequency bucket ({t.data}, {t.max_steps} steps each, seed {t.seed}):")
    print(table)
    lines = summary_lines(results, limit)
    print("\n".join(lines))
    print(f"plots and report: {report['validation']}, {report['buckets']}, {report['markdown']}")
    print(f"demo took {time.perf_counter() - t0:.0f} s")
    return {"results": results, "limit": limit, "table": table, "summary": lines, "report": report}


CONFIG = DemoConfig  # for `fastbind demo --help`: the demo's own defaults


def main(argv: list[str]) -> int:
    if any(resolve_key(DemoConfig, a.partition("=")[0].strip()) == "train.model.head" for a in argv if "=" in a):
        raise UserError("the demo trains both heads; drop head=/model.head=")
    cfg, rest = parse_cli(argv, DemoConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/demo)")
    run_demo(cfg)
    return 0
