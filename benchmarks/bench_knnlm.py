"""kNN-LM datastore: build time, exact and FAISS query throughput, recall and peak memory.

For each key dtype (``--dtypes``, float16 and float32 by default) a datastore of ``--keys`` rows
of dimension ``--dim`` is written into a temporary folder (``--tmp``) through
:meth:`fastbind.memory.knn_lm.KNNLM.build`, in chunks of ``--chunk`` rows, and then searched:

(a) ``build``: rows/s of the writer: opening it (files allocated at their final size), every
    ``add(h, y)`` and ``close()`` (flush and publish) are timed; making the keys is not. The
    datastore's size on disk is reported (``datastore_bytes``: keys, values and meta).
(b) ``exact``: queries/s of ``KNNLM.search(q, k)`` (every key compared, tiled over the memmap
    with a running top-k) on ``--queries`` queries in calls of ``--query-batch``, each call
    timed (median and total). Correctness: the first ``--check-queries`` queries against a
    brute-force search (squared distances in float64 over every key, then top-k): distances (relative
    difference) and recall of the indices.
(c) ``memory``: the resident set (RSS) during one search call of ``--query-batch`` queries on a
    freshly loaded datastore. On Linux the peak is exact: the high-water mark is reset just
    before the call (``/proc/self/clear_refs``) and read after it (``VmHWM``); elsewhere
    ``ru_maxrss`` gives only a lower bound (its peak covers the whole process). Reported: the
    peak increase over the RSS before the call, the increase of file-backed resident pages
    (``rss_file_increase``: the memory-mapped keys the call read, reclaimable page cache, not
    allocations) and their difference (``rss_anon_peak_estimate``: about the search's own
    working memory), beside the bound the search keeps to (``budget_bytes`` plus the outputs,
    ``B·k·20`` bytes).
(d) ``faiss`` (when ``import faiss`` works, on the ``--index-dtype`` datastore):
    ``KNNLM.build_index(nlist)`` time (k-means training, adding every key, writing the index),
    the index's size on disk, and for each ``--nprobe`` the queries/s of
    ``search(q, k, backend="faiss")`` (candidates from the index, distances recomputed exactly)
    and recall@k of its neighbours against the exact search on the first ``--recall-queries``
    queries (also at smaller cut-offs).

Keys (``--key-source``): ``clustered`` (default; a mixture of ``--clusters`` Gaussian centres
with unit-variance noise around each: structure an IVF index can use, as real hidden states
have), ``gaussian`` (i.i.d. N(0, 1): no structure, the worst case for IVF) or ``model`` (the
output-layer inputs ``h`` of a randomly initialised 2-block transformer LM over random token
ids, in windows of 128). Queries are fresh draws of the same kind; values are random token ids
below ``--vocab``. The keys are the same for every dtype.

The default size is WikiText-2's training split, 2,088,628 keys of d = 256 (1.0 GiB of float16
keys, 2.0 GiB float32, plus 2.0 GiB for an IVF-Flat index): about 5 GiB of disk in ``--tmp`` at
a time and as much page cache.

Usage::

    python benchmarks/bench_knnlm.py                                  # 2,088,628 keys, d = 256, k = 1024
    python benchmarks/bench_knnlm.py --keys 500000 --dtypes float16 --threads 2
    python benchmarks/bench_knnlm.py --key-source model --queries 512
    python benchmarks/bench_knnlm.py --smoke                          # a few seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_knnlm.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from fastbind.memory.knn import DEFAULT_BUDGET_BYTES, faiss_available
from fastbind.memory.knn_lm import KNNLM, recall_at_k
from fastbind.models.registry import ModelConfig
from fastbind.models.transformer_lm import TransformerConfig, TransformerLM

from _common import environment, sync, write_result  # benchmarks/_common.py

WIKITEXT2_TRAIN_KEYS = 2_088_628


# ---------------------------------------------------------------- keys and queries


class Keys:
    """Keys ``(n, d)`` float32 of one kind, drawn chunk by chunk from a seeded generator."""

    def __init__(self, a: argparse.Namespace, stream: int) -> None:
        self.a, self.d = a, a.dim
        self.g = torch.Generator().manual_seed(a.seed * 1000 + stream)
        if a.key_source == "clustered":
            centres_g = torch.Generator().manual_seed(a.seed)  # the same centres for keys and queries
            self.centres = torch.randn(a.clusters, a.dim, generator=centres_g) * a.spread
        elif a.key_source == "model":
            torch.manual_seed(a.seed)  # the same model for keys and queries
            self.context = 128
            self.model = TransformerLM(
                ModelConfig(vocab_size=a.vocab, arch="transformer", emb_dim=a.dim),
                TransformerConfig(blocks=2, heads=4, mlp_ratio=2, context=self.context)).eval()

    @torch.no_grad()
    def next(self, n: int) -> torch.Tensor:
        a = self.a
        if a.key_source == "gaussian":
            return torch.randn(n, self.d, generator=self.g)
        if a.key_source == "clustered":
            c = torch.randint(0, a.clusters, (n,), generator=self.g)
            return self.centres[c] + torch.randn(n, self.d, generator=self.g)
        rows = -(-n // self.context)
        x = torch.randint(0, a.vocab, (rows, self.context), generator=self.g)
        return self.model(x).hidden.reshape(-1, self.d)[:n].contiguous()


# ---------------------------------------------------------------- memory


def _status() -> dict[str, int]:
    """``/proc/self/status`` sizes in bytes (VmRSS, VmHWM, RssFile, ...); empty off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB elsewhere


