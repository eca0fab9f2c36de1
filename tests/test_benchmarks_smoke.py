"""Smoke runs of the benchmarks at tiny sizes: they run, write JSON, report positive numbers.

Timings are never asserted (a shared CI machine makes them meaningless); each benchmark
runs in its own process with one thread so that it cannot disturb the test session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_bench(name: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), "--quick", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert out.is_file(), f"{name} wrote no {out}"
    return json.loads(out.read_text())


def test_bench_hebbian_quick(tmp_path):
    res = run_bench("bench_hebbian.py", tmp_path / "hebbian.json")
    assert res["torch"] and res["threads"] == 1
    assert res["results"]
    for row in res["results"]:
        for key in ("linear_step_s_median", "hebbian_step_s_median", "ratio_median", "extra_state_bytes"):
            assert row[key] > 0, key


def test_bench_lm_quick(tmp_path):
    res = run_bench("bench_lm.py", tmp_path / "lm.json")
    assert res["benchmark"] == "lm_train_throughput"
    assert res["torch"] and res["threads"] == 1 and res["device"] == "cpu"
    assert res["vocab_size"] > 0 and res["settings"]["data"] == "synthetic"
    fpt = res["flops_per_token"]
    assert fpt["train"] == 3 * fpt["forward"] == 3 * (fpt["lstm_forward"] + fpt["decoder_forward"])
    assert res["matmul_peak"]["flops_per_s"] > 0
    rounds = res["settings"]["rounds"]
    for name in ("fastbind_softmax", "plain", "fastbind_hebbian"):
        r = res["results"][name]
        assert len(r["tokens_per_s_rounds"]) == rounds
        for key in ("tokens_per_s_median", "achieved_flops_per_s", "fraction_of_peak"):
            assert r[key] > 0, (name, key)
        assert r["achieved_flops_per_s"] == pytest.approx(fpt["train"] * r["tokens_per_s_median"])
    for key in ("fastbind_over_plain", "hebbian_over_softmax"):
        assert res["ratios"][key] > 0, key


def test_bench_curriculum_quick(tmp_path):
    res = run_bench("bench_curriculum.py", tmp_path / "curriculum.json")
    assert res["benchmark"] == "curriculum_train_throughput" and res["threads"] == 1
    for name in ("plain", "softmax", "hebbian", "mbpa"):
        r = res["results"][name]
        assert r["images_per_s_median"] > 0 and len(r["seconds_rounds"]) == res["settings"]["rounds"]
        assert name == "plain" or (r["ratio_to_plain"] > 0 and r["cpu_ratio_to_plain"] > 0)
    costs = res["update_costs"]
    for key in ("hebbian_memorize_s", "mbpa_write_s", "plain_step_s", "hebbian_memorize_share"):
        assert costs[key] > 0, key


def test_bench_fwm_quick(tmp_path):
    res = run_bench("bench_fwm.py", tmp_path / "fwm.json")
    assert res["benchmark"] == "fwm_train_throughput" and res["threads"] == 1
    assert set(res["results"]) == {"lstm", "fwm", "fwm_step", "authors_loop"}
    for r in res["results"].values():
        assert r["tokens_per_s_median"] > 0 and len(r["step_s_rounds"]) == res["settings"]["rounds"]
    for key in ("fwm_vs_authors_loop", "fwm_vs_fwm_step", "fwm_step_vs_authors_loop", "fwm_vs_lstm"):
        assert res["ratios"][key] > 0, key


def test_bench_adaptive_quick(tmp_path):
    res = run_bench("bench_adaptive.py", tmp_path / "adaptive.json")
    assert res["benchmark"] == "adaptive_softmax_train_throughput" and res["settings"]["cutoffs"]
    (run,) = res["runs"]
    assert run["threads"] == 1
    assert set(run["results"]) == {"full", "full_hebbian", "adaptive", "adaptive_hebbian", "torch_adaptive"}
    for key, value in run["ratios"].items():
        assert value > 0, key


def test_bench_vocab_scale_quick(tmp_path):
    res = run_bench("bench_vocab_scale.py", tmp_path / "vocab.json")
    assert [r["softmax"] for r in res["results"]] == ["full", "adaptive"]
    for r in res["results"]:
        assert r["vocab_size"] > 1000 and r["steps"] == 3 and r["test_tokens"] > 0
        assert r["peak_rss_gib"] > 0 and r["test_ppl"] > 1
