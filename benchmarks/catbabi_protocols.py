"""catbAbI accuracy of one checkpoint under fastbind's evaluation protocol and the FWM authors'.

fastbind validates at the training batch size (32) from an empty memory and tests the same way;
the authors validate at batch 128, every stream starting from training stream 0's state at that
step, and test at batch 1 from an empty memory. Evaluation changes nothing in training, so one
checkpoint, evaluated both ways, measures what the protocol alone changes. ``last.pt`` holds the
training streams' state of its step; ``best.pt`` holds the state of its own step.

Usage::

    python benchmarks/catbabi_protocols.py runs/catbabi-fwm-qa --checkpoint last
    python benchmarks/catbabi_protocols.py runs/catbabi-fwm-qa --skip-test1        # without the slow batch-1 test

Writes JSON (default ``benchmarks/out/catbabi_protocols.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import environment, load_catbabi_run, write_result  # benchmarks/_common.py
from fastbind.data.babi import NUM_TASKS, CatbAbIEvalStream
from fastbind.evaluation import answer_accuracy
from fastbind.report.catbabi import mean_without


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a fastbind catbabi run folder")
    ap.add_argument("--checkpoint", default="last", choices=["best", "last"])
    ap.add_argument("--eval-batch", type=int, default=128, help="the authors' validation batch")
    ap.add_argument("--skip-test1", action="store_true", help="leave out the test at batch 1")
    ap.add_argument("--data", default=None, help="the bAbI folder (default: the run's)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "catbabi_protocols.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model, data, ck = load_catbabi_run(args.run, args.checkpoint, args.data)
    train_state = tuple(t for t in ck["state"]) if ck.get("state") is not None else None

    def accuracy(stories, batch: int, from_train: bool) -> dict:
        stream = CatbAbIEvalStream(stories, data.vocab, batch_size=batch, seg_len=cfg.seg_len, mode=cfg.mode,
                                   seed=cfg.seed)
        start = model.replicate_state(train_state, row=0, n=batch) if from_train and train_state else None
        t0 = time.perf_counter()
        with torch.no_grad():
            res = answer_accuracy(model, stream, device=torch.device("cpu"), num_tasks=NUM_TASKS, state=start)
        return {"mean": res["mean"], "mean_without_qa3": mean_without(res["per_task"]), "accuracy": res["accuracy"],
                "answers": res["answers"], "per_task": res["per_task"], "batch": batch, "from_train_state": from_train,
                "seconds": time.perf_counter() - t0}

    rows = {f"valid, fastbind (batch {cfg.batch_size}, empty)": accuracy(data.valid, cfg.batch_size, False),
            f"valid, authors (batch {args.eval_batch}, from training stream 0)": accuracy(data.valid, args.eval_batch,
                                                                                         True),
            f"test, fastbind (batch {cfg.batch_size}, empty)": accuracy(data.test, cfg.batch_size, False)}
    if not args.skip_test1:
        rows["test, authors (batch 1, empty)"] = accuracy(data.test, 1, False)
    result = {"benchmark": "catbabi_protocols", **environment(torch.device("cpu")), "run": args.run.name,
              "checkpoint": args.checkpoint, "step": int(ck["step"]), "rows": rows}
    print(f"{args.run.name} ({args.checkpoint}.pt, step {result['step']})")
    for name, r in rows.items():
        print(f"  {name:55s} mean {100 * r['mean']:.2f}%  without qa3 {100 * r['mean_without_qa3']:.2f}%  "
              f"({r['answers']:,} answers, {r['seconds']:.0f} s)")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
