"""Smoke runs of the benchmarks at tiny sizes: they run, and their correctness columns hold.

Timings are never asserted (a shared CI machine makes them meaningless). What a benchmark can
get wrong is asserted instead: its fast path against the reference it is compared with
(``max_abs_diff`` columns), variants doing the same work (equal tokens, equal test tokens).

``benchmarks/gpu_check.py --smoke`` runs six of the benchmarks, the CUDA tests (which skip
here) and a short ``lm-train`` of each head, LSTM and transformer, on the CPU: one subprocess
covers them, and its JSON is read by the tests below. The curriculum, vocabulary-scale,
continual and kNN-LM benchmarks run in-process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
STAGES = ["environment", "cuda_tests", "bench_hebbian", "bench_memory", "bench_lm", "bench_transformer", "bench_fwm",
          "bench_adaptive", "lm_train", "lm_train_transformer"]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts import their sibling ``_common``)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_under_test_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_threads():
    """The benchmarks set torch's thread count; the test session keeps its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """The JSON of one ``gpu_check.py --smoke`` run (a generous budget: CI machines are slow)."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--budget-s", "200",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.is_file(), f"gpu_check wrote no JSON:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert proc.returncode == 0, f"gpu_check failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return report


def stage(report: dict, name: str) -> dict:
    rec = report["stages"][name]
    assert rec["status"] == "passed", (name, rec.get("error") or rec.get("note") or rec.get("checks"))
    return rec["results"]


# ---------------------------------------------------------------- gpu_check.py itself


def test_gpu_check_smoke_report(smoke):
    assert smoke["check"] == "fastbind_gpu_check" and smoke["mode"] == "smoke" and smoke["device"] == "cpu"
    assert smoke["ok"] and smoke["complete"] and smoke["counts"]["passed"] == len(STAGES)
    assert list(smoke["stages"]) == STAGES
    env = smoke["environment"]
    assert env["torch"] == torch.__version__ and env["cuda_available"] == torch.cuda.is_available()
    assert set(env["packages"]) == {"numpy", "tqdm", "matplotlib", "pytest"}
    for name, rec in smoke["stages"].items():
        assert rec["status"] == "passed" and rec["seconds"] >= 0, name
        assert all(c["ok"] for c in rec.get("checks", {}).values()), (name, rec.get("checks"))
    assert smoke["seconds"] < smoke["budget_s"]


def test_gpu_check_runs_the_cuda_tests(smoke):
    res = stage(smoke, "cuda_tests")
    assert "-m cuda" in res["command"] and res["returncode"] == 0
    assert res["collected"] >= 10 and res["failed"] == res["errors"] == 0
    assert res["passed"] + res["skipped"] == res["collected"]
    if not torch.cuda.is_available():
        assert res["skipped"] == res["collected"]


def test_gpu_check_trains_each_head(smoke):
    res = stage(smoke, "lm_train")
    for head in ("softmax", "hebbian"):
        r = res[head]
        assert r["steps"] == 20 and r["steps_per_s_steady"] > 0
        assert 1 < r["final_val_ppl"] < r["vocab_size"]  # better than uniform after 20 steps


def test_gpu_check_trains_the_transformer(smoke):
    res = stage(smoke, "lm_train_transformer")
    assert "arch=transformer" in res["settings"]
    for head in ("softmax", "hebbian"):
        r = res[head]
        assert r["steps"] == 20 and r["steps_per_s_steady"] > 0 and math.isfinite(r["tokens_per_s_steady"])
        assert math.isfinite(r["final_train_ppl"]) and math.isfinite(r["final_val_ppl"])
    assert 1 < res["softmax"]["final_val_ppl"] < res["softmax"]["vocab_size"]  # better than uniform


