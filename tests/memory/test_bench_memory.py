"""Smoke run of benchmarks/bench_memory.py at tiny sizes: it runs and writes sensible JSON.

Timings are never asserted; the benchmark runs in its own process with one thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_memory.py"


def test_bench_memory_quick(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"bench_memory.py failed:\n{proc.stdout}\n{proc.stderr}"
    res = json.loads(out.read_text())
    assert res["benchmark"] == "memory_eval" and res["threads"] == 1 and res["device"] == "cpu"
    assert res["results"]
    for row in res["results"]:
        for key in ("plain_tokens_per_s", "cache_tokens_per_s", "cache_over_plain"):
            assert row["cache_eval"][key] > 0, key
        assert row["cache_vs_loop"]["speedup"] > 0
        assert row["cache_vs_loop"]["max_abs_diff"] < 1e-3  # the loop and the cache agree
        for m in row["mbpa_vs_naive"]:
            assert m["speedup"] > 0 and m["max_abs_diff"] < 1e-3
        for key in ("plain_eval_bytes", "cache_log_prob_bytes", "mbpa_log_prob_bytes", "analytic_mbpa_bytes"):
            assert row["peak"][key] > 0, key
