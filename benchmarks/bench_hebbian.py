"""Cost of Hebbian Softmax in a full training step, against a plain nn.Linear output layer.

One step = forward, cross-entropy, backward, RMSprop step, and (Hebbian only) memorize.
Both variants share the upstream layer, the batch and the Zipf-distributed targets; their
steps are interleaved (linear, hebbian, linear, hebbian, ...) and the ratio is the median of
the per-pair ratios, so drift of the machine affects both alike.

Usage::

    python benchmarks/bench_hebbian.py                       # the issue's grid, CPU
    python benchmarks/bench_hebbian.py --device cuda --reps 50
    python benchmarks/bench_hebbian.py --quick               # a few seconds, for smoke tests

Each row also checks one ``memorize`` against a per-class float64 loop of the update rule
(``memorize_max_abs_diff``, ``memorize_only_batch_rows_changed``, ``memorize_counts_exact``), so a
run on a new device says whether the layer computes the right thing there, not only how fast.

Writes JSON (default ``benchmarks/out/bench_hebbian.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastbind import HebbianSoftmax

from _common import environment, full_float32, max_abs_diff, sync, write_result  # benchmarks/_common.py


def zipf_targets(V: int, shape: tuple[int, ...], generator: torch.Generator, s: float = 1.0) -> torch.Tensor:
    """Targets with P(rank r) ∝ 1 / r^s over V classes (class id = rank − 1)."""
    p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** s
    return torch.multinomial(p / p.sum(), int(torch.Size(shape).numel()), replacement=True,
                             generator=generator).reshape(shape)


def make_step(head: nn.Module, upstream: nn.Module, opt: torch.optim.Optimizer, hebbian: bool):
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        h = upstream(x)  # (B, L, d), pre-dropout
        logits = head(F.dropout(h, 0.1))
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hebbian:
            head.memorize(h.detach(), y)

    return step


def state_bytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def memorize_transient_bytes(head: HebbianSoftmax, h: torch.Tensor, y: torch.Tensor) -> int:
    """Peak extra memory allocated while memorize runs (CUDA: allocator peak; CPU: profiler)."""
    if h.is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        head.memorize(h, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        head.memorize(h, y)
    # Walk allocation events in time order to find the peak of live bytes.
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


@full_float32()
def memorize_check(head: HebbianSoftmax, h: torch.Tensor, y: torch.Tensor) -> dict:
    """One ``memorize`` against the rule applied one class at a time in float64 on the CPU."""
    W0, c0 = head.weight.detach().clone(), head.counts.clone().cpu()  # .cpu() alone would alias on CPU
    head.memorize(h, y)
    W1 = head.weight.detach()
    hf, yf = h.reshape(-1, h.shape[-1]).double().cpu(), y.reshape(-1).cpu()
    classes = torch.unique(yf)
    rows = classes.to(W0.device)
    ref = W0.index_select(0, rows).double().cpu()
    for r, i in enumerate(classes.tolist()):  # the slow, obvious reference
        sel = yf == i
        n, c = int(sel.sum()), int(c0[i])
        lam = max(n / (c + n), head.gamma) if c < head.T else 0.0
        ref[r] = lam * hf[sel].mean(0) + (1 - lam) * ref[r]
    changed = (W1 != W0).any(1).nonzero()[:, 0].cpu()
    return {
        "memorize_max_abs_diff": max_abs_diff(W1.index_select(0, rows), ref),
        "memorize_only_batch_rows_changed": bool(torch.isin(changed, classes).all()),
        "memorize_counts_exact": torch.equal(head.counts.cpu() - c0, torch.bincount(yf, minlength=head.num_classes)),
    }


def bench_one(V: int, d: int, device: torch.device, reps: int, warmup: int, B: int, L: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    upstream = nn.Linear(d, d).to(device)
    linear = nn.Linear(d, V).to(device)
    hebb = HebbianSoftmax(d, V, gamma=0.25, T=500).to(device)
    with torch.no_grad():
        hebb.weight.copy_(linear.weight)
        hebb.bias.copy_(linear.bias)
    up_h = nn.Linear(d, d).to(device)
    up_h.load_state_dict(upstream.state_dict())
    steps = {
        "linear": make_step(linear, upstream, torch.optim.RMSprop(list(upstream.parameters()) + list(linear.parameters()), lr=1e-4), False),
        "hebbian": make_step(hebb, up_h, torch.optim.RMSprop(list(up_h.parameters()) + list(hebb.parameters()), lr=1e-4), True),
    }
    batches = [(torch.randn(B, L, d, generator=g).to(device), zipf_targets(V, (B, L), g).to(device))
               for _ in range(4)]
    times: dict[str, list[float]] = {"linear": [], "hebbian": []}
    for i in range(warmup + reps):
        x, y = batches[i % len(batches)]
        order = ("linear", "hebbian") if i % 2 == 0 else ("hebbian", "linear")
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            steps[name](x, y)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    ratios = [h / l for h, l in zip(times["hebbian"], times["linear"])]
    x, y = batches[0]
    transient = memorize_transient_bytes(hebb, up_h(x).detach(), y)
    classes_per_batch = statistics.median(int(torch.unique(b[1]).numel()) for b in batches)
    x, y = batches[1]
    check = memorize_check(hebb, up_h(x).detach(), y)
    return {
        "V": V, "d": d, "batch": [B, L], "device": str(device), "reps": reps,
        "classes_per_batch_median": classes_per_batch,
        "linear_step_s_median": statistics.median(times["linear"]),
        "hebbian_step_s_median": statistics.median(times["hebbian"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "extra_state_bytes": state_bytes(hebb) - state_bytes(linear),
        "counts_bytes": hebb.counts.numel() * hebb.counts.element_size(),
        "memorize_transient_peak_bytes": transient,
        **check,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, nargs="+", default=[33278, 267735])
    p.add_argument("--dim", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, nargs=2, default=[20, 35], metavar=("B", "L"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_hebbian.json")
    a = p.parse_args(argv)
    if a.quick:
        a.vocab, a.dim, a.reps, a.warmup = [500], [32], 3, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = []
    for V in a.vocab:
        for d in a.dim:
            r = bench_one(V, d, device, a.reps, a.warmup, a.batch[0], a.batch[1], a.seed)
            rows.append(r)
            print(f"V={V:>7} d={d:>5}  linear {r['linear_step_s_median']*1e3:9.2f} ms  "
                  f"hebbian {r['hebbian_step_s_median']*1e3:9.2f} ms  ratio {r['ratio_median']:.4f} "
                  f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]  extra state {r['extra_state_bytes']:,} B  "
                  f"memorize peak {r['memorize_transient_peak_bytes']:,} B  "
                  f"max|memorize - reference| {r['memorize_max_abs_diff']:.1e}", flush=True)
    result = {
        "benchmark": "hebbian_softmax_training_step", **environment(device),
        "results": rows,
    }
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
