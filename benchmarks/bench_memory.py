"""Cost of the evaluation-time memories (neural cache, MbPA) against plain evaluation and naive loops.

Four measurements in one run, for each hidden size ``d`` (vocabulary ``V``, memory ``size``
entries, already full when timing starts, so every call is in the steady state):

(a) ``cache_eval``: tokens/s of plain evaluation (``log_softmax(h Wᵀ + b)`` at the targets of
    a chunk of ``--chunk`` tokens) against cache evaluation (the same, plus
    ``NeuralCache.log_prob`` and ``mix_log_probs``). Interleaved; the reported ratio
    ``cache_over_plain`` = plain time / cache time (throughput ratio, target ≥ 0.7).
(b) ``cache_vs_loop``: ``NeuralCache.log_prob`` on a chunk against two per-token Python loops:
    ``loop``, a strong one (a ring buffer of the last ``size`` entries; per token one
    matrix-vector product, a log-sum-exp and the matching entries; no vocabulary-sized
    tensor), and ``public_style``, the per-token loop of the public AWD-LSTM ``pointer.py``
    (attention over the window times a one-hot ``(window, V)`` history, i.e. a full cache
    distribution per token), timed on ``--public-tokens`` tokens with its history built
    untimed, so its per-token time is a lower bound. Both are checked against the cache.
(c) ``mbpa_vs_naive``: ``MbPA.log_prob`` (K = ``--k`` neighbours, 1 step) on a chunk of
    ``--mbpa-chunk`` queries against a naive per-query loop in the style of public code:
    distances + topk, ``copy.deepcopy`` of an ``nn.Linear`` output layer, an SGD step through
    autograd on the kernel-weighted loss, then the query's log-probability. The naive loop
    runs on the first ``--naive-queries`` queries of the same chunk (it agrees with the
    vectorized result, reported as ``max_abs_diff``); its time per query is extrapolated.
(d) ``peak``: peak extra memory of one call of each: on CUDA ``torch.cuda.max_memory_allocated``
    above the memory in use before the call; on CPU the peak of live bytes from the torch
    profiler's memory events (tracemalloc does not see torch's allocator). Analytical sizes of
    the main temporaries are reported beside them, labelled ``analytic_*``.

Hidden states are Gaussian, labels Zipf-distributed. With random hidden states the nearest
neighbours of different queries hardly overlap, which is the worst case for MbPA's shared
first step (real hidden states overlap more).

Usage::

    python benchmarks/bench_memory.py                          # V = 33,278, d ∈ {256, 1024}, size 10k
    python benchmarks/bench_memory.py --dim 256 --mbpa-chunk 256
    python benchmarks/bench_memory.py --device cuda
    python benchmarks/bench_memory.py --quick                  # a few seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_memory.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastbind import MbPA, NeuralCache, mix_log_probs

from _common import environment, sync, write_result  # benchmarks/_common.py


def zipf_targets(V: int, n: int, generator: torch.Generator, s: float = 1.0) -> torch.Tensor:
    """Targets with P(rank r) ∝ 1 / r^s over V classes (class id = rank − 1)."""
    p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** s
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_bytes(fn, device: torch.device) -> int:
    """Peak extra bytes allocated while ``fn()`` runs (CUDA: allocator peak; CPU: profiler)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


