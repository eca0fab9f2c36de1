"""How often the Fast Weight Memory's norm clip binds in a trained catbAbI model.

The clip ``F ← F / max(1, ‖F‖)`` after every write is what keeps the fast-weight recurrence from
being a plain delta rule. A triangular (WY/UT) solve of a block's deltas, as in DeltaNet, is
exact only for a block in which the clip never binds; this script measures how often that is.
It runs a ``fastbind catbabi`` run's checkpoint over a split, carrying the state as training
does, and counts, from the pre-clip norms the layer reports:

* steps with ``‖F‖ > 1`` (the clip binds at that step);
* blocks of ``--chunk`` steps of one sequence in which it binds at least once (a per-sequence
  fallback), and blocks in which it binds for at least one sequence of the batch (a per-batch one).

Usage::

    python benchmarks/fwm_clip.py runs/catbabi-fwm-qa                # best.pt, validation split
    python benchmarks/fwm_clip.py runs/catbabi-fwm-qa --checkpoint last --segments 50

Writes JSON (default ``benchmarks/out/fwm_clip.json``) and prints the fractions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import environment, load_catbabi_run, write_result  # benchmarks/_common.py
from fastbind.data.babi import CatbAbIEvalStream


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a fastbind catbabi run folder (arch=fwm)")
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--split", default="valid", choices=["valid", "test"])
    ap.add_argument("--segments", type=int, default=0, help="stop after this many segments (0: the whole split)")
    ap.add_argument("--chunk", type=int, default=32, help="block length of the segment form")
    ap.add_argument("--data", default=None, help="the bAbI folder (default: the run's)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "fwm_clip.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model, data, ck = load_catbabi_run(args.run, args.checkpoint, args.data)
    if cfg.model.arch != "fwm":
        raise SystemExit(f"{args.run} is an arch={cfg.model.arch} run: it has no fast weights")
    stories = data.valid if args.split == "valid" else data.test
    stream = CatbAbIEvalStream(stories, data.vocab, batch_size=cfg.batch_size, seg_len=cfg.seg_len, mode=cfg.mode,
                               seed=cfg.seed)
    norms = []
    state = None
    with torch.no_grad():
        for i, seg in enumerate(stream):
            if args.segments and i >= args.segments:
                break
            out = model(seg.x, state)
            state = out.state
            norms.append(out.fwm_norm)  # (B, L)
    n = torch.cat(norms, 1)  # (B, steps)
    B, steps = n.shape
    binds = n > 1.0
    usable = steps // args.chunk * args.chunk
    blocks = binds[:, :usable].reshape(B, -1, args.chunk).any(2)  # (B, blocks)
    q = torch.quantile(n.flatten().double()[: 2_000_000], torch.tensor([0.1, 0.5, 0.9], dtype=torch.double))
    result = {
        "benchmark": "fwm_clip", **environment(torch.device("cpu")),
        "run": args.run.name, "checkpoint": args.checkpoint, "step": int(ck["step"]), "split": args.split,
        "sequences": B, "steps_per_sequence": steps, "chunk": args.chunk,
        "steps_clip_binds": float(binds.double().mean()),
        "sequence_blocks_clip_binds": float(blocks.double().mean()),
        "batch_blocks_clip_binds": float(blocks.any(0).double().mean()),
        "norm_quantiles": {"0.1": float(q[0]), "0.5": float(q[1]), "0.9": float(q[2])},
        "norm_mean": float(n.mean()),
    }
    print(f"{args.run.name} ({args.checkpoint}.pt, step {result['step']}), {args.split}: {B} × {steps} steps")
    print(f"  the clip binds at {100 * result['steps_clip_binds']:.2f}% of steps, in "
          f"{100 * result['sequence_blocks_clip_binds']:.2f}% of one sequence's blocks of {args.chunk}, in "
          f"{100 * result['batch_blocks_clip_binds']:.2f}% of the batch's blocks")
    print(f"  ‖F‖ before the clip: median {result['norm_quantiles']['0.5']:.2f}, "
          f"10% {result['norm_quantiles']['0.1']:.2f}, 90% {result['norm_quantiles']['0.9']:.2f}")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
