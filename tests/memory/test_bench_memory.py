"""benchmarks/bench_memory.py at tiny sizes, in-process: the vectorized memories agree with the loops.

Timings are never asserted; what is asserted is what the benchmark compares: the vectorized
neural cache against its per-token loops and MbPA against the naive per-query loop.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_memory_quick(tmp_path):
    sys.path.insert(0, str(BENCH))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("bench_memory_under_test", BENCH / "bench_memory.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        threads = torch.get_num_threads()
        out = tmp_path / "memory.json"
        try:
            bench.main(["--quick", "--threads", "1", "--out", str(out)])
        finally:
            torch.set_num_threads(threads)
    finally:
        sys.path.remove(str(BENCH))
    res = json.loads(out.read_text())
    assert res["benchmark"] == "memory_eval" and res["device"] == "cpu"
    assert [row["d"] for row in res["results"]] == [32]
    for row in res["results"]:
        cl = row["cache_vs_loop"]
        assert cl["max_abs_diff"] < 1e-4  # the vectorized cache, the ring-buffer loop and the public-style loop agree
        assert cl["public_style_tokens"] == res["settings"]["public_tokens"]
        for m in row["mbpa_vs_naive"]:
            assert m["max_abs_diff"] < 1e-4 and m["naive_queries"] == res["settings"]["naive_queries"]
        size, d = res["settings"]["size"], row["d"]
        assert row["peak"]["analytic_cache_state_bytes"] == size * (d * 4 + 8)
        assert math.isfinite(row["cache_eval"]["cache_over_plain"])
