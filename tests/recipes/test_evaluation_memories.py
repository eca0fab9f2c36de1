"""Evaluation-time memories: lm-eval with cache/MbPA variants and lm-sweep, on a tiny trained run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.evaluation import collect_stream
from fastbind.lm import load_lm_run
from fastbind.memory import MbPA, NeuralCache
from fastbind.runs import RunFolder

from test_lm_recipes import TINY  # noqa: E402  (tests/recipes is on sys.path under pytest's rootdir-less import)


CACHE_KEYS = {"size", "theta", "lambda"}
MBPA_KEYS = {"size", "k", "steps", "lr", "l2", "eps", "lambda", "stride"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("memories") / "run"
    assert cli(["lm-train", f"out={out}", *TINY, "max_steps=12", "eval_every=6", "head=hebbian", "T=5"]) == 0
    return out


def _bucket_check(v):
    used = [b for b in v["buckets"] if b["tokens"]]
    return math.exp(sum(b["tokens"] * math.log(b["ppl"]) for b in used) / v["tokens"])


def test_lm_eval_variants_match_direct_computation(run):
    args = ["lm-eval", str(run), "split=test", "progress=false", "max_tokens=600", "bptt=50", "cache.size=200",
            "cache.theta=0.5", "cache.lambda=0.2", "mbpa.lambda=0.1", "mbpa.k=16", "mbpa.size=300", "memory_chunk=64"]
    assert cli(args) == 0
    r = json.loads((run / "eval-test.json").read_text())
    assert set(r["variants"]) == {"model", "+cache", "+mbpa", "+cache+mbpa"}
    # Recompute by hand: model log-probs, a fresh cache and MbPA over the stream in one call each.
    _, model, corpus, _ = load_lm_run(run)
    H, Y, LP = collect_stream(model, corpus.test, bptt=17, device=torch.device("cpu"), max_tokens=600)
    lp_c = NeuralCache(size=200, theta=0.5).log_prob(H, Y)
    W, b = model.output_layer()
    lp_m = MbPA(size=300, k=16, steps=1, lr=0.3, l2=0.5, eps=1e-3).log_prob(H, Y, W.detach(), b.detach())
    p = LP.double().exp()
    direct = {
        "model": p,
        "+cache": 0.8 * p + 0.2 * lp_c.double().exp(),
        "+mbpa": 0.9 * p + 0.1 * lp_m.double().exp(),
        "+cache+mbpa": 0.7 * p + 0.2 * lp_c.double().exp() + 0.1 * lp_m.double().exp(),
    }
    # at the first target the cache holds nothing: it is left out and the rest renormalised
    direct["+cache"][0] = p[0]
    direct["+cache+mbpa"][0] = (0.7 * p[0] + 0.1 * lp_m[0].double().exp()) / 0.8
    for name, probs in direct.items():
        v = r["variants"][name]
        assert v["tokens"] == 600
        assert math.isclose(v["ppl"], math.exp(-probs.log().mean().item()), rel_tol=1e-4), name
        assert math.isclose(_bucket_check(v), v["ppl"], rel_tol=1e-9)
    assert r["variants"]["+cache"]["ppl"] != r["variants"]["model"]["ppl"]
    # The model variant equals the plain evaluation (batch 1, another chunk length).
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=600", "bptt=31"]) == 0
    plain = json.loads((run / "eval-test.json").read_text())
    assert math.isclose(plain["ppl"], r["variants"]["model"]["ppl"], rel_tol=1e-5)


def test_memories_need_one_stream(run, capsys):
    assert cli(["lm-eval", str(run), "batch_size=4", "cache.lambda=0.1", "progress=false"]) == 2
    assert "batch_size=1" in capsys.readouterr().err


def test_sweep_picks_the_grid_minimum_and_applies_it_to_test(run, capsys):
    args = ["lm-sweep", str(run), "progress=false", "max_tokens=400", "test_max_tokens=300", "thetas=[0.3,1.0]",
            "cache_lambdas=[0.1,0.3]", "sizes=[50,200]", "mbpa_lambdas=[0.05]", "ks=[8]", "steps=[1]"]
    assert cli(args) == 0
    s = json.loads((run / "sweep-valid.json").read_text())
    assert len(s["grid"]["cache"]) == 8 and len(s["grid"]["mbpa"]) == 2 and len(s["grid"]["mixture"]) == 8
    assert s["best_cache"]["ppl"] == min(r["ppl"] for r in s["grid"]["cache"])
    assert s["best_mixture"]["ppl"] == min(r["ppl"] for r in s["grid"]["mixture"])
    t = json.loads((run / "eval-test.json").read_text())
    assert t["tuned_on"] == "valid"
    assert t["variants"]["+cache"]["settings"]["cache"]["size"] == s["best_cache"]["cache"]["size"]
    assert t["variants"]["model"]["tokens"] == 300
    assert "+cache+MbPA" in capsys.readouterr().out
    assert (run / "sweep-valid.md").read_text().startswith("Sweep on valid")
    # MbPA (and so the mixture) at one of the cache sizes only; the cache grid is unchanged
    assert cli(args + ["mbpa_sizes=[200]", "tag=one", "apply_test=false"]) == 0
    one = json.loads((run / "sweep-valid-one.json").read_text())
    assert [r["mbpa"]["size"] for r in one["grid"]["mbpa"]] == [200]
    assert {r["cache"]["size"] for r in one["grid"]["mixture"]} == {200}
    assert len(one["grid"]["mixture"]) == 4 and one["grid"]["cache"] == s["grid"]["cache"]
    assert one["grid"]["mbpa"][0] == next(r for r in s["grid"]["mbpa"] if r["mbpa"]["size"] == 200)


def test_lm_eval_mbpa_stride_scores_a_sample(run):
    args = ["lm-eval", str(run), "split=test", "progress=false", "max_tokens=600", "cache.size=200",
            "cache.theta=0.5", "cache.lambda=0.2", "mbpa.lambda=0.1", "mbpa.k=16", "mbpa.size=300", "mbpa.stride=3",
            "memory_chunk=64"]
    assert cli(args) == 0
    r = json.loads((run / "eval-test.json").read_text())
    assert set(r["variants"]) == {"model", "+cache", "+mbpa", "+cache+mbpa", "model@sample", "+cache@sample"}
    _, model, corpus, _ = load_lm_run(run)
    H, Y, LP = collect_stream(model, corpus.test, bptt=100, device=torch.device("cpu"), max_tokens=600)
    lp_c = NeuralCache(size=200, theta=0.5).log_prob(H, Y)
    W, b = model.output_layer()
    lp_m = MbPA(size=300, k=16, steps=1, lr=0.3, l2=0.5, eps=1e-3).log_prob(H, Y, W.detach(), b.detach())
    p, pc, pm = (x.double().exp()[::3] for x in (LP, lp_c, lp_m))  # targets 0, 3, 6, ...
    direct = {"model@sample": p, "+cache@sample": 0.8 * p + 0.2 * pc, "+mbpa": 0.9 * p + 0.1 * pm,
              "+cache+mbpa": 0.7 * p + 0.2 * pc + 0.1 * pm}
    direct["+cache@sample"][0] = p[0]  # the empty cache at the first target is left out
    direct["+cache+mbpa"][0] = (0.7 * p[0] + 0.1 * pm[0]) / 0.8
    for name, probs in direct.items():
        v = r["variants"][name]
        assert v["tokens"] == 200, name
        assert math.isclose(v["ppl"], math.exp(-probs.log().mean().item()), rel_tol=1e-4), name
    assert r["variants"]["model"]["tokens"] == r["variants"]["+cache"]["tokens"] == 600


def test_sweep_mbpa_stride_tunes_mbpa_on_the_sample(run):
    args = ["lm-sweep", str(run), "progress=false", "max_tokens=400", "test_max_tokens=300", "thetas=[0.5]",
            "cache_lambdas=[0.2]", "sizes=[200]", "mbpa_lambdas=[0.05,0.1]", "ks=[8]", "steps=[1]",
            "mbpa_stride=4", "test_mbpa_stride=2", "tag=strided"]
    assert cli(args) == 0
    s = json.loads((run / "sweep-valid-strided.json").read_text())
    assert s["mbpa_stride"] == 4 and s["mbpa_tokens"] == 100
    _, model, corpus, _ = load_lm_run(run)
    H, Y, LP = collect_stream(model, corpus.valid, bptt=100, device=torch.device("cpu"), max_tokens=400)
    W, b = model.output_layer()
    lp_m = MbPA(size=200, k=8, steps=1, lr=0.3, l2=0.5, eps=1e-3).log_prob(H, Y, W.detach(), b.detach())
    p, pm = LP.double().exp()[::4], lp_m.double().exp()[::4]
    row = next(r for r in s["grid"]["mbpa"] if r["mbpa"]["lambda"] == 0.1)
    assert math.isclose(row["ppl"], math.exp(-(0.9 * p + 0.1 * pm).log().mean().item()), rel_tol=1e-4)
    assert math.isclose(s["model_ppl_mbpa_tokens"], math.exp(-p.log().mean().item()), rel_tol=1e-4)
    assert "every 4th target" in (run / "sweep-valid-strided.md").read_text()
    t = json.loads((run / "eval-test-strided.json").read_text())
    assert t["variants"]["+mbpa"]["tokens"] == t["variants"]["model@sample"]["tokens"] == 150
    assert t["variants"]["model"]["tokens"] == 300 and t["mbpa_stride"] == 2


@pytest.mark.parametrize("arg", ["mbpa_stride=0", "test_mbpa_stride=-1", "ks=[]", "tag=a/b", "mbpa_sizes=[7]"])
def test_sweep_bad_settings(run, arg, capsys):
    assert cli(["lm-sweep", str(run), "progress=false", arg]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and arg.split("=")[0] in err


def test_lm_eval_bad_stride(run, capsys):
    assert cli(["lm-eval", str(run), "progress=false", "mbpa.lambda=0.1", "mbpa.stride=0", "max_tokens=50"]) == 2
    assert "stride" in capsys.readouterr().err


def test_lm_eval_and_lm_sweep_write_one_eval_layout(run):
    """Plain lm-eval, lm-eval with memories and lm-sweep's test evaluation write the same record."""
    common = ["progress=false", "max_tokens=300"]
    commands = {
        "plain": (["lm-eval", str(run), "split=valid", *common], "valid", ""),
        "memories": (["lm-eval", str(run), "split=valid", *common, "cache.lambda=0.2", "cache.size=100",
                      "mbpa.lambda=0.1", "mbpa.k=8", "mbpa.stride=2"], "valid", ""),
        "sweep": (["lm-sweep", str(run), *common, "test_max_tokens=300", "thetas=[0.3]", "cache_lambdas=[0.2]",
                   "sizes=[100]", "mbpa_lambdas=[0.1]", "ks=[8]", "steps=[1]", "tag=layout"], "test", "layout"),
    }
    variants = {}
    for kind, (argv, split, tag) in commands.items():
        assert cli(argv) == 0, kind
        rec = json.loads((run / f"eval-{split}{'-' + tag if tag else ''}.json").read_text())
        assert RunFolder(run).read_eval(split, tag=tag) == rec, kind  # the one reader takes it as written
        assert list(rec)[:5] == ["ppl", "nll", "tokens", "buckets", "variants"], kind
        assert {"split", "checkpoint", "step", "edges", "head", "data"} <= set(rec), kind
        assert rec["split"] == split and rec["tokens"] == 300, kind
        model = rec["variants"]["model"]
        assert model == {**{k: rec[k] for k in ("ppl", "nll", "tokens", "buckets")}, "settings": None}, kind
        for name, v in rec["variants"].items():
            assert set(v) == {"ppl", "nll", "tokens", "buckets", "settings"}, (kind, name)
            assert (v["settings"] is None) == name.startswith("model"), (kind, name)
            memories = {"+cache": {"cache"}, "+mbpa": {"mbpa"}, "+cache+mbpa": {"cache", "mbpa"}}
            if v["settings"] is not None:  # one layout of the settings, whoever wrote them
                assert set(v["settings"]) == memories[name.split("@")[0]], (kind, name)
                assert set(v["settings"].get("cache", CACHE_KEYS)) == CACHE_KEYS, (kind, name)
                assert set(v["settings"].get("mbpa", MBPA_KEYS)) == MBPA_KEYS, (kind, name)
        variants[kind] = list(rec["variants"])
    grid = json.loads((run / "sweep-valid-layout.json").read_text())["grid"]
    for row in grid["cache"] + grid["mbpa"] + grid["mixture"]:  # the sweep's rows: the same layout, ppl beside
        assert set(row) - {"ppl", "tokens"} <= {"cache", "mbpa"} and isinstance(row["ppl"], float)
        assert isinstance(row["tokens"], int) and row["tokens"] > 0
        assert set(row.get("cache", CACHE_KEYS)) == CACHE_KEYS and set(row.get("mbpa", MBPA_KEYS)) == MBPA_KEYS
    assert variants == {"plain": ["model"],
                        "memories": ["model", "+cache", "+mbpa", "+cache+mbpa", "model@sample", "+cache@sample"],
                        "sweep": ["model", "+cache", "+mbpa", "+cache+mbpa"]}


