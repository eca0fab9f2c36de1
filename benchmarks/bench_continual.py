"""Predictions per second of a continual-learning classifier with MbPA (``+mbpa``) against the
plain network, over an episodic memory of ``memory`` entries.

For each memory size, K and number of local steps: the MLP 784-1000-1000-10 of
``fastbind continual`` (random weights: the cost does not depend on them) classifies ``--queries``
Fashion-MNIST-shaped images plainly and through :func:`fastbind.evaluation.predict` with an MbPA
memory (``policy="reservoir"``, distances from the search, as ``fastbind continual`` runs it)
holding ``memory`` random keys of the network's width. Plain and ``+mbpa`` are timed side by
side in one run; ``ratio`` = ``+mbpa`` time / plain time. The target (docs/continual_learning.md):
one test set of 10,000 images at memory 10,000 and K 1,024 in ≤ 10 s on 2 cores
(``target_10k_images_s``, measured on all 10,000 images, ``steps`` 1).

Usage::

    python benchmarks/bench_continual.py                      # the grid: memory 1k/10k/60k × K 10/100/1,024 × steps 1/5
    python benchmarks/bench_continual.py --threads 2
    python benchmarks/bench_continual.py --quick              # seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_continual.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fastbind.evaluation import predict
from fastbind.memory import MbPA
from fastbind.models.convnet import ConvClassifier, ConvNetConfig

from _common import environment, sync, write_result  # benchmarks/_common.py


def _timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ConvClassifier(ConvNetConfig(max_classes=10, encoder="mlp", hidden=tuple(args.hidden), dropout=0.0))
    model.to(device).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.queries, 28, 28), dtype=torch.uint8, generator=g).to(device)
    rows = []
    for size in args.memory:
        keys = torch.relu(torch.randn(size, model.d, generator=g)).to(device)
        labels = torch.randint(10, (size,), generator=g).to(device)
        for k in args.k:
            for steps in args.steps:
                mbpa = MbPA(size=size, k=k, steps=steps, lr=1.0, l2=0.1, policy="reservoir", exact_distances=False)
                mbpa.write(keys, labels)
                n = min(args.queries, args.queries_steps if steps > 1 else args.queries)
                x = images[:n]
                predict(model, x[:8], 10, mbpa, 1.0)  # warm-up
                plain = _timed(lambda: predict(model, x, 10), device)
                mb = _timed(lambda: predict(model, x, 10, mbpa, 1.0), device)
                rows.append({"memory": size, "k": k, "steps": steps, "queries": n,
                             "plain_per_s": n / plain, "mbpa_per_s": n / mb, "ratio": mb / plain,
                             "mbpa_s_per_10k": 10000 * mb / n})
                print(f"memory {size:>6} K {k:>5} steps {steps}: plain {n / plain:>9,.0f}/s  +mbpa "
                      f"{n / mb:>8,.0f}/s  ({10000 * mb / n:6.1f} s per 10,000 images)", flush=True)
    target = next((r for r in rows if r["memory"] == 10000 and r["k"] == 1024 and r["steps"] == 1
                   and r["queries"] >= 10000), None)
    return {"benchmark": "bench_continual", "environment": environment(device), "hidden": list(args.hidden),
            "rows": rows, "target_10k_images_s": None if target is None else target["mbpa_s_per_10k"],
            "target_s": 10.0,
            "target_met": None if target is None else target["mbpa_s_per_10k"] <= 10.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", type=int, nargs="+", default=[1000, 10000, 60000])
    p.add_argument("--k", type=int, nargs="+", default=[10, 100, 1024])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    p.add_argument("--queries", type=int, default=10000, help="images per timing (steps = 1)")
    p.add_argument("--queries-steps", type=int, default=1000, help="images per timing when steps > 1")
    p.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_continual.json")
    args = p.parse_args(argv)
    if args.quick:
        args.memory, args.k, args.steps, args.queries, args.queries_steps, args.hidden = [200], [10], [1, 2], 64, 32, [32]
    write_result(args.out, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