def test_gpu_check_stages_time_out_and_skip(tmp_path):
    """A stage past its share is stopped (status timeout), later ones run or are skipped, and
    the JSON is still written."""
    gc = load_benchmark("gpu_check")
    plan = gc.Plan(device="cpu", smoke=True, data="synthetic", tmp=tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gc, "stage_environment", lambda plan: time.sleep(5))
        rec = gc.run_stage("environment", plan, 0.2)
    assert rec["status"] == "timeout" and rec["seconds"] < 2 and "StageTimeout" in rec["error"]
    out = tmp_path / "check.json"
    assert gc.main(["--smoke", "--budget-s", "1", "--stages", "bench_fwm", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["stages"]["bench_fwm"]["status"] == "skipped" and "budget" in report["stages"]["bench_fwm"]["note"]
    assert report["ok"] and not report["complete"]


# ---------------------------------------------------------------- the benchmarks' correctness columns


def test_bench_hebbian(smoke):
    res = stage(smoke, "bench_hebbian")
    assert res["benchmark"] == "hebbian_softmax_training_step" and res["threads"] == 1
    for row in res["results"]:
        assert row["memorize_max_abs_diff"] < 1e-5  # memorize against the per-class float64 loop
        assert row["memorize_only_batch_rows_changed"] and row["memorize_counts_exact"]
        assert row["extra_state_bytes"] == row["counts_bytes"] == 8 * row["V"]  # the counters only


def test_bench_lm(smoke):
    res = stage(smoke, "bench_lm")
    assert res["benchmark"] == "lm_train_throughput" and res["device"] == "cpu" and res["settings"]["data"] == "synthetic"
    fpt = res["flops_per_token"]
    assert fpt["train"] == 3 * fpt["forward"] == 3 * (fpt["lstm_forward"] + fpt["decoder_forward"])
    rounds, checks = res["settings"]["rounds"], res["checks"]
    assert checks["equal_tokens"]
    for name in ("fastbind_softmax", "plain", "fastbind_hebbian"):
        r = res["results"][name]
        assert r["tokens_rounds"] == [res["tokens_per_step"] * res["settings"]["steps"]] * rounds
        assert all(0 < loss < checks["log_vocab"] + 0.5 for loss in r["mean_loss_rounds"]), name
        assert r["achieved_flops_per_s"] == pytest.approx(fpt["train"] * r["tokens_per_s_median"])
    assert checks["log_vocab"] == pytest.approx(math.log(res["vocab_size"]))
    assert checks["mean_loss_gap_softmax_plain"] < 0.1  # same model shape, data and optimizer


def test_bench_transformer(smoke):
    res = stage(smoke, "bench_transformer")
    assert res["benchmark"] == "transformer_lm_train_throughput" and res["settings"]["data"] == "synthetic"
    fpt = res["flops_per_token"]
    # The formula against the module's own weights and torch's FLOP counter (math attention).
    assert fpt["check"]["matmul_params_counted"] == fpt["matmul_params"] == sum(fpt["matmul_params_by_part"].values())
    if fpt["check"]["counted_train"] is not None:
        assert fpt["check"]["counted_train"] == fpt["train"] and fpt["check"]["counted_forward"] == fpt["forward"]
    assert fpt["train"] == 3 * fpt["forward"] == 3 * (fpt["matmul_forward"] + fpt["attention_forward"])
    rounds, checks = res["settings"]["rounds"], res["checks"]
    assert checks["equal_tokens"] and checks["finite"] and checks["flops_formula_matches_count"]
    assert res["tokens_per_step"] == res["settings"]["batch"] * res["settings"]["context"]
    for name in ("fastbind_softmax", "plain", "fastbind_hebbian"):
        r = res["results"][name]
        assert r["tokens_rounds"] == [res["tokens_per_step"] * res["settings"]["steps"]] * rounds
        # The Hebbian rows memorize LayerNorm outputs (norm about sqrt(d)): at this size its first
        # steps' loss lies above log V, so it is only required to be finite.
        limit = math.inf if name == "fastbind_hebbian" else checks["log_vocab"] + 0.5
        assert all(0 < loss < limit for loss in r["mean_loss_rounds"]), name
        assert r["achieved_flops_per_s"] == pytest.approx(fpt["train"] * r["tokens_per_s_median"])
    assert checks["mean_loss_gap_softmax_plain"] < 0.1  # the same module, data and optimizer
    ratios = res["ratios"]
    assert ratios["hebbian_time_over_softmax"] == pytest.approx(
        res["results"]["fastbind_softmax"]["tokens_per_s_median"] / res["results"]["fastbind_hebbian"]["tokens_per_s_median"])


def test_bench_fwm(smoke):
    res = stage(smoke, "bench_fwm")
    assert set(res["results"]) == {"lstm", "fwm", "fwm_step", "authors_loop"}
    c = res["checks"]
    assert c["fwm_vs_fwm_step_logits_max_abs_diff"] < 1e-5 and c["fwm_vs_fwm_step_grad_max_abs_diff"] < 1e-5
    assert c["fwm_vs_authors_loop_logits_max_abs_diff"] < 1e-5  # an independent implementation, same weights
    assert c["logits_max_abs"] > 1e-3  # the logits are not trivially zero


def test_bench_adaptive(smoke):
    res = stage(smoke, "bench_adaptive")
    (run,) = res["runs"]
    assert set(run["results"]) == {"full", "full_hebbian", "adaptive", "adaptive_hebbian", "torch_adaptive"}
    assert res["settings"]["cutoffs"] == sorted(res["settings"]["cutoffs"])
    c = res["checks"]
    assert c["nll_vs_log_prob_max_abs_diff"] < 1e-5 and c["torch_module_max_abs_diff"] < 1e-5
    assert 0 < c["nll_mean"] < math.log(res["settings"]["vocab_size"]) + 1


def test_bench_memory_in_gpu_check(smoke):
    (row,) = stage(smoke, "bench_memory")["results"]
    assert row["cache_vs_loop"]["max_abs_diff"] < 1e-4
    assert all(m["max_abs_diff"] < 1e-4 for m in row["mbpa_vs_naive"])


# ---------------------------------------------------------------- the others, in-process


def test_bench_curriculum(tmp_path, restore_threads):
    out = tmp_path / "curriculum.json"
    load_benchmark("bench_curriculum").main(["--quick", "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["benchmark"] == "curriculum_train_throughput" and res["threads"] == 1
    assert set(res["results"]) == {"plain", "softmax", "hebbian", "mbpa"}
    for name, r in res["results"].items():
        assert len(r["seconds_rounds"]) == res["settings"]["rounds"]
        assert name == "plain" or r["ratio_to_plain"] > 0


def test_bench_vocab_scale_variants(tmp_path, restore_threads):
    """Both variants train on the same vocabulary and are scored on the same test tokens."""
    bench = load_benchmark("bench_vocab_scale")
    a = argparse.Namespace(quick=True, steps=3, hidden=16, head="softmax", threads=1)
    rows = [bench.one(softmax, a, tmp_path / softmax) for softmax in ("full", "adaptive")]
    assert rows[0]["vocab_size"] == rows[1]["vocab_size"] > 1000
    assert rows[0]["test_tokens"] == rows[1]["test_tokens"] > 0
    for r in rows:
        assert r["steps"] == 3 and 1 < r["test_ppl"] and math.isfinite(r["test_ppl"])


def test_bench_continual(tmp_path, restore_threads):
    out = tmp_path / "continual.json"
    load_benchmark("bench_continual").main(["--quick", "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert [(r["memory"], r["k"], r["steps"]) for r in res["rows"]] == [(200, 10, 1), (200, 10, 2)]
    assert all(r["plain_per_s"] > 0 and r["mbpa_per_s"] > 0 for r in res["rows"])
    assert res["target_10k_images_s"] is None  # the target configuration is not in a quick run


def test_bench_knnlm(tmp_path, restore_threads):
    """Both key dtypes are built and searched; the exact search agrees with brute force; with
    faiss installed the IVF index is built and its recall is a fraction."""
    out = tmp_path / "knnlm.json"
    load_benchmark("bench_knnlm").main(["--smoke", "--threads", "1", "--tmp", str(tmp_path / "stores"),
                                        "--out", str(out)])
    res = json.loads(out.read_text())
    s = res["settings"]
    assert res["benchmark"] == "knnlm_datastore" and res["threads"] == 1
    assert [r["dtype"] for r in res["results"]] == ["float16", "float32"]
    for r in res["results"]:
        b = r["build"]
        assert b["rows"] == s["keys"] and b["rows_per_s"] > 0
        header = b["keys_bytes"] - s["keys"] * s["dim"] * (2 if r["dtype"] == "float16" else 4)
        assert 0 < header <= 4096  # keys.npy holds the keys and a small header
        assert b["datastore_bytes"] > b["keys_bytes"] + 4 * s["keys"]  # int32 values and the meta too
        assert r["exact_check"]["recall_vs_bruteforce"] == 1.0 and r["exact_check"]["dist_max_rel_diff"] < 1e-4
        e = r["exact"]
        assert e["queries"] == s["queries"] and e["calls"] == math.ceil(s["queries"] / s["query_batch"])
        assert e["queries_per_s"] > 0
        m = r["memory"]
        assert m["rss_peak_increase"] >= 0 and m["datastore_bytes"] == b["datastore_bytes"]
    assert not any((tmp_path / "stores").iterdir())  # the datastores are removed
    f16 = res["results"][0]
    if res["faiss_available"]:
        f = f16["faiss"]
        assert f["kind"] == f"IVF{s['nlist']},Flat" and f["index_bytes"] > 0
        assert [n["nprobe"] for n in f["nprobe"]] == s["nprobe"]
        for n in f["nprobe"]:
            assert all(0 <= v <= 1 for v in n["recall"].values()) and n["queries_per_s"] > 0
        assert f["nprobe"][-1]["recall"][f"at_{s['k']}"] >= f["nprobe"][0]["recall"][f"at_{s['k']}"]
    else:
        assert f16["faiss"] is None


def test_bench_hf_smoke(tmp_path, restore_threads):
    """bench_hf: the three variants do the same work; the callback memorizes once per step."""
    pytest.importorskip("transformers")
    bench = load_benchmark("bench_hf")
    result = bench.main(["--smoke", "--out", str(tmp_path / "bench_hf.json")])
    assert result["equal_tokens"] and result["memorize_calls_per_round"] == [result["settings"]["steps"]]
    assert json.loads((tmp_path / "bench_hf.json").read_text())["callback_time_over_none"] > 0


def test_bench_metarl(tmp_path, restore_threads):
    """Both environments run the same random episodes' rules (their mean rewards are of one size),
    and every agent variant trains an episode."""
    out = tmp_path / "metarl.json"
    load_benchmark("bench_metarl").main(["--quick", "--threads", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    env = res["environment"]
    assert env["seconds_per_episode"]["batched"] > 0 and env["speedup"] > 0
    r = env["random_policy_reward"]
    assert r["batched"] > 0 and r["loop"] > 0 and abs(r["batched"] - r["loop"]) < 0.5 * max(r.values())
    assert set(res["agents"]) == {"lstm", "fwm", "fwm_dense_step"}
    assert all(a["episodes_per_s"] > 0 for a in res["agents"].values())


def test_fwm_clip_and_protocols_on_a_catbabi_run(tmp_path, restore_threads):
    from fastbind.cli import main as cli
    spec = importlib.util.spec_from_file_location("catbabi_tests", REPO / "tests" / "recipes" / "test_catbabi.py")
    babi_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(babi_tests)
    data = babi_tests.write_release(tmp_path / "babi")  # a small generated bAbI release
    run = tmp_path / "run"
    assert cli(["catbabi", f"out={run}", f"data={data}", "batch_size=4", "seg_len=24", "hidden=16", "emb_dim=16",
                "model.fwm_size=4", "progress=false", "threads=1", "max_steps=6", "eval_every=3"]) == 0
    res = load_benchmark("fwm_clip").main([str(run), "--chunk", "8", "--out", str(tmp_path / "clip.json")])
    assert res["sequences"] == 4 and res["steps_per_sequence"] % 24 == 0
    assert 0 <= res["steps_clip_binds"] <= res["sequence_blocks_clip_binds"] <= res["batch_blocks_clip_binds"] <= 1
    # the same run under both evaluation protocols: every question scored once in each
    prot = load_benchmark("catbabi_protocols").main([str(run), "--eval-batch", "6", "--out",
                                                     str(tmp_path / "prot.json")])
    rows = list(prot["rows"].values())
    assert len(rows) == 4 and rows[0]["answers"] == rows[1]["answers"] and rows[2]["answers"] == rows[3]["answers"]
    assert [r["batch"] for r in rows] == [4, 6, 4, 1] and rows[1]["from_train_state"]