def rss_during(fn) -> dict:
    """The resident set while ``fn()`` runs: its peak increase, exact where the high-water mark
    can be reset (Linux), else a lower bound from ``ru_maxrss``."""
    exact = False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        exact = "VmHWM" in _status()
    except OSError:
        pass
    before, maxrss_before = _status(), _maxrss_bytes()
    fn()
    after = _status()
    if exact:
        peak = after["VmHWM"] - before["VmRSS"]
        method = "VmHWM reset by /proc/self/clear_refs before the call"
    else:
        peak = max(0, _maxrss_bytes() - maxrss_before)
        method = "ru_maxrss increase (a lower bound: the process may have peaked higher before)"
    file_inc = after.get("RssFile", 0) - before.get("RssFile", 0) if before else None
    return {"rss_before": before.get("VmRSS"), "rss_peak_increase": peak, "rss_file_increase": file_inc,
            "rss_anon_peak_estimate": peak - file_inc if file_inc is not None else None, "method": method}


def folder_bytes(path: Path, names: tuple[str, ...] | None = None) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and (names is None or p.name in names))


# ---------------------------------------------------------------- the measurements


def build(path: Path, dtype: str, a: argparse.Namespace) -> dict:
    """Write the datastore; only the writer is timed (see the module docstring, (a))."""
    keys = Keys(a, stream=0)
    g = torch.Generator().manual_seed(a.seed + 1)
    t0 = time.perf_counter()
    writer = KNNLM.build(path, a.keys, a.dim, dtype, source={"benchmark": "bench_knnlm"}, overwrite=True)
    t_open = time.perf_counter() - t0
    t_add = 0.0
    for r0 in range(0, a.keys, a.chunk):
        n = min(a.chunk, a.keys - r0)
        h, y = keys.next(n), torch.randint(0, a.vocab, (n,), generator=g)
        t0 = time.perf_counter()
        writer.add(h, y)
        t_add += time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.close()
    t_close = time.perf_counter() - t0
    seconds = t_open + t_add + t_close
    size = folder_bytes(path)
    return {"rows": a.keys, "chunk": a.chunk, "seconds": seconds, "open_s": t_open, "add_s": t_add,
            "close_s": t_close, "rows_per_s": a.keys / seconds, "datastore_bytes": size,
            "keys_bytes": folder_bytes(path, ("keys.npy",)), "mb_per_s": size / seconds / 2**20}


def search_calls(store: KNNLM, queries: torch.Tensor, a: argparse.Namespace, device: torch.device,
                 **kwargs) -> tuple[list[float], torch.Tensor]:
    """Time ``search`` over the queries in calls of ``--query-batch``; returns the times and the indices."""
    times, idx = [], []
    for b0 in range(0, queries.shape[0], a.query_batch):
        q = queries[b0:b0 + a.query_batch]
        sync(device)
        t0 = time.perf_counter()
        _, _, i = store.search(q, a.k, budget_bytes=a.budget_bytes, return_index=True, **kwargs)
        sync(device)
        times.append(time.perf_counter() - t0)
        idx.append(i.cpu())
    return times, torch.cat(idx)


def throughput(times: list[float], n: int, a: argparse.Namespace) -> dict:
    return {"queries": n, "query_batch": a.query_batch, "k": a.k, "calls": len(times), "seconds": sum(times),
            "queries_per_s": n / sum(times), "call_s_median": statistics.median(times),
            "queries_per_s_median_call": min(a.query_batch, n) / statistics.median(times)}


