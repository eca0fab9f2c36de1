"""Training throughput of ``fastbind curriculum`` against a plain PyTorch loop over the same convnet.

The curriculum's own loop (:func:`fastbind.recipes.curriculum.train_one`: class-uniform
sampling, batched augmentation, the masked growing head, Hebbian memorize or the MbPA
write, metrics and checkpoints) runs with level checks switched off (``eval_every`` past
the last step), so only training steps are timed. The plain loop is what a user would write
for the same convnet and batch: sample images, augment them the same way, forward with
dropout, cross-entropy, backward, RMSprop. Variants are interleaved round by round, the
order rotated so that each leads in turn, and each ratio is plain time / variant time per
round, median over rounds, so drift of the machine affects all alike. On a shared VM the
rounds still scatter by ±15%, more than the loops differ, so the script also times what the
heads add to a step — Hebbian ``memorize`` and the MbPA write — on their own, many times,
and reports each as a share of a plain step.

Usage::

    python benchmarks/bench_curriculum.py --data ../shared/data/omniglot --threads 2
    python benchmarks/bench_curriculum.py --quick        # a few seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_curriculum.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastbind import HebbianSoftmax, MbPA
from fastbind.data.omniglot import Omniglot, augment, load_omniglot
from fastbind.models.convnet import conv_encoder
from fastbind.recipes.curriculum import CurriculumConfig, train_one

from _common import environment, write_result  # benchmarks/_common.py


def random_omniglot(classes: int, seed: int = 0) -> Omniglot:
    """Random images in Omniglot's layout (15 train / 5 test per class): throughput does not depend on them."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (classes * 15, 28, 28), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (classes * 5, 28, 28), dtype=torch.uint8, generator=g)
    return Omniglot([f"a/c{i}" for i in range(classes)], train, torch.arange(classes).repeat_interleave(15),
                    test, torch.arange(classes).repeat_interleave(5), ["random"])


def plain_loop(data: Omniglot, steps: int, batch_size: int, n: int, lr: float, seed: int) -> tuple[float, float]:
    """``(wall, CPU)`` seconds for ``steps`` training steps of a straightforward loop."""
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    encoder, head = conv_encoder(64, 4), nn.Linear(64, n)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.RMSprop(params, lr=lr)
    images = data.train_images[data.train_labels < n].float().div(255).unsqueeze(1)
    labels = data.train_labels[data.train_labels < n]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(images.shape[0], (batch_size,), generator=g)
        x = augment(images[idx], generator=g)
        loss = F.cross_entropy(head(F.dropout(encoder(x), 0.2, True)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def recipe_loop(data: Omniglot, steps: int, cfg: CurriculumConfig, head: str, folder: Path) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    one = replace(cfg, out=str(folder), head=(head,), max_steps=steps, eval_every=steps + 1,
                  checkpoint_every=steps + 1, progress=False)
    train_one(one, data)
    return time.perf_counter() - t0, time.process_time() - c0


def per_call_seconds(fn, reps: int) -> float:
    for _ in range(max(1, reps // 10)):  # warm-up
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def update_costs(batch_size: int, n: int, total: int, reps: int) -> dict:
    """Seconds per call of what the heads add to a step: Hebbian memorize, the MbPA write.

    Timed on their own, many times, they measure the added cost more steadily than the
    difference of two noisy loop timings.
    """
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(batch_size, 64, generator=g)
    y = torch.randint(n, (batch_size,), generator=g)
    head = HebbianSoftmax(64, total, T=CurriculumConfig.T[0], gamma=CurriculumConfig.gamma[0])
    mbpa = MbPA(size=CurriculumConfig().mbpa.size, k=CurriculumConfig().mbpa.k)
    return {"hebbian_memorize_s": per_call_seconds(lambda: head.memorize(feats, y, active=n), reps),
            "mbpa_write_s": per_call_seconds(lambda: mbpa.write(feats, y), reps)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="Omniglot folder (default: random images of the same layout)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=CurriculumConfig.batch_size[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a few steps and one round (smoke test)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_curriculum.json")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 5, 1
    torch.set_num_threads(args.threads)
    data = load_omniglot(args.data, progress=False) if args.data else random_omniglot(60)
    cfg = CurriculumConfig(batch_size=(args.batch_size,))
    n, lr = cfg.start_classes, cfg.lr[0]
    heads = ("softmax", "hebbian", "mbpa")
    times: dict[str, list[tuple[float, float]]] = {"plain": [], **{h: [] for h in heads}}
    with tempfile.TemporaryDirectory() as tmp:
        plain_loop(data, 3, args.batch_size, n, lr, seed=0)  # warm-up: first-call costs out of the timings
        for h in heads:
            recipe_loop(data, 3, cfg, h, Path(tmp) / f"warm-{h}")
        names = ["plain", *heads]
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # each loop leads some round
                if name == "plain":
                    times[name].append(plain_loop(data, args.steps, args.batch_size, n, lr, seed=r))
                else:
                    folder = Path(tmp) / f"{name}-{r}"
                    times[name].append(recipe_loop(data, args.steps, replace(cfg, seeds=(r,)), name, folder))
    images = args.steps * args.batch_size
    costs = update_costs(args.batch_size, n, data.num_classes, reps=50 if args.quick else 2000)
    plain_step = statistics.median(w for w, _ in times["plain"]) / args.steps
    costs.update({"plain_step_s": plain_step, "hebbian_memorize_share": costs["hebbian_memorize_s"] / plain_step,
                  "mbpa_write_share": costs["mbpa_write_s"] / plain_step})
    results = {}
    for name, ts in times.items():
        wall, cpu = [w for w, _ in ts], [c for _, c in ts]
        results[name] = {"seconds_rounds": wall, "cpu_seconds_rounds": cpu,
                         "images_per_s_median": images / statistics.median(wall)}
        if name != "plain":
            # CPU time leaves out the time the VM was not running this process (steal, other jobs).
            results[name]["ratio_to_plain"] = statistics.median(
                tp / t for (tp, _), t in zip(times["plain"], wall))
            results[name]["cpu_ratio_to_plain"] = statistics.median(
                cp / c for (_, cp), c in zip(times["plain"], cpu))
    out = {"benchmark": "curriculum_train_throughput", **environment(torch.device("cpu")),
           "settings": {"steps": args.steps, "rounds": args.rounds, "batch_size": args.batch_size, "classes": n,
                        "data": args.data or "random", "mbpa": vars(cfg.mbpa), "T": cfg.T[0], "gamma": cfg.gamma[0]},
           "results": results, "update_costs": costs}
    print(f"{'loop':<10} {'images/s':>10} {'ratio (plain time / time)':>26} {'ratio of CPU times':>19}")
    for name, r in results.items():
        ratio = f"{r['ratio_to_plain']:.3f}" if "ratio_to_plain" in r else "–"
        cpu = f"{r['cpu_ratio_to_plain']:.3f}" if "cpu_ratio_to_plain" in r else "–"
        print(f"{name:<10} {r['images_per_s_median']:>10.0f} {ratio:>26} {cpu:>19}")
    print(f"per call: Hebbian memorize {costs['hebbian_memorize_s'] * 1e3:.3f} ms "
          f"({costs['hebbian_memorize_share']:.2%} of a plain step), MbPA write {costs['mbpa_write_s'] * 1e3:.3f} ms "
          f"({costs['mbpa_write_share']:.2%})")
    write_result(args.out, out)


if __name__ == "__main__":
    main()
