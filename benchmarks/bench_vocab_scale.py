"""Vocabulary-scale check: full vs adaptive softmax at WikiText-103's 267k classes, peak memory and time.

A synthetic corpus with a vocabulary of about 267k types (WikiText-103's size; the Gutenberg
books here have only ~15k types at min count 5), an LSTM 256, ``--steps`` training steps of
batch 32 × 35 with ``lm-train`` and then a test evaluation with ``lm-eval``, once with
``softmax=full`` and once with ``softmax=adaptive`` (each with ``--head``). Each variant runs
in its own process so its peak resident memory (``ru_maxrss``) is its own; the machine here has
24 GiB.

Usage::

    python benchmarks/bench_vocab_scale.py                         # 200 steps, head=softmax
    python benchmarks/bench_vocab_scale.py --head hebbian --threads 1
    python benchmarks/bench_vocab_scale.py --quick                 # small, for smoke tests

Writes JSON (default ``benchmarks/out/bench_vocab_scale.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import environment, write_result  # benchmarks/_common.py

FULL = {"background_vocab": 167_000, "entity_pool": 100_000, "background_zipf": 0.6, "train_tokens": 2_000_000,
        "valid_tokens": 20_000, "test_tokens": 50_000}
QUICK = {"background_vocab": 3_000, "entity_pool": 1_000, "background_zipf": 0.6, "train_tokens": 20_000,
         "valid_tokens": 1_000, "test_tokens": 2_000}


def one(softmax: str, a: argparse.Namespace, out: Path) -> dict:
    """Train and evaluate one variant in this process; return times and the peak RSS."""
    from fastbind.cli import main as cli

    if a.threads:
        torch.set_num_threads(a.threads)
    synth = [f"synthetic.{k}={v}" for k, v in (QUICK if a.quick else FULL).items()]
    common = [f"out={out}", "data=synthetic", *synth, f"softmax={softmax}", f"head={a.head}",
              f"hidden={a.hidden}", f"emb_dim={a.hidden}", "batch_size=32", "bptt=35", "progress=false",
              "tensorboard=false", f"threads={a.threads}"]
    t0 = time.perf_counter()
    rc = cli(["lm-train", *common, f"max_steps={a.steps}", "eval_every=0"])
    t1 = time.perf_counter()
    rc = rc or cli(["lm-eval", str(out), "split=test", "progress=false"])
    t2 = time.perf_counter()
    if rc:
        raise SystemExit(rc)
    ev = json.loads((out / "eval-test.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {"softmax": softmax, "head": a.head, "vocab_size": summary["vocab_size"], "steps": summary["step"],
            "train_seconds": t1 - t0, "train_step_seconds": summary["seconds_this_run"] / max(summary["step"], 1),
            "test_seconds": t2 - t1, "test_ppl": ev["ppl"], "test_tokens": ev["tokens"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--head", choices=("softmax", "hebbian"), default="softmax")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="a small vocabulary, for smoke tests")
    ap.add_argument("--one", choices=("full", "adaptive"), help=argparse.SUPPRESS)  # internal: one variant
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "bench_vocab_scale.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.hidden = min(a.steps, 3), 16
    if a.one:
        print(json.dumps(one(a.one, a, a.run_dir)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for softmax in ("full", "adaptive"):
            cmd = [sys.executable, __file__, "--one", softmax, "--run-dir", str(Path(tmp) / softmax),
                   "--steps", str(a.steps), "--hidden", str(a.hidden), "--head", a.head, "--threads", str(a.threads)]
            proc = subprocess.run(cmd + (["--quick"] if a.quick else []), capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{softmax} failed:\n{proc.stdout}\n{proc.stderr}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if a.threads:
        torch.set_num_threads(a.threads)
    result = {"benchmark": "vocab_scale", **environment(torch.device("cpu")),
              "settings": {"steps": a.steps, "hidden": a.hidden, "head": a.head, "batch": 32, "bptt": 35,
                           "synthetic": QUICK if a.quick else FULL},
              "results": rows}
    print(f"{'softmax':<10}{'vocab':>9}{'s/step':>9}{'test s':>9}{'test ppl':>11}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['softmax']:<10}{r['vocab_size']:>9,}{r['train_step_seconds']:>9.2f}{r['test_seconds']:>9.1f}"
              f"{r['test_ppl']:>11,.0f}{r['peak_rss_gib']:>10.2f}")
    write_result(a.out, result)


if __name__ == "__main__":
    main()
