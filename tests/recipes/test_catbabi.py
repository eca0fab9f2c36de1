"""Dry runs and equivalences of ``fastbind catbabi`` on a small generated bAbI release."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.data.babi import IGNORE_INDEX, CatbAbIStream, load_babi
from fastbind.models.lstm_lm import LSTMLM
from fastbind.models.registry import FAMILIES, Family
from fastbind.training.checkpoint import load_checkpoint, save_checkpoint

PEOPLE = ["mary", "john", "sandra", "daniel"]
PLACES = ["garden", "kitchen", "office", "hallway", "bathroom"]
THINGS = ["apple", "milk", "football"]


def _qa1(rng: random.Random, stories: int) -> str:
    lines = []
    for _ in range(stories):
        n, where = 0, {}
        for _ in range(rng.randint(1, 3)):
            p, place = rng.choice(PEOPLE), rng.choice(PLACES)
            where[p] = place
            n += 1
            lines.append(f"{n} {p.capitalize()} went to the {place}.")
            n += 1
            ask = rng.choice(sorted(where))
            lines.append(f"{n} Where is {ask.capitalize()}? \t{where[ask]}\t{n - 1}")
    return "\n".join(lines) + "\n"


def _qa8(rng: random.Random, stories: int) -> str:
    lines = []
    for _ in range(stories):
        p, got = rng.choice(PEOPLE), rng.sample(THINGS, rng.randint(1, 2))
        for i, thing in enumerate(got, 1):
            lines.append(f"{i} {p.capitalize()} got the {thing} there.")
        lines.append(f"{len(got) + 1} What is {p.capitalize()} carrying? \t{','.join(got)}\t1")
    return "\n".join(lines) + "\n"


def write_release(root: Path, seed: int = 0) -> Path:
    """Two tasks; qa8 has only a 1k training file (as qa3 in the real release)."""
    rng = random.Random(seed)
    base = root / "tasks_1-20_v1-2"
    (base / "en-10k").mkdir(parents=True)
    (base / "en").mkdir()
    (base / "en-10k" / "qa1_single-supporting-fact_train.txt").write_text(_qa1(rng, 60))
    (base / "en-10k" / "qa1_single-supporting-fact_test.txt").write_text(_qa1(rng, 12))
    (base / "en" / "qa8_lists-sets_train.txt").write_text(_qa8(rng, 40))
    (base / "en" / "qa8_lists-sets_test.txt").write_text(_qa8(rng, 10))
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("babi"))


TINY = ["batch_size=4", "seg_len=24", "hidden=16", "emb_dim=16", "model.fwm_size=4", "progress=false",
        "threads=1", "log_every=5"]


def catbabi(out: Path, release: Path, *extra: str) -> int:
    return cli(["catbabi", f"out={out}", f"data={release}", *TINY, *extra])


@pytest.mark.parametrize("arch", ["fwm", "lstm"])
@pytest.mark.parametrize("mode", ["qa", "lm"])
def test_dry_run_trains_validates_and_tests(tmp_path, release, arch, mode, capsys):
    run = tmp_path / "run"
    assert catbabi(run, release, f"arch={arch}", f"mode={mode}", "max_steps=20", "eval_every=10") == 0
    printed = capsys.readouterr().out
    assert "qa8: no 10k training file" in printed  # the fallback is said, even without progress bars
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/acc" in r] == [10, 20]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert ("train/fwm_norm" in train_rows[0]) == (arch == "fwm")
    res = json.loads((run / "results.json").read_text())
    assert res["arch"] == arch and res["mode"] == mode
    assert sorted(res["per_task"]) == ["qa1", "qa8"]
    assert res["mean"] == pytest.approx(sum(res["per_task"].values()) / 2)
    qa1 = (release / "tasks_1-20_v1-2/en-10k/qa1_single-supporting-fact_test.txt").read_text().count("\t") // 2
    qa8 = (release / "tasks_1-20_v1-2/en/qa8_lists-sets_test.txt").read_text().count("\t") // 2
    assert res["answers"] == qa1 + qa8  # every test question scored exactly once
    md = (run / "results.md").read_text()
    assert "| qa8 |" in md and "**mean**" in md
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == 20 and (len(ck["state"]) == 3) == (arch == "fwm")
    assert ck["config"]["fwm"]["residual"] is False  # the authors' catbAbI model reads from the memory alone


@pytest.mark.parametrize("mode", ["qa", "lm"])
def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path, release, mode):
    a, b = tmp_path / "a", tmp_path / "b"
    # The first slice ends on a validation step: a slice's last step is always validated, so
    # ending it elsewhere adds a validation (and perhaps a best checkpoint) the uninterrupted run lacks.
    common = ("arch=fwm", f"mode={mode}", "eval_every=3")
    assert catbabi(a, release, *common, "max_steps=14") == 0
    assert catbabi(b, release, *common, "max_steps=9") == 0  # a first slice, then the rest
    assert catbabi(b, release, *common, "max_steps=14") == 0
    ka, kb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ka["step"] == kb["step"] == 14
    for k, v in ka["model"].items():
        assert torch.equal(v, kb["model"][k]), k
    for x, y in zip(ka["state"], kb["state"]):
        assert torch.equal(x, y)
    assert ka["best_valid_mean"] == kb["best_valid_mean"]
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra == rb


def test_resume_refuses_other_settings(tmp_path, release, capsys):
    run = tmp_path / "r"
    assert catbabi(run, release, "max_steps=3", "eval_every=0") == 0
    capsys.readouterr()
    assert catbabi(run, release, "max_steps=6", "eval_every=0", "arch=lstm") == 2
    err = capsys.readouterr().err.strip()
    assert "different 'model.arch' ('fwm', now 'lstm')" in err and len(err.splitlines()) == 1


def test_resume_refuses_a_changed_data_set(tmp_path, release, capsys):
    run, changed = tmp_path / "r", write_release(tmp_path / "changed", seed=1)
    qa1 = changed / "tasks_1-20_v1-2/en-10k/qa1_single-supporting-fact_train.txt"
    qa1.write_text(qa1.read_text() + "1 Bill went to the cellar.\n2 Where is Bill? \tcellar\t1\n")
    assert catbabi(run, release, "max_steps=3", "eval_every=0") == 0
    capsys.readouterr()
    assert catbabi(run, changed, "max_steps=6", "eval_every=0") == 2
    err = capsys.readouterr().err.strip()
    assert "different vocabulary" in err and "types" in err and len(err.splitlines()) == 1
    assert load_checkpoint(run / "last.pt")["step"] == 3  # nothing was overwritten


@pytest.mark.parametrize("mode", ["qa", "lm"])
def test_hebbian_head_memorizes_exactly_the_trained_targets(tmp_path, release, mode):
    run, steps = tmp_path / "run", 7
    assert catbabi(run, release, "arch=lstm", f"mode={mode}", "model.head=hebbian", "model.T=3", "model.gamma=0.5",
                   f"max_steps={steps}", "eval_every=0") == 0
    # The targets the loss trained on: the answers (qa) or every next token (lm), never IGNORE_INDEX.
    data = load_babi(str(release), seed=0, valid_fraction=0.1)
    stream = CatbAbIStream(data.train, data.vocab, batch_size=4, seg_len=24, mode=mode, seed=0)
    expected = torch.zeros(len(data.vocab), dtype=torch.long)
    for _ in range(steps):
        _, y, _, _ = stream.next_segment()
        expected += torch.bincount(y[y != IGNORE_INDEX], minlength=len(data.vocab))
    counts = load_checkpoint(run / "last.pt")["model"]["head.counts"]
    assert int(expected.sum()) > 0 and torch.equal(counts.long(), expected)


def test_settings_catbabi_cannot_run_are_refused_in_one_line(tmp_path, release, monkeypatch, capsys):
    # A registered family without a state carried across segments (a transformer, later) is refused.
    monkeypatch.setitem(FAMILIES, "transformer", Family(LSTMLM, ("lstm",)))
    for items, message in ((["arch=transformer"], "arch=transformer is not supported (no state across segments)"),
                           (["model.head=hebbian", "model.gamma=auto"], "needs numbers for gamma and T")):
        assert catbabi(tmp_path / "run", release, *items) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "run").exists()


def test_a_run_saved_with_one_model_section_resumes(tmp_path, release, capsys):
    # Checkpoints of earlier versions hold every model setting under "model" (model.hidden, model.fwm_size ...).
    run = tmp_path / "r"
    assert catbabi(run, release, "max_steps=3", "eval_every=0") == 0
    ck = load_checkpoint(run / "last.pt")
    lstm, fwm = ck["config"].pop("lstm"), ck["config"].pop("fwm")
    del lstm["bias"], fwm["proj_bias"]  # keys added after the sections split
    for key in ("emb_init", "head_init"):
        del ck["config"]["model"][key]
    ck["config"]["model"].update({**lstm, **{f"fwm_{k}": v for k, v in fwm.items()}})
    save_checkpoint(run / "last.pt", ck)
    (run / "config.json").write_text(json.dumps(ck["config"]))
    # Such a run trained with U(±0.1) embeddings and nn.LSTM's two bias vectors, not today's defaults:
    # it is read that way, so resuming it needs those settings spelled out.
    assert catbabi(run, release, "max_steps=6", "eval_every=0") == 2
    err = capsys.readouterr().err.strip()
    assert "different 'model.emb_init' ('uniform', now 'normal')" in err and len(err.splitlines()) == 1
    assert catbabi(run, release, "max_steps=6", "eval_every=0", "model.emb_init=uniform", "lstm.bias=torch") == 0
    assert load_checkpoint(run / "last.pt")["step"] == 6


@pytest.mark.parametrize("setup,match", [
    ("missing", "does not exist"),
    ("empty", "qa"),
])
def test_bad_data_exits_2_with_one_line(tmp_path, setup, match, capsys):
    data = tmp_path / "babi"
    if setup == "empty":
        (data / "tasks_1-20_v1-2" / "en").mkdir(parents=True)
        (data / "tasks_1-20_v1-2" / "en" / "notes.txt").write_text("nothing here\n")
    assert cli(["catbabi", f"out={tmp_path / 'run'}", f"data={data}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("arg,match", [("mode=both", "mode"), ("batch_size=0", "batch_size"),
                                       ("valid_fraction=1.5", "valid_fraction")])
def test_bad_settings_exit_2(tmp_path, release, arg, match, capsys):
    assert catbabi(tmp_path / "run", release, arg) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_test_now_evaluates_an_unfinished_run(tmp_path, release):
    run = tmp_path / "run"
    assert catbabi(run, release, "max_steps=100", "max_minutes=0.0001", "eval_every=50") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["finished"] and not (run / "results.json").exists()
    assert catbabi(run, release, "max_steps=100", "max_minutes=0.0001", "eval_every=50", "test=now") == 0
    res = json.loads((run / "results.json").read_text())
    assert res["step"] <= 2 and res["checkpoint"] == "best"


def test_report_puts_catbabi_runs_side_by_side(tmp_path, release, capsys):
    runs = []
    for arch in ("fwm", "lstm"):
        runs.append(tmp_path / f"cb-{arch}")
        assert catbabi(runs[-1], release, f"arch={arch}", "max_steps=10", "eval_every=5") == 0
    unfinished = tmp_path / "cb-unfinished"
    assert catbabi(unfinished, release, "max_steps=50", "max_minutes=0.0001", "eval_every=0") == 0
    capsys.readouterr()
    assert cli(["report", *map(str, runs), str(unfinished), f"out={tmp_path / 'rep'}"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "accuracy.png").stat().st_size > 1000
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| task |"))
    assert "cb-fwm (fwm, qa)" in header and "cb-lstm (lstm, qa)" in header
    res = [json.loads((r / "results.json").read_text()) for r in runs]
    mean = next(line for line in lines if line.startswith("| **mean**"))
    cells = [c.strip() for c in mean.strip("|").split("|")][1:]
    assert cells == [f"**{100 * r['mean']:.1f}**" for r in res] + ["**–**"]  # no results yet: a dash
    qa8 = next(line for line in lines if line.startswith("| qa8 |"))
    assert f"{100 * res[1]['per_task']['qa8']:.1f}" in qa8
    # catbAbI runs and language-model runs do not mix
    lm = tmp_path / "lm"
    assert cli(["lm-train", f"out={lm}", "max_steps=2", "eval_every=0", "synthetic.train_tokens=5000",
                "synthetic.valid_tokens=500", "synthetic.test_tokens=500", "batch_size=2", "bptt=5", "hidden=8",
                "emb_dim=8", "progress=false"]) == 0
    capsys.readouterr()
    assert cli(["report", str(runs[0]), str(lm)]) == 2
    assert "not both" in capsys.readouterr().err


def test_run_names_its_recipe(tmp_path, release):
    from fastbind.runs import RunFolder

    assert catbabi(tmp_path / "cb", release, "max_steps=2", "eval_every=0") == 0
    assert json.loads((tmp_path / "cb" / "run.json").read_text())["recipe"] == "catbabi"
    assert RunFolder(tmp_path / "cb").recipe() == "catbabi"


def test_the_authors_evaluation_protocol(tmp_path, release, capsys):
    """Validation from training stream 0's state at another batch size changes what is measured,
    never what is trained; the test batch may change between slices, the validation protocol may not."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert catbabi(a, release, "max_steps=12", "eval_every=6") == 0
    assert catbabi(b, release, "max_steps=12", "eval_every=6", "eval_from=train", "eval_batch=6",
                   "test_batch=1") == 0
    ka, kb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert all(torch.equal(v, kb["model"][k]) for k, v in ka["model"].items())
    val = [[json.loads(x)["val/loss"] for x in (r / "metrics.jsonl").read_text().splitlines() if "val/loss" in x]
           for r in (a, b)]
    assert len(val[0]) == len(val[1]) == 2 and val[0] != val[1]
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra["answers"] == rb["answers"]  # batch 1 still scores every test question once
    capsys.readouterr()
    assert catbabi(b, release, "max_steps=12", "eval_every=6", "eval_from=train", "eval_batch=6",
                   "test_batch=3", "test=now") == 0
    assert catbabi(b, release, "max_steps=12", "eval_every=6", "eval_from=train", "eval_batch=2") == 2
    assert "different 'eval_batch' (6, now 2)" in capsys.readouterr().err


def test_replicate_state_repeats_one_row_in_every_family():
    from fastbind.models.registry import ModelConfig, build_lm
    from fastbind.recipes.catbabi import CatbAbIConfig
    for arch in ("lstm", "fwm"):
        cfg = CatbAbIConfig(model=ModelConfig(arch=arch, emb_dim=8))
        cfg.lstm.hidden, cfg.fwm.size = 8, 2
        model = build_lm(cfg, 20)
        state = model(torch.randint(0, 20, (3, 5))).state
        rep = model.replicate_state(state, row=1, n=4)
        assert len(rep) == len(state)
        for s, r in zip(state, rep):
            dim = 0 if s.dim() == 4 else 1  # F is (B, s, r, t); h and c are (layers, B, H)
            assert r.shape[dim] == 4
            assert all(torch.equal(r.select(dim, i), s.select(dim, 1)) for i in range(4))
