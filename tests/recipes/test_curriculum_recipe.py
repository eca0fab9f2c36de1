"""fastbind curriculum: dry runs per head, level logic in the loop, resume == uninterrupted, errors."""

from __future__ import annotations

import json

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.recipes import curriculum as recipe
from fastbind.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory, omniglot_zip):
    folder = tmp_path_factory.mktemp("omniglot")
    omniglot_zip(folder / "a.zip", "images_background", {"Greek": 5, "Latin": 4})
    return folder


def tiny(data, out, *extra):
    return ["curriculum", f"data={data}", f"out={out}", "start_classes=3", "new_classes=2", "channels=8",
            "batch_size=8", "eval_every=5", "progress=false", "mbpa.size=64", "mbpa.k=8", *extra]


@pytest.mark.parametrize("head", ["softmax", "hebbian", "mbpa"])
def test_dry_run_per_head(data, tmp_path, capsys, head):
    assert cli(tiny(data, tmp_path / "c", f"head={head}", "max_steps=30")) == 0
    (sub,) = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    for name in ("config.json", "metrics.jsonl", "last.pt", "curriculum.json"):
        assert (sub / name).is_file(), name
    rec = json.loads((sub / "curriculum.json").read_text())
    assert rec["head"] == head and rec["step"] == 30 and rec["finished"]
    rows = [json.loads(line) for line in (sub / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert "9 classes from 2 alphabets" in capsys.readouterr().out
    ck = load_checkpoint(sub / "last.pt")
    if head == "hebbian":
        assert int(ck["model"]["head.counts"].sum()) == 30 * 8  # memorize ran after every step
    assert (ck["mbpa"] is not None) == (head == "mbpa")


def test_levels_follow_the_stubbed_accuracy(data, tmp_path, monkeypatch):
    # Calls: one per check, plus one over all classes each time a level passes (criterion=new).
    values = iter([0.5, 0.7, 0.9, 0.6, 0.61, 0.8, 0.2, 0.2, 0.95, 0.4] + [0.0] * 100)
    judged = []

    def stub(model, images, labels, n, mbpa=None, lam=0.0):
        judged.append((n, sorted(set(labels.tolist()))))
        return next(values)

    monkeypatch.setattr(recipe, "accuracy", stub)
    assert cli(tiny(data, tmp_path / "c", "head=softmax", "max_steps=60")) == 0
    (sub,) = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    levels = json.loads((sub / "curriculum.json").read_text())["levels"]
    # Checks every 5 steps: 0.5 (no), 0.7 at step 10 passes level 0 (3 classes); 0.6 at 15 does not
    # pass (equal), 0.61 at 20 passes level 1 (5 classes); 0.2, 0.2, then 0.95 at 35 passes level 2.
    assert [(r["classes"], r["end_step"], r["steps"]) for r in levels] == [(3, 10, 10), (5, 20, 10), (7, 35, 15)]
    assert [r["accuracy_all"] for r in levels] == [0.9, 0.8, 0.4]
    assert judged[:3] == [(3, [0, 1, 2]), (3, [0, 1, 2]), (3, [0, 1, 2])]
    assert judged[3] == (5, [3, 4])  # criterion=new: the level's new classes only
    assert judged[5] == (5, [0, 1, 2, 3, 4])  # and all of them once it passes


@pytest.mark.parametrize("head", ["hebbian", "mbpa"])
def test_resume_equals_uninterrupted(data, tmp_path, head):
    extra = [f"head={head}", "threshold=0.3", "objective=svm", "mbpa.size=40"]
    assert cli(tiny(data, tmp_path / "whole", *extra, "max_steps=40")) == 0
    assert cli(tiny(data, tmp_path / "parts", *extra, "max_steps=17")) == 0
    assert cli(tiny(data, tmp_path / "parts", *extra, "max_steps=40")) == 0
    (a,) = [p for p in (tmp_path / "whole").iterdir() if p.is_dir()]
    (b,) = [p for p in (tmp_path / "parts").iterdir() if p.is_dir()]
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    ra, rb = (json.loads((p / "curriculum.json").read_text()) for p in (a, b))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ra["levels"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rb["levels"]]
    assert len(ra["levels"]) >= 2  # levels were passed, before and after the interruption
    if head == "mbpa":
        assert torch.equal(ca["mbpa"]["keys"], cb["mbpa"]["keys"])


def test_combinations_and_skipping_finished(data, tmp_path, capsys):
    assert cli(tiny(data, tmp_path / "c", "head=softmax,hebbian", "T=5,10", "seeds=0,1", "max_steps=5")) == 0
    names = sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert names == ["hebbian-l2-T10-g0.1-lr0.008-b8-s0", "hebbian-l2-T10-g0.1-lr0.008-b8-s1",
                     "hebbian-l2-T5-g0.1-lr0.008-b8-s0", "hebbian-l2-T5-g0.1-lr0.008-b8-s1",
                     "softmax-lr0.008-b8-s0", "softmax-lr0.008-b8-s1"]
    stamp = (tmp_path / "c" / names[0] / "last.pt").stat().st_mtime_ns
    assert cli(tiny(data, tmp_path / "c", "head=softmax,hebbian", "T=5,10", "seeds=0,1", "max_steps=5")) == 0
    assert (tmp_path / "c" / names[0] / "last.pt").stat().st_mtime_ns == stamp  # finished: not rerun


def test_mbpa_settings_name_the_subfolder(data, tmp_path):
    assert cli(tiny(data, tmp_path / "c", "head=mbpa", "max_steps=5", "mbpa.lr=0.5")) == 0
    assert cli(tiny(data, tmp_path / "c", "head=mbpa", "max_steps=5", "mbpa.lambda=0.5")) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == [
        "mbpa-K8-mlr0.1-lam0.5-mem64-lr0.008-b8-s0", "mbpa-K8-mlr0.5-lam1-mem64-lr0.008-b8-s0"]
    rec = json.loads((tmp_path / "c" / "mbpa-K8-mlr0.1-lam0.5-mem64-lr0.008-b8-s0" / "curriculum.json").read_text())
    assert rec["mbpa"]["lam"] == 0.5 and rec["mbpa"]["k"] == 8


@pytest.mark.parametrize("bad, message", [
    (["lr=0"], "positive"), (["head=foo"], "not one of"), (["threshold=1"], "threshold"), (["seeds=[]"], "seeds"),
])
def test_bad_settings_are_one_line_errors(data, tmp_path, capsys, bad, message):
    assert cli(tiny(data, tmp_path / "c", *bad)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "c").exists()


def test_missing_data_and_changed_settings(data, tmp_path, capsys, omniglot_zip):
    assert cli(tiny(tmp_path / "nothing", tmp_path / "c")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(tiny(data, tmp_path / "c", "head=softmax", "max_steps=5")) == 0
    assert cli(tiny(data, tmp_path / "c", "head=softmax", "max_steps=10", "dropout=0.5")) == 2
    assert "different 'dropout'" in capsys.readouterr().err
    other = omniglot_zip(tmp_path / "other" / "a.zip", "images_background", {"Greek": 5, "Korean": 4})
    assert cli(tiny(other.parent, tmp_path / "c", "head=softmax", "max_steps=10")) == 2
    assert "other Omniglot classes" in capsys.readouterr().err


def test_runs_and_their_parent_name_the_recipe(data, tmp_path):
    from fastbind.runs import RunFolder

    assert cli(tiny(data, tmp_path / "c", "head=softmax,hebbian", "max_steps=5")) == 0
    parent = RunFolder(tmp_path / "c")
    subs = parent.subruns()
    assert len(subs) == 2
    for folder in (parent, *subs):
        assert json.loads((folder.path / "run.json").read_text())["recipe"] == "curriculum"
        assert folder.recipe() == "curriculum"
    assert not (parent.path / "config.json").exists()  # the combinations' settings stay in their sub-runs