@torch.no_grad()
def brute_force(store: KNNLM, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by ``‖q‖² − 2qᵀx + ‖x‖²`` in float64 over every key (a tile of keys at a time)."""
    q = q.double().cpu()
    d2 = torch.empty(q.shape[0], store.n, dtype=torch.float64)
    tile = max(1, (64 << 20) // (8 * store.d))
    for t0 in range(0, store.n, tile):
        x = torch.from_numpy(np.array(store.keys[t0:t0 + tile], dtype=np.float64))
        d2[:, t0:t0 + x.shape[0]] = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None]
    return torch.topk(d2, min(k, store.n), dim=1, largest=False, sorted=True)


def exact_check(store: KNNLM, q: torch.Tensor, a: argparse.Namespace) -> dict:
    dist, _, idx = store.search(q, a.k, budget_bytes=a.budget_bytes, return_index=True)
    ref_d, ref_i = brute_force(store, q, a.k)
    rel = ((dist.double().cpu() - ref_d).abs() / ref_d.clamp_min(1.0)).max()
    return {"queries": q.shape[0], "dist_max_rel_diff": float(rel), "recall_vs_bruteforce": recall_at_k(idx.cpu(), ref_i)}


def cutoffs(k: int) -> list[int]:
    return sorted({min(k, 16), min(k, 128), k})


def faiss_part(store: KNNLM, queries: torch.Tensor, exact_idx: torch.Tensor, a: argparse.Namespace,
               device: torch.device) -> dict:
    import faiss  # optional: faiss_part runs only when it imports

    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    store.build_index(a.nlist, train_size=a.train_size, seed=a.seed)
    t_build = time.perf_counter() - t0
    info = store.index_info or {}
    res = {"nlist": a.nlist, "kind": info.get("kind"), "train_size": info.get("train_size"),
           "build_s": t_build, "index_bytes": folder_bytes(store.path, ("faiss.index",)), "nprobe": []}
    nr = min(a.recall_queries, exact_idx.shape[0])
    for nprobe in a.nprobe:
        store.search(queries[:1], a.k, backend="faiss", nprobe=nprobe)  # warm-up (index pages)
        times, idx = search_calls(store, queries, a, device, backend="faiss", nprobe=nprobe)
        row = {"nprobe": nprobe, **throughput(times, queries.shape[0], a), "recall_queries": nr,
               "recall": {f"at_{c}": recall_at_k(idx[:nr], exact_idx[:nr], c) for c in cutoffs(idx.shape[1])}}
        res["nprobe"].append(row)
    return res


def bench_dtype(dtype: str, queries: torch.Tensor, root: Path, a: argparse.Namespace, device: torch.device) -> dict:
    path = root / f"datastore-{dtype}"
    row: dict = {"dtype": dtype, "n": a.keys, "d": a.dim}
    try:
        row["build"] = build(path, dtype, a)
        print(f"{dtype}: built {a.keys:,} rows in {row['build']['seconds']:.1f} s", flush=True)
        # (c) memory of one call on a freshly mapped datastore (nothing of it resident yet).
        store = KNNLM.load(path)
        q0 = queries[: a.query_batch]
        row["memory"] = {**rss_during(partial(store.search, q0, a.k, budget_bytes=a.budget_bytes)),
                         "query_batch": q0.shape[0], "k": a.k, "budget_bytes": a.budget_bytes,
                         "bound_bytes": a.budget_bytes + q0.shape[0] * min(a.k, a.keys) * 20,
                         "datastore_bytes": row["build"]["datastore_bytes"]}
        # (b) exact search: correctness on a few queries, then throughput.
        row["exact_check"] = exact_check(store, queries[: a.check_queries], a)
        times, exact_idx = search_calls(store, queries, a, device)
        row["exact"] = throughput(times, queries.shape[0], a)
        print(f"{dtype}: exact search {row['exact']['queries_per_s']:,.1f} queries/s at k={a.k}", flush=True)
        if dtype == a.index_dtype and not a.no_faiss:
            if faiss_available():
                row["faiss"] = faiss_part(store, queries, exact_idx, a, device)
                print(f"{dtype}: IVF{a.nlist} built in {row['faiss']['build_s']:.1f} s", flush=True)
            else:
                row["faiss"] = None
        del store
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return row


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=WIKITEXT2_TRAIN_KEYS, help="datastore rows N")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dtypes", nargs="+", choices=("float16", "float32"), default=["float16", "float32"])
    p.add_argument("--chunk", type=int, default=8192, help="rows per writer.add")
    p.add_argument("--key-source", choices=("clustered", "gaussian", "model"), default="clustered")
    p.add_argument("--clusters", type=int, default=4096, help="--key-source clustered: mixture components")
    p.add_argument("--spread", type=float, default=2.0, help="--key-source clustered: std of the centres")
    p.add_argument("--vocab", type=int, default=33278, help="values are token ids below this")
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--queries", type=int, default=1024, help="timed queries per search kind")
    p.add_argument("--query-batch", type=int, default=256, help="queries per search call")
    p.add_argument("--budget-bytes", type=int, default=DEFAULT_BUDGET_BYTES, help="search working memory")
    p.add_argument("--check-queries", type=int, default=4, help="exact search against brute force")
    p.add_argument("--index-dtype", choices=("float16", "float32"), default="float16",
                   help="the datastore the FAISS index is built over (default float16, else the first of --dtypes)")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--train-size", type=int, default=None, help="k-means training keys (default min(N, 256 nlist))")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    p.add_argument("--recall-queries", type=int, default=256)
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS index even when faiss is installed")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the datastores (default: the system's)")
    p.add_argument("--threads", type=int, default=0, help="torch (and faiss) CPU threads (0: the defaults)")
    p.add_argument("--device", default="cpu", help="where the queries (and the key tiles) are searched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", "--quick", dest="smoke", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_knnlm.json")
    a = p.parse_args(argv)
    if a.smoke:
        a.keys, a.dim, a.chunk, a.clusters, a.vocab, a.k = 3000, 16, 700, 32, 500, 64
        a.queries, a.query_batch, a.check_queries, a.nlist, a.recall_queries = 96, 32, 4, 16, 32
        a.nprobe = [2, 8]
        a.threads = a.threads or 1
    if a.keys < 1 or a.dim < 1 or a.chunk < 1 or a.k < 1 or a.queries < 1 or a.query_batch < 1:
        p.error("--keys, --dim, --chunk, --k, --queries and --query-batch must be >= 1")
    if a.index_dtype not in a.dtypes:
        a.index_dtype = a.dtypes[0]
    if a.key_source == "model" and a.dim % 8:
        p.error("--key-source model needs --dim divisible by 8 (4 heads of even width)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.threads = torch.get_num_threads()
    device = torch.device(a.device)
    queries = Keys(a, stream=1).next(a.queries).to(device)
    rows = []
    if a.tmp is not None:
        a.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_knnlm_", dir=a.tmp) as tmp:
        for dtype in a.dtypes:
            rows.append(bench_dtype(dtype, queries, Path(tmp), a, device))
    checks = {
        "exact_recall_vs_bruteforce_min": min(r["exact_check"]["recall_vs_bruteforce"] for r in rows),
        "exact_dist_max_rel_diff": max(r["exact_check"]["dist_max_rel_diff"] for r in rows),
        "finite": all(math.isfinite(r["exact"]["queries_per_s"]) and math.isfinite(r["build"]["rows_per_s"])
                      for r in rows),
    }
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "out"}
    result = {"benchmark": "knnlm_datastore", **environment(device), "argv": sys.argv[1:] if argv is None else list(argv),
              "settings": settings, "faiss_available": faiss_available(), "cpu_count": os.cpu_count(),
              "results": rows, "checks": checks}

    print(f"\nN={a.keys:,} d={a.dim} keys={a.key_source} k={a.k} queries={a.queries} (calls of {a.query_batch})  "
          f"threads={a.threads} device={device}")
    print(f"{'dtype':<8} {'build rows/s':>13} {'on disk':>10} {'exact q/s':>10} {'RSS peak +':>11} "
          f"{'of it file':>11} {'anon est.':>10} {'recall vs brute':>16}")
    mib = 2**20
    for r in rows:
        m = r["memory"]
        print(f"{r['dtype']:<8} {r['build']['rows_per_s']:>13,.0f} {r['build']['datastore_bytes'] / mib:>7,.0f} MiB "
              f"{r['exact']['queries_per_s']:>10,.1f} {m['rss_peak_increase'] / mib:>7,.0f} MiB "
              f"{(m['rss_file_increase'] or 0) / mib:>7,.0f} MiB {(m['rss_anon_peak_estimate'] or 0) / mib:>6,.0f} MiB "
              f"{r['exact_check']['recall_vs_bruteforce']:>16.4f}")
    for r in rows:
        f = r.get("faiss")
        if f is None and r["dtype"] == a.index_dtype:
            print("faiss: not installed, skipped" if not a.no_faiss else "faiss: skipped (--no-faiss)")
        if f:
            print(f"faiss {f['kind']} over the {r['dtype']} keys: built in {f['build_s']:.1f} s, "
                  f"{f['index_bytes'] / mib:,.0f} MiB on disk")
            for n in f["nprobe"]:
                print(f"  nprobe {n['nprobe']:>4}: {n['queries_per_s']:>10,.1f} queries/s   recall "
                      + ", ".join(f"@{c[3:]} {v:.3f}" for c, v in n["recall"].items()))
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