class Stream:
    """Random hidden states and Zipf targets, chunk after chunk."""

    def __init__(self, V: int, d: int, device: torch.device, seed: int) -> None:
        self.V, self.d, self.device = V, d, device
        self.g = torch.Generator().manual_seed(seed)

    def chunk(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.randn(n, self.d, generator=self.g) / math.sqrt(self.d) * 3.0
        return h.to(self.device), zipf_targets(self.V, n, self.g).to(self.device)


def plain_eval(h, y, W, b):
    return F.linear(h, W, b).log_softmax(1).gather(1, y[:, None])[:, 0]


def cache_token_loop(keys, vals, count, size, theta, h, y):
    """Per-token neural cache over a ring buffer (``keys (size, d)``, ``vals (size,)``)."""
    out = []
    for t in range(h.shape[0]):
        n = min(count, size)
        s = (keys[:n] @ h[t]) * theta
        match = vals[:n] == y[t]
        out.append(torch.logsumexp(s[match], 0) - torch.logsumexp(s, 0) if bool(match.any())
                   else h.new_tensor(float("-inf")))
        slot = count % size
        keys[slot], vals[slot] = h[t], y[t]
        count += 1
    return torch.stack(out), count


def cache_public_style(hist_h, hist_onehot, start, size, theta, h, y):
    """Per token in the style of the public AWD-LSTM ``pointer.py``: attention over the window,
    then a vocabulary-sized cache distribution from a one-hot history ``(window, V)``.
    ``hist_*`` hold the stored entries followed by this chunk; entry ``start + t`` is query t's."""
    out = []
    for t in range(h.shape[0]):
        lo, hi = max(0, start + t - size), start + t
        attn = torch.softmax(theta * torch.mv(hist_h[lo:hi], h[t]), 0).view(-1, 1)
        p = (attn.expand_as(hist_onehot[lo:hi]) * hist_onehot[lo:hi]).sum(0)
        out.append(torch.log(p[y[t]]))
    return torch.stack(out)


def mbpa_naive(layer, keys, vals, count, size, h, y, k, lr, l2, eps):
    """Per query: nearest keys, a deep copy of the layer, one SGD step through autograd."""
    out = []
    for t in range(h.shape[0]):
        n = min(count, size)
        d2 = ((keys[:n] - h[t]) ** 2).sum(1)
        dist, idx = torch.topk(d2, min(k, n), largest=False)
        w = 1.0 / (eps + dist)
        w = w / w.sum()
        local = copy.deepcopy(layer)
        opt = torch.optim.SGD(local.parameters(), lr=lr)
        loss = (w * F.cross_entropy(local(keys[idx]), vals[idx], reduction="none")).sum()
        loss = loss + l2 * sum(((p - p0.detach()) ** 2).sum() for p, p0 in zip(local.parameters(), layer.parameters()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            out.append(local(h[t]).log_softmax(-1)[y[t]])
        slot = count % size
        keys[slot], vals[slot] = h[t], y[t]
        count += 1
    return torch.stack(out).detach(), count


def bench_dim(V: int, d: int, a: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(a.seed)
    stream = Stream(V, d, device, a.seed + d)
    layer = nn.Linear(d, V).to(device)
    W, b = layer.weight.detach(), layer.bias.detach()
    isz = W.element_size()
    row: dict = {"V": V, "d": d, "size": a.size, "device": str(device)}

    # (a) plain evaluation vs evaluation with the cache, interleaved.
    cache = NeuralCache(a.size, a.theta)
    cache.write(*stream.chunk(a.size))
    chunks = [stream.chunk(a.chunk) for _ in range(4)]

    def run_plain(h, y):
        return plain_eval(h, y, W, b)

    def run_cache(h, y):
        return mix_log_probs(plain_eval(h, y, W, b), (a.lam, cache.log_prob(h, y)))

    tp, tc = [], []
    for i in range(a.warmup + a.reps):
        h, y = chunks[i % len(chunks)]
        order = (("p", run_plain), ("c", run_cache)) if i % 2 == 0 else (("c", run_cache), ("p", run_plain))
        for name, fn in order:
            dt = timed(lambda: fn(h, y), device)
            if i >= a.warmup:
                (tp if name == "p" else tc).append(dt)
    pairs = [p / c for p, c in zip(tp, tc)]
    row["cache_eval"] = {
        "chunk": a.chunk, "reps": a.reps,
        "plain_s_median": statistics.median(tp), "cache_s_median": statistics.median(tc),
        "plain_tokens_per_s": a.chunk / statistics.median(tp), "cache_tokens_per_s": a.chunk / statistics.median(tc),
        "cache_over_plain": statistics.median(tp) / statistics.median(tc),
        "cache_over_plain_pairs_median": statistics.median(pairs),
    }

    # (b) vectorized cache vs the per-token loop on the same memory and chunks.
    mem_h, mem_y = stream.chunk(a.size)
    vec = NeuralCache(a.size, a.theta)
    vec.write(mem_h, mem_y)
    keys, vals, count = mem_h.clone(), mem_y.clone(), a.size
    tv, tl, diff = [], [], 0.0
    for i in range(a.loop_reps):
        h, y = stream.chunk(a.chunk)
        res = {}
        tv.append(timed(lambda: res.__setitem__("v", vec.log_prob(h, y)), device))
        t0 = time.perf_counter()
        lp_loop, count = cache_token_loop(keys, vals, count, a.size, a.theta, h, y)
        sync(device)
        tl.append(time.perf_counter() - t0)
        fin = torch.isfinite(lp_loop)
        if fin.any():
            diff = max(diff, float((res["v"][fin] - lp_loop[fin]).abs().max()))
        assert torch.equal(torch.isfinite(res["v"]), fin), "vectorized cache and loop disagree on -inf"
    # The public-style loop on the first tokens of one more chunk (its history is built untimed).
    h, y = stream.chunk(a.chunk)
    n_pub = min(a.public_tokens, a.chunk)
    slots = (torch.arange(count - a.size, count) % a.size).to(device)
    hist_h = torch.cat([keys[slots], h])
    hist_onehot = F.one_hot(torch.cat([vals[slots], y]), V).to(h.dtype)  # (size + L, V)
    lp_vec = vec.log_prob(h, y)
    t0 = time.perf_counter()
    lp_pub = cache_public_style(hist_h, hist_onehot, a.size, a.size, a.theta, h[:n_pub], y[:n_pub])
    sync(device)
    t_pub = (time.perf_counter() - t0) / n_pub
    fin = torch.isfinite(lp_pub)
    if fin.any():
        diff = max(diff, float((lp_vec[:n_pub][fin] - lp_pub[fin]).abs().max()))
    del hist_onehot
    row["cache_vs_loop"] = {
        "chunk": a.chunk, "reps": a.loop_reps,
        "vectorized_s_per_token": statistics.median(tv) / a.chunk, "loop_s_per_token": statistics.median(tl) / a.chunk,
        "speedup": statistics.median(tl) / statistics.median(tv), "max_abs_diff": diff,
        "public_style_tokens": n_pub, "public_style_s_per_token": t_pub,
        "public_style_speedup": t_pub / (statistics.median(tv) / a.chunk),
    }

    # (c) MbPA, 1 step, vs the naive per-query loop on the first queries of the same chunk.
    # Every chunk length starts from the same full memory and the same queries.
    mem_h, mem_y = stream.chunk(a.size)
    mbpa = MbPA(a.size, k=a.k, steps=1, lr=a.lr, l2=a.l2, eps=a.eps)
    mbpa.write(mem_h, mem_y)
    warm_h, warm_y = stream.chunk(2)
    mbpa.log_prob(warm_h, warm_y, W, b)  # warm-up (allocator, kernels)
    mbpa_naive(layer, mem_h.clone(), mem_y.clone(), a.size, a.size, warm_h[:1], warm_y[:1],
               a.k, a.lr, a.l2, a.eps)  # warm-up (autograd, optimizer)
    hq, yq = stream.chunk(max(a.mbpa_chunk))
    nq = min(a.naive_queries, *a.mbpa_chunk)
    t0 = time.perf_counter()
    lp_naive, _ = mbpa_naive(layer, mem_h.clone(), mem_y.clone(), a.size, a.size, hq[:nq], yq[:nq],
                             a.k, a.lr, a.l2, a.eps)
    sync(device)
    naive_per_query = (time.perf_counter() - t0) / nq
    row["mbpa_vs_naive"] = []
    for Lm in a.mbpa_chunk:
        mbpa.reset()
        mbpa.write(mem_h, mem_y)
        # Entries written without a layer get their base distributions at the next scoring
        # call; an empty call builds them here, so the timed call is the steady state of a
        # stream (where each chunk's distributions come free with its own base logits).
        t_table = timed(lambda: mbpa.log_prob(hq[:0], yq[:0], W, b), device)
        res = {}
        t_vec = timed(lambda: res.__setitem__("v", mbpa.log_prob(hq[:Lm], yq[:Lm], W, b)), device)
        row["mbpa_vs_naive"].append({
            "chunk": Lm, "k": a.k, "steps": 1, "naive_queries": nq, "base_table_build_s": t_table,
            "vectorized_s_per_query": t_vec / Lm, "naive_s_per_query": naive_per_query,
            "speedup": naive_per_query / (t_vec / Lm),
            "max_abs_diff": float((res["v"][:nq] - lp_naive).abs().max()),
        })

    # (d) peak extra memory of one call of each (the memories are full, as above).
    h, y = stream.chunk(a.chunk)
    hm, ym = hq[:min(a.mbpa_chunk)], yq[:min(a.mbpa_chunk)]
    L, S, Lm = a.chunk, a.size + a.chunk, hm.shape[0]
    kk = min(a.k, a.size)
    row["peak"] = {
        "plain_eval_bytes": peak_bytes(lambda: plain_eval(h, y, W, b), device),
        "cache_log_prob_bytes": peak_bytes(lambda: cache.log_prob(h, y), device),
        "mbpa_log_prob_bytes": peak_bytes(lambda: mbpa.log_prob(hm, ym, W, b), device),
        "mbpa_naive_per_query_bytes": peak_bytes(
            lambda: mbpa_naive(layer, mem_h.clone(), mem_y.clone(), a.size, a.size, hm[:1], ym[:1],
                               a.k, a.lr, a.l2, a.eps), device),
        "mbpa_chunk": Lm,
        "analytic_plain_logits_bytes": L * V * isz,
        "analytic_cache_scores_bytes": L * S * isz,
        "analytic_cache_state_bytes": a.size * (d * isz + 8),
        # MbPA's persistent state: keys and labels, plus (one step, within base_cache_bytes)
        # the stored entries' base distributions.
        "mbpa_state_bytes": a.size * (d * isz + 8) + (mbpa._probs.numel() * isz if mbpa._probs is not None else 0),
        # MbPA, one block of Lm queries: base logits + step (2·Lm·V), distances + coefficients
        # (2·Lm·S), one block of neighbour softmaxes (at most half of the 256 MB budget).
        "analytic_mbpa_bytes": (2 * Lm * V + 2 * Lm * (a.size + Lm)) * isz
        + min(a.size + Lm, Lm * kk, max(1, (128 << 20) // (V * isz))) * V * isz,
        # Naive: neighbour logits, their softmax and its gradient (3·K·V) + the layer copy and its grad (2·V·d).
        "analytic_naive_bytes": (3 * kk * V + 2 * V * (d + 1)) * isz,
    }
    return row


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def tables(rows: list[dict]) -> str:
    cache = []
    for r in rows:
        ce, cl = r["cache_eval"], r["cache_vs_loop"]
        cache.append([str(r["d"]), f"{ce['plain_tokens_per_s']:,.0f}", f"{ce['cache_tokens_per_s']:,.0f}",
                      f"{ce['cache_over_plain']:.3f}", f"{cl['vectorized_s_per_token'] * 1e6:,.1f}",
                      f"{cl['loop_s_per_token'] * 1e6:,.1f}", f"{cl['speedup']:.1f}x",
                      f"{cl['public_style_s_per_token'] * 1e6:,.0f}", f"{cl['public_style_speedup']:,.0f}x",
                      f"{cl['max_abs_diff']:.1e}"])
    mbpa = [[str(r["d"]), str(m["chunk"]), str(m["k"]), f"{m['vectorized_s_per_query'] * 1e3:,.1f}",
             f"{m['naive_s_per_query'] * 1e3:,.1f}", f"{m['speedup']:.1f}x", f"{m['max_abs_diff']:.1e}"]
            for r in rows for m in r["mbpa_vs_naive"]]
    peak = [[str(r["d"]), *(fmt_bytes(r["peak"][k]) for k in (
        "plain_eval_bytes", "cache_log_prob_bytes", "mbpa_log_prob_bytes", "mbpa_naive_per_query_bytes",
        "analytic_plain_logits_bytes", "analytic_cache_scores_bytes", "analytic_cache_state_bytes",
        "analytic_mbpa_bytes", "analytic_naive_bytes"))] for r in rows]
    return "\n\n".join([
        _table("(a) evaluation throughput and (b) cache vs per-token loop",
               ["d", "plain tok/s", "cache tok/s", "(a) ratio", "cache us/tok", "loop us/tok", "(b) speedup",
                "public us/tok", "(b) public", "max|diff|"],
               cache),
        _table("(c) MbPA (1 step) vs naive per-query loop",
               ["d", "chunk", "k", "MbPA ms/query", "naive ms/query", "speedup", "max|diff|"], mbpa),
        _table("(d) peak extra memory of one call (measured), and analytic sizes of the main tensors",
               ["d", "plain", "cache", f"MbPA L={rows[0]['peak']['mbpa_chunk']}", "naive query",
                "an. logits", "an. cache scores", "an. cache state", "an. MbPA", "an. naive"], peak),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, default=33278)
    p.add_argument("--dim", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--size", type=int, default=10000, help="memory size (cache and MbPA)")
    p.add_argument("--chunk", type=int, default=100, help="tokens per call for (a), (b), (d)")
    p.add_argument("--mbpa-chunk", type=int, nargs="+", default=[100, 256],
                   help="queries per MbPA call for (c), one row each (results do not depend on it)")
    p.add_argument("--theta", type=float, default=0.3)
    p.add_argument("--lam", type=float, default=0.1, help="cache weight in the mixture")
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--l2", type=float, default=0.5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--reps", type=int, default=11, help="timed repetitions of (a)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loop-reps", type=int, default=3, help="chunks timed for (b)")
    p.add_argument("--public-tokens", type=int, default=3, help="tokens of the public-style cache loop for (b)")
    p.add_argument("--naive-queries", type=int, default=3, help="queries of the naive MbPA loop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_memory.json")
    a = p.parse_args(argv)
    if a.quick:
        a.vocab, a.dim, a.size, a.chunk, a.mbpa_chunk, a.k = 500, [32], 300, 20, [20], 16
        a.reps, a.warmup, a.loop_reps, a.naive_queries, a.public_tokens = 3, 1, 2, 2, 2
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = []
    print(f"V={a.vocab:,} size={a.size:,} chunk={a.chunk} mbpa_chunk={a.mbpa_chunk} k={a.k} "
          f"threads={torch.get_num_threads()} device={device}", flush=True)
    for d in a.dim:
        r = bench_dim(a.vocab, d, a, device)
        rows.append(r)
        print(f"d={d} done", flush=True)
    result = {
        "benchmark": "memory_eval", **environment(device),
        "settings": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(a).items() if k != "out"},
        "results": rows,
    }
    print(tables(rows))
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
