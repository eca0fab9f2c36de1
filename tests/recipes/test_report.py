"""``fastbind report``: run folders -> markdown table + PNG figures."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fastbind import cli
from fastbind.errors import UserError
from fastbind.report.lm import build_report, format_ppl, markdown_table, read_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUCKETS = [">10K", "1K-10K", "100-1K", "<100"]


def _write_run(root: Path, name: str, *, head: str | None, metrics: list[dict] | None = None,
               summary: dict | None = None, evaluation: dict | None = None, tail: str = "") -> Path:
    run = root / name
    run.mkdir(parents=True)
    if head is not None:
        config = {"data": "ptb", "out": f"runs/{name}", "model": {"head": head, "T": 100, "gamma": 0.1, "hidden": 256}}
        (run / "config.json").write_text(json.dumps(config))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + tail)
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    if evaluation is not None:
        (run / "eval-test.json").write_text(json.dumps(evaluation))
    return run


def _result(ppl: float, bucket_ppls: list[float | None]) -> dict:
    tokens = [8000, 1500, 400, 100]
    return {"ppl": ppl, "nll": 5.0, "tokens": sum(tokens),
            "buckets": [{"name": n, "tokens": t, "ppl": p} for n, t, p in zip(BUCKETS, tokens, bucket_ppls)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    # Validation every 20 steps; the run was killed after step 40 (checkpoint at 20) and
    # resumed, so steps 21..40 appear twice and the last attempt's values must win.
    softmax_metrics = [
        {"step": 10, "train/loss": 6.0, "train/ppl": 403.4, "lr": 2e-3},
        {"step": 20, "train/loss": 5.5, "train/ppl": 244.7, "lr": 2e-3},
        {"step": 20, "val/ppl": 300.0, "val/loss": 5.70, "tokens": 22400},
        {"step": 40, "val/ppl": 150.0, "val/loss": 5.01, "tokens": 44800},  # lost with the crash
        {"step": 30, "train/loss": 5.3, "train/ppl": 200.3, "lr": 2e-3},
        {"step": 40, "val/ppl": 180.0, "val/loss": 5.19, "tokens": 44800},
        {"step": 60, "val/ppl": 124.51, "val/loss": 4.82, "tokens": 67200},
    ]
    softmax = _write_run(
        root, "ptb-softmax", head="softmax", metrics=softmax_metrics, tail='{"step": 70, "train/lo',
        summary={"step": 60, "best_val_ppl": 124.51, "last_val_ppl": 124.51, "train_tokens": 67200,
                 "head": "softmax", "data": "ptb", "vocab_size": 10000},
        evaluation={**_result(118.04, [60.04, 353.0, 999.96, 6803.4]), "split": "test"},
    )
    hebb_metrics = [
        {"step": 20, "val/ppl": 320.0, "val/loss": 5.77, "tokens": 22400},
        {"step": 40, "val/ppl": 190.0, "val/loss": 5.25, "tokens": 44800},
        {"step": 60, "val/ppl": 149.6, "val/loss": 5.01, "tokens": 67200},
    ]
    hebb = _write_run(
        root, "ptb-hebb", head="hebbian", metrics=hebb_metrics,  # no summary.json: still running
        evaluation={**_result(121.0, [61.0, 360.0, 1000.0, 9170.0]), "split": "test",
                    "variants": {"model": _result(121.0, [61.0, 360.0, 1000.0, 9170.0]),
                                 "+cache": _result(110.0, [58.5, 300.0, 800.0, 4000.0]),
                                 "+cache+mbpa": _result(105.0, [57.0, 290.0, 750.0, None])}},
    )
    # Training only, no evaluation yet; the head is already in the folder name.
    pending = _write_run(root, "wt2-hebbian", head="hebbian",
                         metrics=[{"step": 1000, "val/ppl": 2345.6, "tokens": 1_120_000}])
    return [softmax, hebb, pending]


@pytest.fixture(scope="module")
def report(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_report(runs, tmp_path_factory.mktemp("out") / "report", split="test", title="PTB test")


EXPECTED_TABLE = """\
| run | data | head | steps | valid ppl (best) | test ppl | >10K | 1K-10K | 100-1K | <100 |
|---|---|---|--:|--:|--:|--:|--:|--:|--:|
| ptb-softmax | ptb | softmax | 60 | 124.5 | 118.0 | 60.0 | 353.0 | 1,000 | 6,803 |
| ptb-hebb (hebbian) | ptb | hebbian | 60 | 149.6 | 121.0 | 61.0 | 360.0 | 1,000 | 9,170 |
| ptb-hebb (hebbian) +cache | ptb | hebbian | 60 | 149.6 | 110.0 | 58.5 | 300.0 | 800.0 | 4,000 |
| ptb-hebb (hebbian) +cache+mbpa | ptb | hebbian | 60 | 149.6 | 105.0 | 57.0 | 290.0 | 750.0 | – |
| wt2-hebbian | ptb | hebbian | 1,000 | 2,346 | – | – | – | – | – |"""


def test_markdown_table_exact(report: dict) -> None:
    assert report["bucket_names"] == BUCKETS
    assert report["table"] == EXPECTED_TABLE
    assert markdown_table(report["rows"], report["bucket_names"]) == EXPECTED_TABLE
    assert [r["variant"] for r in report["rows"]] == ["model", "model", "+cache", "+cache+mbpa", "model"]


def test_report_markdown_file(report: dict) -> None:
    text = report["markdown"].read_text(encoding="utf-8")
    assert text.startswith("# PTB test\n\n" + EXPECTED_TABLE + "\n")
    tokens = ("Tokens per bucket on test (ptb-softmax, 10,000 in all): "
              ">10K 8,000 · 1K-10K 1,500 · 100-1K 400 · <100 100")
    assert tokens in text
    assert "](validation.png)" in text and "](buckets.png)" in text
    assert "wt2-hebbian: no eval-test.json" in text


@pytest.mark.parametrize("key", ["validation", "buckets"])
def test_pngs_are_valid(report: dict, key: str) -> None:
    data = Path(report[key]).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 300
    assert len(data) > 10_000


def test_resumed_metrics_keep_last_value_per_step(runs: list[Path]) -> None:
    run = read_run(runs[0])
    # (step, tokens, ppl): the crashed attempt's step-40 value (150) is replaced; the
    # truncated last line is ignored.
    assert run["validation"] == [(20, 22400.0, 300.0), (40, 44800.0, 180.0), (60, 67200.0, 124.51)]
    assert run["steps"] == 60
    hebb = read_run(runs[1])
    assert hebb["name"] == "ptb-hebb (hebbian)" and hebb["steps"] == 60 and hebb["best_val_ppl"] == 149.6


def test_format_ppl() -> None:
    assert [format_ppl(v) for v in (124.54, 999.94, 999.96, 6803.4, 12345.6, None, float("inf"))] == [
        "124.5", "999.9", "1,000", "6,803", "12,346", "–", "inf"]


def test_cli_report(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert cli.main(["report", str(runs[0]), str(runs[1]), f"out={out}", "title=two runs"]) == 0
    stdout = capsys.readouterr().out
    assert "| ptb-hebb (hebbian) +cache |" in stdout
    assert f"wrote {out / 'report.md'}" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["buckets.png", "report.md", "validation.png"]


def test_cli_default_out_is_beside_runs(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(runs[2])]) == 0
    assert (runs[2].parent / "report" / "report.md").is_file()
    assert "no eval-test.json" in capsys.readouterr().err


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastbind report: error: ")
    return err


def test_cli_errors(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report"]) == 2
    assert "no run folders given" in _one_line_error(capsys)

    out = tmp_path / "out"
    assert cli.main(["report", str(runs[0]), str(tmp_path / "nope"), f"out={out}"]) == 2
    assert "run folder not found" in _one_line_error(capsys)
    assert not out.exists()  # nothing written when an input is bad

    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty"), f"out={out}"]) == 2
    assert "no metrics.jsonl and no eval-*.json" in _one_line_error(capsys)

    with pytest.raises(UserError, match="no run folders"):
        build_report([], tmp_path)


def test_table_shows_tokens_when_variants_score_different_targets() -> None:
    base = {"run": "r", "data": "ptb", "head": "softmax", "steps": 5, "best_val_ppl": 10.0}
    rows = [{**base, "ppl": 100.0, "tokens": 1000, "buckets": {}},
            {**base, "run": "r +mbpa", "ppl": 90.0, "tokens": 250, "buckets": {}},
            {**base, "run": "r model@sample", "ppl": 95.0, "tokens": 250, "buckets": {}}]
    lines = markdown_table(rows, []).splitlines()
    assert lines[0] == "| run | data | head | steps | valid ppl (best) | tokens | test ppl |"
    assert lines[3] == "| r +mbpa | ptb | softmax | 5 | 10.0 | 250 | 90.0 |"
    assert "tokens" not in markdown_table(rows[:1], []).splitlines()[0]


# --------------------------------------------------------------------------- curriculum runs


def _curriculum_run(root, name, head, seed, steps_per_level, batch_size=32):
    sub = root / name
    sub.mkdir(parents=True)
    (sub / "config.json").write_text(json.dumps({"start_classes": 30, "new_classes": 5}))
    levels, end, classes = [], 0, 30
    for s in steps_per_level:
        end += s
        levels.append({"level": len(levels), "classes": classes, "steps": s, "end_step": end, "accuracy": 0.7,
                       "accuracy_all": 0.5 + seed / 10, "seconds": s / 10})
        classes += 5
    rec = {"head": head, "objective": "l2", "T": 10, "gamma": 0.1, "lr": 0.008, "batch_size": batch_size,
           "criterion": "new", "seed": seed, "total_classes": 100, "start_classes": 30, "new_classes": 5,
           "classes": classes - 5, "complete": False,
           "step": end, "seconds": end / 10, "eval_seconds": end / 40, "levels": levels}
    (sub / "curriculum.json").write_text(json.dumps(rec))


def test_curriculum_report_merges_subruns_and_draws(tmp_path, capsys):
    root = tmp_path / "omni"
    flat = [10] * 11  # levels of 30 ... 80 classes; only 85, 90, 95 count
    _curriculum_run(root, "softmax-s0", "softmax", 0, flat + [50, 60, 70])
    _curriculum_run(root, "softmax-s1", "softmax", 1, flat + [70, 60, 50])
    _curriculum_run(root, "hebbian-s0", "hebbian", 0, flat + [20, 30, 40])
    _curriculum_run(root, "hebbian-s1", "hebbian", 1, flat + [40, 30, 20])
    assert cli.main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| hebbian-l2-T10-g0.1-lr0.008-b32 | 2 | 95/95 |" in out and "| 30.0 ± 0.0 | 2.00× | 0.550 |" in out
    assert "| softmax-lr0.008-b32 | 2 |" in out and "| 60.0 ± 0.0 | 1.00× |" in out
    merged = json.loads((root / "curriculum.json").read_text())
    assert set(merged["combinations"]) == {"hebbian-l2-T10-g0.1-lr0.008-b32", "softmax-lr0.008-b32"}
    seeds = merged["combinations"]["softmax-lr0.008-b32"]["seeds"]
    assert seeds["1"]["levels"][-1] == {"level": 13, "classes": 95, "steps": 50, "end_step": 290, "accuracy": 0.7,
                                        "accuracy_all": 0.6, "seconds": 5.0}
    for name in ("steps_per_level.png", "classes_vs_steps.png"):
        assert (root / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "steps_per_level.png" in (root / "report" / "report.md").read_text()


def test_curriculum_report_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    _curriculum_run(tmp_path / "omni", "softmax-s0", "softmax", 0, [10])
    _write_run(tmp_path, "lm", head="softmax", metrics=[{"step": 10, "val/ppl": 100.0}])
    assert cli.main(["report", str(tmp_path / "omni"), str(tmp_path / "lm")]) == 2
    assert "not both" in capsys.readouterr().err


def test_bucket_curves_are_read_and_drawn_one_panel_per_bucket(tmp_path: Path) -> None:
    per = lambda s: {n: 1000.0 / (i + 1) / s for i, n in enumerate(BUCKETS)}  # noqa: E731
    rows = [{"step": s, "val/ppl": 300.0 / s, "tokens": 1120 * s, "val/bucket_ppl": per(s)} for s in (1, 2, 3)]
    rows.insert(2, {"step": 2, "val/ppl": 1.0, "tokens": 2240, "val/bucket_ppl": per(9)})  # a resumed step: last wins
    a = _write_run(tmp_path, "a", head="softmax", metrics=rows)
    b = _write_run(tmp_path, "b", head="hebbian", metrics=[{"step": 5, "val/ppl": 9.0, "tokens": 5600}])  # no buckets
    assert read_run(a)["validation_buckets"] == [(1, 1120.0, per(1)), (2, 2240.0, per(9)), (3, 3360.0, per(3))]
    assert read_run(b)["validation_buckets"] == []
    result = build_report([a, b], tmp_path / "rep", title="curves")
    data = Path(result["validation_buckets"]).read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    assert width > 3 * height  # four panels side by side
    assert "](validation_buckets.png)" in result["markdown"].read_text(encoding="utf-8")
    only_b = build_report([b], tmp_path / "rep_b", title="no buckets")
    assert "validation_buckets" not in only_b and not (tmp_path / "rep_b" / "validation_buckets.png").exists()


# --------------------------------------------------------------------------- which report


def test_the_marker_chooses_the_report(tmp_path, capsys):
    # Settings that look like a language-model run, in a folder that says it is a catbAbI run.
    run = _write_run(tmp_path, "cb", head="softmax", metrics=[{"step": 5, "val/acc": 0.5, "train/acc": 0.25}])
    (run / "run.json").write_text(json.dumps({"recipe": "catbabi", "fastbind": "0.1.0"}))
    assert cli.main(["report", str(run), f"out={tmp_path / 'rep'}"]) == 0
    assert (tmp_path / "rep" / "accuracy.png").is_file() and "| last validation mean | 50.0 |" in capsys.readouterr().out


def test_a_recipe_without_a_report_and_mixed_families_are_one_line_errors(runs, tmp_path, capsys):
    other = _write_run(tmp_path, "rl", head="softmax", metrics=[{"step": 1, "reward": 1.0}])
    (other / "run.json").write_text(json.dumps({"recipe": "meta-rl", "fastbind": "0.1.0"}))
    assert cli.main(["report", str(runs[0]), str(other), f"out={tmp_path / 'rep'}"]) == 2
    assert "`fastbind meta-rl` run, which has no report" in _one_line_error(capsys)
    omni = tmp_path / "omni"
    _curriculum_run(omni, "softmax-s0", "softmax", 0, [10])
    (omni / "run.json").write_text(json.dumps({"recipe": "curriculum", "fastbind": "0.1.0"}))
    assert cli.main(["report", str(runs[0]), str(runs[1]), str(omni), f"out={tmp_path / 'rep'}"]) == 2
    err = _one_line_error(capsys)
    assert f"{runs[0]} holds language-model runs and {omni} Omniglot curriculum runs" in err and "not both" in err
    assert not (tmp_path / "rep").exists()


def test_catbabi_table_gives_the_mean_without_qa3():
    from fastbind.report.catbabi import catbabi_table, mean_without
    per_task = {"qa1": 1.0, "qa2": 0.5, "qa3": 0.0}
    assert mean_without(per_task) == 0.75 and mean_without(None) is None
    run = {"name": "r", "arch": "fwm", "mode": "qa", "train": [], "tokens_per_step": 1,
           "results": {"per_task": per_task, "mean": 0.5, "step": 10},
           "valid": [(10, 0.4)], "valid_tasks": [(10, {"qa1": 0.9, "qa2": 0.3, "qa3": 0.0})]}
    table = catbabi_table([run])
    assert "| mean without qa3 | 75.0 |" in table and "| last validation mean without qa3 | 60.0 |" in table


def test_catbabi_validation_table_by_step():
    from fastbind.report.catbabi import validation_table
    runs = [{"name": "a", "valid": [(s, s / 1000) for s in range(250, 2250, 250)]},
            {"name": "b", "valid": [(500, 0.5)]}]
    table = validation_table(runs, columns=4)
    head, _, row_a, row_b = table.splitlines()
    assert head == "| run | 250 | 750 | 1,500 | 2,000 |"  # evenly spread, the last included
    assert row_a == "| a | 25.0 | 75.0 | 150.0 | 200.0 |" and row_b == "| b | – | – | – | – |"
