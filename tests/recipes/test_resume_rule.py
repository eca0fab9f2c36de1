"""One resume rule for every recipe (``fastbind.runs.check_resume``): only budget and display keys may change.

A refused resume is one line naming the dotted key and both values, and nothing in the run
folder changes; a free key (``max_steps``) resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pytest

from fastbind.cli import main as cli
from fastbind.errors import UserError
from fastbind.runs import FREE_ON_RESUME, check_resume
from fastbind.training.checkpoint import load_checkpoint
from fastbind.training.config import to_dict
from test_catbabi import catbabi, write_release  # noqa: E402  (tests/recipes is on sys.path under pytest)
from test_curriculum_recipe import tiny  # noqa: E402
from test_lm_recipes import train  # noqa: E402


def _refused(capsys, folder: Path, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    assert load_checkpoint(folder / "last.pt") is not None


def test_lm_train_refuses_a_changed_learning_rate_and_resumes_a_longer_budget(tmp_path, capsys):
    run = tmp_path / "r"
    assert train(run, "max_steps=4", "eval_every=2") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train(run, "max_steps=6", "eval_every=2", "lr=0.01") == 2  # the optimizer state holds 0.002
    _refused(capsys, run, "different 'optim.lr' (0.002, now 0.01)")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert train(run, "max_steps=6", "eval_every=2", "eval_max_tokens=200") == 2  # what best.pt compares
    _refused(capsys, run, "different 'eval_max_tokens' (400, now 200)")
    assert train(run, "max_steps=6", "eval_every=2", "log_every=3", "threads=1") == 0
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert json.loads((run / "config.json").read_text())["max_steps"] == 6


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("babi"))


def test_catbabi_refuses_changed_settings_and_resumes_a_longer_budget(tmp_path, release, capsys):
    run = tmp_path / "r"
    assert catbabi(run, release, "max_steps=3", "eval_every=0") == 0
    capsys.readouterr()
    assert catbabi(run, release, "max_steps=6", "eval_every=0", "lr=0.01") == 2
    _refused(capsys, run, "different 'optim.lr' (0.001, now 0.01)")
    assert catbabi(run, release, "max_steps=6", "eval_every=0", "eval_segments=2") == 2  # what best.pt compares
    _refused(capsys, run, "different 'eval_segments' (0, now 2)")
    assert catbabi(run, release, "max_steps=6", "eval_every=3", "test=now", "compile=false") == 0
    assert load_checkpoint(run / "last.pt")["step"] == 6


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory, omniglot_zip):
    folder = tmp_path_factory.mktemp("omniglot")
    omniglot_zip(folder / "a.zip", "images_background", {"Greek": 5, "Latin": 4})
    return folder


def test_curriculum_refuses_changed_settings_and_resumes_a_longer_budget(omniglot, tmp_path, capsys):
    out = tmp_path / "c"
    assert cli(tiny(omniglot, out, "head=mbpa", "max_steps=5")) == 0
    (sub,) = [p for p in out.iterdir() if p.is_dir()]  # out also holds run.json
    capsys.readouterr()
    assert cli(tiny(omniglot, out, "head=mbpa", "max_steps=10", "mbpa.eps=0.01")) == 2
    _refused(capsys, sub, "different 'mbpa.eps' (0.001, now 0.01)")
    assert cli(tiny(omniglot, out, "head=mbpa", "max_steps=10", "eval_every=7")) == 2  # it paces the levels here
    _refused(capsys, sub, "different 'eval_every' (5, now 7)")
    assert cli(tiny(omniglot, out, "head=mbpa", "max_steps=10", "checkpoint_every=3", "device=cpu")) == 0
    assert load_checkpoint(sub / "last.pt")["step"] == 10


@dataclasses.dataclass
class Section:
    lr: float = 0.1
    new_key: int = 3  # added after the run was saved


@dataclasses.dataclass
class Cfg:
    out: str = "runs/x"
    max_steps: int = 10
    seed: int = 0
    section: Section = dataclasses.field(default_factory=Section)
    RENAMED: ClassVar[dict[str, str]] = {"section.rate": "section.lr"}


def test_check_resume_compares_every_key_but_the_free_ones():
    saved = {"out": "a", "max_steps": 5, "seed": 0, "section": {"rate": 0.1}}  # an older run: old name, no new_key
    check_resume(saved, Cfg(out="b", max_steps=50), "runs/x")
    for changed, message in ((Cfg(seed=1), "different 'seed' (0, now 1)"),
                             (Cfg(section=Section(lr=0.2)), "different 'section.lr' (0.1, now 0.2)"),
                             (Cfg(section=Section(new_key=4)), "different 'section.new_key' (3, now 4)")):
        with pytest.raises(UserError) as info:
            check_resume(saved, changed, "runs/x")
        assert str(info.value).startswith("runs/x holds a run with a different") and message in str(info.value)
    assert {"out", "data", "data_dir", "device", "threads", "max_steps", "max_minutes", "stop_after"} <= FREE_ON_RESUME
    assert not {"seed", "optim", "model", "eval_max_tokens", "eval_segments", "batch_size"} & FREE_ON_RESUME
    with pytest.raises(UserError, match="different 'max_steps' .5, now 50."):
        check_resume(saved, Cfg(max_steps=50), "runs/x", pinned=frozenset({"max_steps"}))
    assert to_dict(Cfg())["section"] == {"lr": 0.1, "new_key": 3}