def test_fwm_run_evaluates_with_cache_and_mbpa(tmp_path):
    """arch=fwm goes through lm-eval like the LSTM: the memories read its output vectors, and the
    fast weights carried across chunks make the result independent of the chunk length."""
    run = tmp_path / "fwm"
    assert cli(["lm-train", f"out={run}", *TINY, "max_steps=6", "eval_every=3", "arch=fwm", "model.fwm_size=4",
                "carry_state=true"]) == 0
    common = ["lm-eval", str(run), "split=test", "progress=false", "max_tokens=300"]
    assert cli([*common, "bptt=50", "cache.size=100", "cache.lambda=0.2", "mbpa.lambda=0.1", "mbpa.k=8",
                "mbpa.size=100"]) == 0
    r = json.loads((run / "eval-test.json").read_text())
    assert set(r["variants"]) == {"model", "+cache", "+mbpa", "+cache+mbpa"}
    assert r["variants"]["+cache"]["ppl"] != r["variants"]["model"]["ppl"]
    assert cli([*common, "bptt=13"]) == 0
    plain = json.loads((run / "eval-test.json").read_text())
    assert math.isclose(plain["ppl"], r["variants"]["model"]["ppl"], rel_tol=1e-5)


def test_lm_eval_with_a_sweeps_recorded_settings_gives_its_numbers(run):
    """The settings a record holds are the keys lm-eval takes: evaluating them again gives the
    sweep's test numbers exactly (one layout, one mixer)."""
    assert cli(["lm-sweep", str(run), "progress=false", "max_tokens=300", "test_max_tokens=300", "thetas=[0.3,0.5]",
                "cache_lambdas=[0.1,0.2]", "sizes=[100]", "mbpa_lambdas=[0.05,0.1]", "ks=[8]", "steps=[1]",
                "tag=again"]) == 0
    swept = json.loads((run / "eval-test-again.json").read_text())["variants"]["+cache+mbpa"]
    keys = [f"{memory}.{k}={v}" for memory, section in swept["settings"].items() for k, v in section.items()]
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=300", *keys]) == 0
    again = json.loads((run / "eval-test.json").read_text())["variants"]["+cache+mbpa"]
    assert again == swept
