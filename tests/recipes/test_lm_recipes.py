"""Dry runs and equivalences of lm-train / lm-eval / demo on tiny settings."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.training.checkpoint import load_checkpoint

TINY = [
    "synthetic.train_tokens=20000", "synthetic.valid_tokens=2000", "synthetic.test_tokens=2000",
    "synthetic.background_vocab=1000", "synthetic.entity_pool=500", "synthetic.num_topics=5",
    "batch_size=4", "bptt=10", "hidden=16", "emb_dim=16", "progress=false", "eval_max_tokens=400",
]


def train(out: Path, *extra: str) -> int:
    return cli(["lm-train", f"out={out}", *TINY, *extra])


def test_dry_run_train_and_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "max_steps=20", "eval_every=10", "head=hebbian", "T=5", "gamma=0.2") == 0
    for name in ("config.json", "vocab.txt", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/ppl" in r] == [10, 20]
    for r in (r for r in rows if "val/ppl" in r):  # per bucket too; the buckets recombine to the overall
        ppl, tokens = r["val/bucket_ppl"], r["val/bucket_tokens"]
        assert list(ppl) == [">10K", "1K-10K", "100-1K", "<100"]
        nll = sum(tokens[b] * math.log(ppl[b]) for b in ppl if tokens[b])
        assert math.exp(nll / sum(tokens.values())) == pytest.approx(r["val/ppl"], rel=1e-9)
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == 20 and ck["config"]["model"]["head"] == "hebbian"
    assert int(ck["model"]["head.counts"].sum()) == 20 * 4 * 10  # every target counted
    vocab = (run / "vocab.txt").read_text().splitlines()
    assert len(vocab) == ck["vocab_size"]

    assert cli(["lm-eval", str(run), "split=test", "progress=false"]) == 0
    result = json.loads((run / "eval-test.json").read_text())
    assert "test perplexity" in capsys.readouterr().out
    used = [b for b in result["buckets"] if b["tokens"]]
    assert sum(b["tokens"] for b in result["buckets"]) == result["tokens"]
    recombined = math.exp(sum(b["tokens"] * math.log(b["ppl"]) for b in used) / result["tokens"])
    assert math.isclose(recombined, result["ppl"], rel_tol=1e-9)
    assert result["generator_entropy_nats"] > 0


@pytest.mark.parametrize("extra", [("head=softmax",), ("head=hebbian", "T=5", "carry_state=true"),
                                   ("arch=fwm", "model.fwm_size=4", "carry_state=true"),
                                   ("softmax=adaptive", "head=hebbian", "T=5"),
                                   ("arch=transformer", "transformer.heads=2", "transformer.context=16",
                                    "head=hebbian", "T=5")])
def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path, extra):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("max_steps=24", "eval_every=8", *extra)
    assert train(a, *common) == 0
    assert train(b, *common, "stop_after=11") == 0  # interrupted between checkpoints
    assert load_checkpoint(b / "last.pt")["step"] == 11
    assert train(b, *common) == 0  # resumes from step 11
    ka, kb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ka["step"] == kb["step"] == 24
    for k, v in ka["model"].items():
        assert torch.equal(v, kb["model"][k]), k
    assert ka["best_val_ppl"] == kb["best_val_ppl"]


def test_resume_refuses_different_model(tmp_path, capsys):
    run = tmp_path / "r"
    assert train(run, "max_steps=4", "eval_every=2") == 0
    before = (run / "last.pt").read_bytes()
    assert train(run, "max_steps=8", "hidden=32") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different 'lstm.hidden' (16, now 32)" in err[0]  # hidden is in the lstm section
    assert (run / "last.pt").read_bytes() == before


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    cases = [
        (["lm-train", f"out={tmp_path / 'x'}", "hiden=3"], "unknown key 'hiden'"),
        (["lm-train", f"out={tmp_path / 'x'}", f"data={tmp_path / 'nope'}"], "nope"),
        (["lm-eval", str(tmp_path / "missing")], "does not exist"),
        (["lm-eval"], "exactly one run folder"),
        (["lm-train", "positional"], "unexpected argument"),
    ]
    for argv, needle in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
    assert not (tmp_path / "x").exists()  # nothing written on a bad key or bad data


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path, capsys):
    run = tmp_path / "r"
    assert train(run, "max_steps=4", "eval_every=2") == 0
    (run / "last.pt").write_bytes(b"not a checkpoint")
    (run / "best.pt").write_bytes(b"\x80\x02garbage")
    assert train(run, "max_steps=8") == 2
    assert cli(["lm-eval", str(run), "progress=false"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all("last.pt" in e or "best.pt" in e for e in errs)
    assert (run / "last.pt").read_bytes() == b"not a checkpoint"


def test_damaged_checkpoint_is_named_in_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    assert train(run, "max_steps=2", "eval_every=2") == 0
    whole = (run / "best.pt").read_bytes()
    for damaged in (whole[: len(whole) // 2], os.urandom(4096)):  # cut short; random bytes
        (run / "best.pt").write_bytes(damaged)
        assert cli(["lm-eval", str(run), "progress=false"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(run / "best.pt") in err[0], err
        assert "damaged or not a fastbind checkpoint" in err[0] and "pickled" not in err[0], err


def _write_ptb(folder: Path, extra_word: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"the cat sat on the mat number {i % 7} {extra_word}".strip() for i in range(300)]
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_text("\n".join(lines[: 300 if split == "train" else 40]) + "\n")


def test_vocabulary_mismatch_is_refused(tmp_path, capsys):
    data = tmp_path / "ptb"
    _write_ptb(data)
    run = tmp_path / "run"
    assert cli(["lm-train", f"out={run}", f"data={data}", f"data_dir={tmp_path / 'cache'}", "max_steps=3",
                "eval_every=3", "batch_size=2", "bptt=5", "hidden=8", "emb_dim=8", "progress=false"]) == 0
    _write_ptb(data, extra_word="dog")  # the training file changes: a new word enters the vocabulary
    assert cli(["lm-eval", str(run), "progress=false"]) == 2
    assert "different vocabulary" in capsys.readouterr().err
    assert cli(["lm-train", f"out={run}", f"data={data}", f"data_dir={tmp_path / 'cache'}", "max_steps=6",
                "eval_every=3", "batch_size=2", "bptt=5", "hidden=8", "emb_dim=8", "progress=false"]) == 2
    assert "different vocabulary" in capsys.readouterr().err


def test_demo_dry_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", f"out={out}", "max_steps=6", "eval_every=3", *TINY]) == 0
    text = capsys.readouterr().out
    assert "| softmax |" in text and "| hebbian |" in text and "generator (entropy limit)" in text
    for row in ("softmax +cache", "softmax +mbpa", "hebbian +cache+mbpa", "hebbian (sample)", "sampled tokens (MbPA rows)"):
        assert f"| {row} |" in text, row
    assert "nats/token above the generator's entropy" in text and "Hebbian Softmax vs softmax, model alone" in text
    variants = json.loads((out / "hebbian" / "eval-test.json").read_text())["variants"]
    assert variants["+cache"]["settings"]["cache"]["size"] in (1000, 3000)
    assert variants["+mbpa"]["settings"]["mbpa"]["k"] == 64 and variants["+mbpa"]["settings"]["mbpa"]["size"] == 3000
    # the two heads trained side by side give what they give one after the other
    seq = tmp_path / "seq"
    assert cli(["demo", f"out={seq}", "max_steps=6", "eval_every=3", "parallel=false", *TINY]) == 0
    for head in ("softmax", "hebbian"):
        a, b = (json.loads((d / head / "eval-test.json").read_text())["variants"] for d in (out, seq))
        assert {k: v["ppl"] for k, v in a.items()} == pytest.approx({k: v["ppl"] for k, v in b.items()}, rel=1e-6)
    for name in ("validation.png", "buckets.png", "report.md"):
        assert (out / "report" / name).stat().st_size > 100
    assert (out / "softmax" / "eval-test.json").is_file() and (out / "hebbian" / "eval-test.json").is_file()
    assert cli(["demo", f"out={out}", "head=hebbian"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, nproc: int, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "fastbind", "lm-train", f"out={out}", *TINY, *extra]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("arch", [("arch=lstm", "lstm.dropout=0", "lstm.input_dropout=0"),
                                  ("arch=transformer", "transformer.dropout=0", "transformer.heads=2",
                                   "transformer.context=16")])
def test_two_ddp_ranks_stay_identical_and_match_one_process(tmp_path, arch):
    # No dropout, so two ranks of 2 rows each compute what one process of 4 rows does.
    common = ("max_steps=6", "eval_every=3", "head=hebbian", "T=3", "gamma=0.2", "threads=1", *arch)
    _torchrun(tmp_path / "ddp", 2, *common)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_identical"] is True
    assert train(tmp_path / "single", *common) == 0
    k2 = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    k1 = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    assert torch.equal(k2["head.counts"], k1["head.counts"])
    for k in k1:
        torch.testing.assert_close(k2[k].float(), k1[k].float(), rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", ["wikitext103-paper", "gutenberg-paper", "ptb-small"])
def test_presets_resolve_by_name(name):
    from fastbind.lm import LMTrainConfig
    from fastbind.training.config import parse_cli, presets

    assert name in presets()
    cfg, rest = parse_cli(["--config", name, "max_steps=7"], LMTrainConfig)
    assert rest == [] and cfg.max_steps == 7
    if name == "wikitext103-paper":
        assert (cfg.batch_size, cfg.bptt, cfg.lstm.hidden, cfg.model.T, cfg.model.gamma) == (512, 100, 2048, 500, 0.25)
        assert cfg.model.tied and cfg.optim.name == "rmsprop" and not cfg.carry_state


def test_unknown_preset_is_a_one_line_error(capsys):
    assert cli(["lm-train", "--config", "no-such-preset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-preset" in err[0] and "wikitext103-paper" in err[0]


@pytest.mark.parametrize("command", ["lm-train", "lm-eval", "lm-sweep", "demo", "report"])
def test_command_help_lists_settings(command, capsys):
    assert cli([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "settings" in out and ("max_steps" in out or "split" in out or "out" in out)


def test_help_shows_the_keys_users_type(capsys):
    assert cli(["lm-eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "cache.lambda: float = 0.0" in out and "mbpa.lambda: float = 0.0" in out and "cache.lam:" not in out
    assert cli(["lm-train", "--help"]) == 0
    out = capsys.readouterr().out
    assert 'model.head (or head): Literal[' in out and "optim.lr (or lr): float = 0.002" in out


@pytest.mark.parametrize("arg", ["head=softmax", "model.head=hebbian", " head =hebbian"])
def test_demo_refuses_a_head(tmp_path, arg, capsys):
    assert cli(["demo", f"out={tmp_path / 'd'}", arg]) == 2
    assert "drop head=/model.head=" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_auto_gamma_and_T_resolve_from_the_counts_and_still_resume(tmp_path):
    from fastbind.lm import LMTrainConfig, load_data
    from fastbind.training.config import parse_cli

    run = tmp_path / "auto"
    settings = ("head=hebbian", "gamma=auto", "T=auto", "max_steps=30", "eval_every=10")
    assert train(run, *settings, "stop_after=10") == 0
    cfg, _ = parse_cli([f"out={run}", *TINY, *settings], LMTrainConfig)
    counts = load_data(cfg).train_counts
    n_min = int(counts[counts > 0].min())
    epochs = 30 * 4 * 10 / len(load_data(cfg).train)
    saved = json.loads((run / "config.json").read_text())["model"]
    assert saved["gamma"] == 1 / n_min and saved["T"] == max(1, round(n_min * epochs))
    assert load_checkpoint(run / "last.pt")["config"]["model"]["T"] == saved["T"]
    assert train(run, *settings) == 0  # the same `auto` settings resume
    assert load_checkpoint(run / "last.pt")["step"] == 30
    assert train(run, *settings[:-2], "max_steps=3000", "eval_every=10") == 2  # another budget: another T


def test_patience_stops_after_evaluations_without_improvement_and_resumes_the_count(tmp_path):
    # lr=0.5 makes validation worse after the first evaluations
    common = ("max_steps=200", "eval_every=2", "patience=2", "lr=0.5")
    a = tmp_path / "a"
    assert train(a, *common) == 0
    vals = [json.loads(x)["val/ppl"] for x in (a / "metrics.jsonl").read_text().splitlines() if "val/ppl" in x]
    best = vals.index(min(vals))
    assert len(vals) == best + 3 and min(vals[best + 1:]) >= vals[best]  # two evaluations after the best
    summary = json.loads((a / "summary.json").read_text())
    assert summary["converged"] and summary["finished"] and summary["step"] == 2 * len(vals) < 200
    # interrupted at the first evaluation after the best, the resumed run stops at the same step
    b = tmp_path / "b"
    assert train(b, *common, f"stop_after={2 * (best + 2)}") == 0
    assert train(b, *common) == 0
    assert load_checkpoint(b / "last.pt")["step"] == summary["step"]
    assert train(b, *common) == 0  # already converged: nothing more
    assert load_checkpoint(b / "last.pt")["step"] == summary["step"]


def test_demo_summary_says_what_the_table_shows():
    from fastbind.recipes.demo import summary_lines

    def res(ppl, buckets, variants=None):
        r = {"ppl": ppl, "nll": math.log(ppl), "tokens": 10,
             "buckets": [{"name": n, "tokens": 5, "ppl": p} for n, p in zip((">10K", "<100"), buckets)]}
        if variants:
            r["variants"] = {"model": dict(r), **variants}
        return r

    soft = res(100.0, [10.0, 1000.0])
    hebb = res(110.0, [9.0, 1200.0], {"+cache": res(55.0, [8.0, 600.0])})
    lines = summary_lines({"softmax": soft, "hebbian": hebb}, {"nll": math.log(50.0), "ppl": 50.0, "buckets": []})
    assert "+10.0% test perplexity (by bucket: >10K -10.0%, <100 +20.0%) - at this budget it does not help overall" in lines[0]
    assert lines[1] == ("hebbian: memories against the model alone (MbPA rows on the same sampled targets): "
                        "+cache -50.0%; the cache changes the rarest bucket by -50%.")
    assert lines[2].startswith("softmax: 0.693 nats/token above the generator's entropy (50.0 ppl)")


def test_adaptive_softmax_resolves_cutoffs_and_refuses_mbpa(tmp_path, capsys):
    from fastbind.layers.hebbian_adaptive import default_cutoffs
    from fastbind.lm import load_lm_run

    run = tmp_path / "ad"
    assert train(run, "max_steps=4", "eval_every=2", "softmax=adaptive", "head=hebbian", "T=5") == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    _, model, corpus, _ = load_lm_run(run)
    assert cfg["softmax"] == "adaptive" and cfg["cutoffs"] == default_cutoffs(corpus.train_counts)
    assert model.is_adaptive and list(model.head.cutoffs[:-1]) == cfg["cutoffs"]
    explicit = tmp_path / "ad2"
    assert train(explicit, "max_steps=2", "eval_every=0", "softmax=adaptive", "cutoffs=[10,100]") == 0
    assert json.loads((explicit / "config.json").read_text())["model"]["cutoffs"] == [10, 100]
    capsys.readouterr()
    assert cli(["lm-eval", str(run), "batch_size=1", "max_tokens=200", "cache.lambda=0.1", "progress=false"]) == 0
    assert cli(["lm-eval", str(run), "batch_size=1", "max_tokens=200", "mbpa.lambda=0.1", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "softmax=adaptive" in err
    assert cli(["lm-sweep", str(run), "max_tokens=200", "sizes=[50]", "thetas=[0.3]", "cache_lambdas=[0.1]",
                "progress=false"]) == 2
    assert "mbpa=false" in capsys.readouterr().err
    assert cli(["lm-sweep", str(run), "max_tokens=200", "test_max_tokens=200", "sizes=[50]", "thetas=[0.3]",
                "cache_lambdas=[0.1]", "mbpa=false", "progress=false"]) == 0


def _recipe(run: Path) -> str:
    from fastbind.runs import RunFolder

    marker = json.loads((run / "run.json").read_text())
    assert set(marker) == {"recipe", "fastbind"}
    assert RunFolder(run).recipe() == marker["recipe"]
    return marker["recipe"]


def test_lm_train_and_demo_runs_name_their_recipe(tmp_path):
    assert train(tmp_path / "run", "max_steps=2", "eval_every=0") == 0
    assert _recipe(tmp_path / "run") == "lm-train"
    assert "recipe" not in json.loads((tmp_path / "run" / "config.json").read_text())  # settings only
    out = tmp_path / "demo"
    assert cli(["demo", f"out={out}", "max_steps=2", "eval_every=0", "memories=false", "parallel=false", *TINY]) == 0
    assert _recipe(out / "softmax") == "lm-train" and _recipe(out / "hebbian") == "lm-train"


@pytest.mark.parametrize("extra,fragment", [
    (("carry_state=true",), "carry_state=true needs a recurrent model"),
    (("bptt=20",), "bptt=20 is longer than the transformer's context (transformer.context=16)"),
    (("transformer.heads=3",), "3 heads do not divide the width 16"),
])
def test_transformer_settings_that_do_not_go_together(tmp_path, capsys, extra, fragment):
    out = tmp_path / "tf"
    assert train(out, "arch=transformer", "transformer.context=16", "transformer.heads=2", "max_steps=2",
                 *[e for e in extra if not e.startswith("transformer.heads")],
                 *[e for e in extra if e.startswith("transformer.heads")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err
    assert not (out / "last.pt").exists()


def test_transformer_trains_with_its_context_as_the_default_chunk(tmp_path):
    out = tmp_path / "tf"
    assert train(out, "arch=transformer", "transformer.context=12", "transformer.heads=2", "bptt=0",
                 "max_steps=3", "eval_every=3") == 0
    ck = load_checkpoint(out / "last.pt")
    assert ck["config"]["bptt"] == 12 and json.loads((out / "config.json").read_text())["bptt"] == 12
