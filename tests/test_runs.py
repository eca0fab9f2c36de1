"""RunFolder: the one reader and writer of a run's files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from fastbind import __version__
from fastbind.data.vocab import Vocabulary
from fastbind.errors import UserError
from fastbind.runs import BASE_VARIANT, MARKER_FILE, RunFolder, eval_name, eval_record, metrics_by_step


@dataclasses.dataclass
class Inner:
    size: int = 3


@dataclasses.dataclass
class Cfg:
    name: str = "x"
    lr: float = 1e-3
    edges: tuple[int, ...] = (10, 100)
    inner: Inner = dataclasses.field(default_factory=Inner)


def _result(ppl: float, tokens: int = 10) -> dict:
    return {"ppl": ppl, "nll": 1.0, "tokens": tokens, "buckets": [{"name": "<100", "tokens": tokens, "ppl": ppl}]}


def test_config_round_trip(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run", writer=True)
    assert not run.exists() and run.config_dict() is None
    cfg = Cfg(name="y", edges=(1, 2, 3), inner=Inner(7))
    assert run.save_config(cfg) == tmp_path / "run" / "config.json"
    assert run.exists() and run.require() is run
    assert run.load_config(Cfg) == cfg
    assert run.config_dict() == {"name": "y", "lr": 1e-3, "edges": [1, 2, 3], "inner": {"size": 7}}
    assert run.name == "run" and RunFolder(tmp_path / "run" / ".").name == "run"


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        RunFolder(tmp_path / "missing").load_config(Cfg)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        RunFolder(tmp_path / "file").require()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run folder \\(no config.json\\)"):
        RunFolder(tmp_path / "empty").load_config(Cfg)


@pytest.mark.parametrize("text,message", [("{not json", "cannot parse"), ("[1, 2]", "must contain a JSON object")])
def test_corrupt_json_is_a_user_error(tmp_path: Path, text: str, message: str) -> None:
    run = RunFolder(tmp_path, writer=True)
    for name in ("config.json", "summary.json", "eval-test.json"):
        (tmp_path / name).write_text(text)
    for read in (run.config_dict, run.read_summary, lambda: run.read_result("eval-test"), lambda: run.read_eval("test"),
                 lambda: run.load_config(Cfg)):
        with pytest.raises(UserError, match=message):
            read()


def test_unknown_config_key_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"name": "a", "lrr": 1}))
    with pytest.raises(UserError, match="unknown key 'lrr'"):
        RunFolder(tmp_path).load_config(Cfg)


def test_metrics_and_summary(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, writer=True)
    assert run.read_metrics() == [] and not run.has_metrics() and run.read_summary() is None
    with run.metrics_writer(tensorboard=False) as log:
        for step in (10, 20, 30):
            log.log(step, {"loss": float(step)})
    with run.metrics_writer(tensorboard=False) as log:  # resumed from step 20: 30 is redone
        log.log(30, {"loss": 3.0})
        log.log(30, {"val/ppl": 9.0})
    assert run.has_metrics()
    assert run.read_metrics() == [{"step": 10, "loss": 10.0}, {"step": 20, "loss": 20.0},
                                  {"step": 30, "loss": 3.0, "val/ppl": 9.0}]
    run.write_summary({"step": 30, "finished": True})
    assert run.read_summary() == {"step": 30, "finished": True}


def test_metrics_by_step_drops_lines_a_resume_replaced() -> None:
    rows = [{"step": 1, "a": 1}, {"step": 2, "a": 2}, {"step": 3, "a": 3}, {"step": 2, "a": 20}, {"a": 0},
            {"step": True, "a": 5}]
    assert metrics_by_step(rows) == {1: {"step": 1, "a": 1}, 2: {"step": 2, "a": 20}}


def test_checkpoints_and_fallback(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, writer=True)
    assert not run.has_checkpoint("last")
    with pytest.raises(UserError, match="has no checkpoint best.pt"):
        run.load_checkpoint("best", fallback="last")
    run.save_checkpoint("last", {"step": 5, "w": torch.arange(3)})
    assert run.has_checkpoint("last") and not run.has_checkpoint("best")
    state, path = run.load_checkpoint("best", fallback="last")  # a run without validation has no best.pt
    assert path == tmp_path / "last.pt" and state["step"] == 5 and torch.equal(state["w"], torch.arange(3))
    with pytest.raises(UserError, match="has no checkpoint best.pt"):
        run.load_checkpoint("best")
    run.save_checkpoint("best", {"step": 4})
    state, path = run.load_checkpoint("best", fallback="last")
    assert path == tmp_path / "best.pt" and state["step"] == 4
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="last.pt"):
        run.load_checkpoint("last")


def test_results_text_and_bytes(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, writer=True)
    run.save_config(Cfg())
    run.write_summary({"step": 1})
    assert run.read_result("sweep-valid") is None
    run.write_result("sweep-valid", {"best": 1.5})
    run.write_result("eval-test", {"ppl": 2.0})
    run.write_result("eval-valid-a", {"ppl": 3.0})
    assert run.read_result("sweep-valid") == {"best": 1.5}
    assert run.result_names() == ["eval-test", "eval-valid-a", "sweep-valid"]  # not config or summary
    assert run.result_names("eval-*") == ["eval-test", "eval-valid-a"]
    run.write_text("sweep-valid.md", "| a |\n")
    run.write_bytes("fig.png", b"\x89PNG")
    assert (tmp_path / "sweep-valid.md").read_text() == "| a |\n" and (tmp_path / "fig.png").read_bytes() == b"\x89PNG"


def test_subruns(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "sweep", writer=True)
    assert run.subruns() == []
    for name in ("b", "a"):
        run.sub(name).save_config(Cfg(name=name))
    (run.path / "report").mkdir()  # a folder without a run is not a sub-run
    (run.path / "notes.json").write_text("{}")
    subs = run.subruns()
    assert [s.name for s in subs] == ["a", "b"] and all(s.writer for s in subs)
    assert [s.load_config(Cfg).name for s in subs] == ["a", "b"]
    assert not RunFolder(run.path, writer=False).sub("a").writer


def test_non_writer_writes_nothing(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run", writer=False)
    assert run.save_config(Cfg()) is None
    assert run.write_summary({"step": 1}) is None
    assert run.save_checkpoint("last", {"step": 1}) is None
    assert run.write_result("eval-test", {"ppl": 1.0}) is None
    assert run.write_eval(eval_record({"model": _result(5.0)}, split="test")) is None
    assert run.write_text("a.md", "x") is None and run.write_bytes("a.png", b"x") is None
    with run.metrics_writer(tensorboard=False) as log:
        log.log(1, {"loss": 1.0})
    assert run.sub("s").save_config(Cfg()) is None
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- the recipe marker


def test_save_config_with_recipe_writes_the_marker_and_the_same_config(tmp_path: Path) -> None:
    plain, marked = RunFolder(tmp_path / "plain", writer=True), RunFolder(tmp_path / "marked", writer=True)
    assert plain.save_config(Cfg()) == plain.path / "config.json"
    assert marked.save_config(Cfg(), recipe="lm-train") == marked.path / "config.json"
    assert (marked.path / "config.json").read_bytes() == (plain.path / "config.json").read_bytes()
    assert json.loads((marked.path / MARKER_FILE).read_text()) == {"recipe": "lm-train", "fastbind": __version__}
    assert not (plain.path / MARKER_FILE).exists()
    assert marked.recipe() == "lm-train" and marked.load_config(Cfg) == Cfg()
    assert marked.result_names() == []  # the marker is not a result


def test_marker_wins_over_the_settings_and_names_any_recipe(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, writer=True)
    run.save_config(Cfg(), recipe="meta-rl")  # a family this version has no reader for
    assert run.recipe() == "meta-rl"
    (tmp_path / "config.json").write_text(json.dumps({"seg_len": 24, "mode": "qa", "model": {}}))
    assert run.recipe() == "meta-rl"
    with pytest.raises(UserError, match="holds meta-rl runs, not catbabi runs"):  # another recipe's folder
        run.mark("catbabi")
    assert run.recipe() == "meta-rl"
    run.mark("meta-rl")  # the same recipe again (a resumed run) is fine


@pytest.mark.parametrize("name", ["", "LM", "lm train", "lm-", "-lm", "../x", "lm_train"])
def test_marker_names_a_recipe_like_a_command(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="named like a command"):
        RunFolder(tmp_path, writer=True).save_config(Cfg(), recipe=name)
    assert not (tmp_path / MARKER_FILE).exists()


@pytest.mark.parametrize("text,message", [("{oops", "cannot parse"), ("[1]", "must contain a JSON object"),
                                          ('{"fastbind": "0.1.0"}', "does not name the recipe"),
                                          ('{"recipe": 3}', "does not name the recipe")])
def test_damaged_marker_is_a_user_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / MARKER_FILE).write_text(text)
    with pytest.raises(UserError, match=message):
        RunFolder(tmp_path).recipe()


def test_non_writer_writes_no_marker(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run", writer=False)
    assert run.save_config(Cfg(), recipe="lm-train") is None and run.mark("curriculum") is None
    assert not (tmp_path / "run").exists()


def _unmarked(path: Path, config: dict) -> RunFolder:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return RunFolder(path)


def test_unmarked_folders_of_this_version_are_recognised_by_their_settings(tmp_path: Path) -> None:
    from fastbind.lm import LMTrainConfig
    from fastbind.recipes.catbabi import CatbAbIConfig
    from fastbind.recipes.curriculum import CurriculumConfig
    from fastbind.training.config import to_dict

    for recipe, cfg in [("lm-train", LMTrainConfig()), ("catbabi", CatbAbIConfig()), ("curriculum", CurriculumConfig())]:
        run = _unmarked(tmp_path / f"{recipe}-{type(cfg).__name__}", to_dict(cfg))
        assert run.recipe() == recipe, type(cfg).__name__


def test_unmarked_folders_written_by_hand_or_older_versions(tmp_path: Path) -> None:
    assert _unmarked(tmp_path / "lm", {"data": "ptb", "model": {"head": "softmax"}}).recipe() == "lm-train"
    assert _unmarked(tmp_path / "cb", {"seg_len": 24, "mode": "qa", "model": {"arch": "fwm"}}).recipe() == "catbabi"
    assert _unmarked(tmp_path / "omni" / "softmax-s0", {"start_classes": 30, "new_classes": 5}).recipe() == "curriculum"
    _unmarked(tmp_path / "omni" / "softmax-s1", {"start_classes": 30, "new_classes": 5})
    (tmp_path / "omni" / "report").mkdir()
    assert RunFolder(tmp_path / "omni").recipe() == "curriculum"  # no settings of its own: what its sub-runs are
    assert _unmarked(tmp_path / "other", {"name": "x"}).recipe() is None
    (tmp_path / "bare").mkdir()
    assert RunFolder(tmp_path / "bare").recipe() is None and RunFolder(tmp_path / "missing").recipe() is None
    mixed = RunFolder(tmp_path / "mixed", writer=True)
    mixed.sub("a").save_config(Cfg(), recipe="lm-train")
    mixed.sub("b").save_config(Cfg(), recipe="catbabi")
    assert mixed.recipe() is None


# --------------------------------------------------------------------------- evaluation records


def test_eval_record_layout() -> None:
    variants = {"+cache": _result(90.0), "model": _result(100.0), "+cache@sample": _result(91.0, 5)}
    rec = eval_record(variants, variant_settings={"+cache": {"lambda": 0.1}}, split="test", step=7)
    assert list(rec) == ["ppl", "nll", "tokens", "buckets", "variants", "split", "step"]
    assert {k: rec[k] for k in ("ppl", "nll", "tokens", "buckets")} == _result(100.0)  # the model's own numbers
    assert list(rec["variants"]) == ["model", "+cache", "+cache@sample"]
    assert rec["variants"]["model"] == {**_result(100.0), "settings": None}
    assert rec["variants"]["+cache"]["settings"] == {"lambda": 0.1}
    assert rec["variants"]["+cache@sample"]["settings"] == {"lambda": 0.1}  # a sample takes its variant's settings
    with pytest.raises(ValueError, match="'model' variant"):
        eval_record({"+cache": _result(1.0)}, split="test")
    with pytest.raises(ValueError, match="split"):
        eval_record({"model": _result(1.0)})


def test_write_and_read_eval(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, writer=True)
    assert run.read_eval("test") is None
    rec = eval_record({"model": _result(100.0), "+mbpa": _result(95.0)}, split="test", checkpoint="best")
    assert run.write_eval(rec) == tmp_path / "eval-test.json"
    assert eval_name("test", "two") == "eval-test-two" and eval_name("test") == "eval-test"
    assert run.write_eval(rec, tag="two") == tmp_path / "eval-test-two.json"
    assert run.read_eval("test") == rec and run.read_eval("test", tag="two") == rec
    with pytest.raises(ValueError, match="eval_record"):
        run.write_eval({"ppl": 1.0, "split": "test"})


def test_read_eval_of_the_layout_without_variants(tmp_path: Path) -> None:
    # eval-<split>.json as lm-eval wrote it without memories before there was one layout.
    old = {**_result(120.0), "split": "test", "checkpoint": "best", "step": 9, "head": "softmax"}
    (tmp_path / "eval-test.json").write_text(json.dumps(old))
    rec = RunFolder(tmp_path).read_eval("test")
    assert rec["variants"] == {BASE_VARIANT: {**_result(120.0), "settings": None}}
    assert rec["ppl"] == 120.0 and rec["head"] == "softmax"
    # Variants without the model: the model is put first, from the top-level numbers.
    no_model = {**old, "split": "valid", "variants": {"+cache": _result(1.0)}}
    (tmp_path / "eval-valid.json").write_text(json.dumps(no_model))
    assert list(RunFolder(tmp_path).read_eval("valid")["variants"]) == ["model", "+cache"]


# --------------------------------------------------------------------------- file modes


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_atomically_written_files_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    run = RunFolder(tmp_path / "run", writer=True)
    files = [
        run.save_config(Cfg()),
        run.save_checkpoint("last", {"step": 1}),
        Vocabulary(["<unk>", "<eos>", "a"]).save(run.path),
        run.write_eval(eval_record({"model": _result(5.0)}, split="test")),
        run.write_summary({"step": 1}),
    ]
    assert [p.name for p in files] == ["config.json", "last.pt", "vocab.txt", "eval-test.json", "summary.json"]
    for path in files:
        assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask), path.name


def test_read_eval_of_earlier_settings_layouts(tmp_path: Path) -> None:
    # lm-eval wrote each memory's fields with ``lam``; lm-sweep its flat best rows with their ppl.
    cache = {"size": 200, "theta": 0.5, "lambda": 0.2}
    mbpa = {"size": 300, "k": 16, "steps": 1, "lr": 0.3, "l2": 0.5, "eps": 1e-3, "lambda": 0.1, "stride": 1}
    lam = lambda d: {("lam" if k == "lambda" else k): v for k, v in d.items()}  # noqa: E731
    lm_eval = {"+cache": {"cache": lam(cache)}, "+cache+mbpa": {"cache": lam(cache), "mbpa": lam(mbpa)}}
    sweep = {"+cache": {"size": 200, "theta": 0.5, "lambda": 0.2, "ppl": 9.0},
             "+mbpa": {"size": 300, "k": 16, "steps": 1, "lambda": 0.1, "ppl": 8.0},
             "+cache+mbpa": {"size": 200, "theta": 0.5, "cache_lambda": 0.2, "k": 16, "steps": 1,
                             "mbpa_lambda": 0.1, "ppl": 7.0}}
    for split, settings in (("test", lm_eval), ("valid", sweep)):
        names = ["model", *settings]
        rec = eval_record({n: _result(100.0) for n in names}, variant_settings=settings, split=split)
        (tmp_path / f"eval-{split}.json").write_text(json.dumps(rec))
    test, valid = RunFolder(tmp_path).read_eval("test"), RunFolder(tmp_path).read_eval("valid")
    assert test["variants"]["+cache"]["settings"] == {"cache": cache}
    assert test["variants"]["+cache+mbpa"]["settings"] == {"cache": cache, "mbpa": mbpa}
    short = {k: mbpa[k] for k in ("size", "k", "steps", "lambda")}
    assert valid["variants"]["+cache"]["settings"] == {"cache": cache}
    assert valid["variants"]["+mbpa"]["settings"] == {"mbpa": short}
    assert valid["variants"]["+cache+mbpa"]["settings"] == {"cache": cache, "mbpa": {**short, "size": 200}}
    assert test["variants"]["model"]["settings"] is None
