"""The Omniglot curriculum report (``fastbind curriculum``): the Figure 3 and 9 analogues.

A curriculum run folder holds one sub-run per combination of settings and seed, each with a
``curriculum.json`` record of the levels it passed. The report merges those records
(:func:`fastbind.training.curriculum.merge_records`), tabulates steps per level after 80
classes against softmax, and draws steps per level and classes introduced over training,
each as a mean with a 2σ band over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastbind.errors import UserError
from fastbind.report.common import MISSING, open_run
from fastbind.report.plots import band, curve_png, line_style, pyplot
from fastbind.runs import RunFolder
from fastbind.training.curriculum import merge_records

__all__ = ["build_curriculum_report", "curriculum_records", "curriculum_table"]


def curriculum_records(run: RunFolder) -> list[dict[str, Any]]:
    """The per-run ``curriculum.json`` records of a curriculum run folder (its own or its sub-runs')."""
    def record(folder: RunFolder) -> dict[str, Any] | None:
        rec = folder.read_result("curriculum") if folder.exists() else None
        return rec if rec is not None and "levels" in rec else None  # not a merged file

    own = record(run)
    if own is not None:
        return [own]
    return [r for sub in run.subruns() if (r := record(sub)) is not None]


def _steps_per_level_png(merged: dict[str, Any], title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, c) in enumerate(merged["combinations"].items()):
        per_seed = [{r["classes"]: r["steps"] for r in rec["levels"]} for rec in c["seeds"].values()]
        xs = sorted({x for d in per_seed for x in d})
        if not xs:
            continue
        series = [[d.get(x, math.nan) for x in xs] for d in per_seed]
        band(ax, xs, series, line_style(i), f"{name} ({len(per_seed)} seed{'s' * (len(per_seed) > 1)})")
    return curve_png(fig, ax, "number of classes in the level", "training steps to pass the level",
                     f"{title}: steps per level (mean, 2σ band over seeds)")


def _classes_vs_steps_png(merged: dict[str, Any], title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    last = max((rec["step"] for c in merged["combinations"].values() for rec in c["seeds"].values()), default=0)
    grid = [last * i / 200 for i in range(201)]
    for i, (name, c) in enumerate(merged["combinations"].items()):
        series = []
        for rec in c["seeds"].values():
            start = rec["levels"][0]["classes"] if rec["levels"] else rec["classes"]
            # Classes introduced by step t: the first level's, then after each passed level its successor's.
            after = [(r["end_step"], min(r["classes"] + rec["new_classes"], rec["total_classes"]))
                     for r in rec["levels"]]
            row = []
            for t in grid:
                n = max([k for e, k in after if e <= t], default=start)
                row.append(n if t <= rec["step"] or rec.get("complete") else math.nan)
            series.append(row)
        band(ax, grid, series, line_style(i), name)
    return curve_png(fig, ax, "training steps", "classes introduced",
                     f"{title}: curriculum progress (mean, 2σ band over seeds)")


def curriculum_table(merged: dict[str, Any]) -> str:
    """One markdown line per combination: seeds, classes reached, mean steps per level after 80 classes,
    the speed-up against softmax and the accuracy over every class so far when the last level passed
    (mean over seeds): a head that binds new classes fast may do so at the old ones' expense."""
    lines = ["| combination | seeds | classes reached | steps (mean) | steps/level after 80 classes "
             "(mean ± sd over seeds) | speed-up vs softmax | accuracy over all classes at the last level "
             "| evaluation share of time |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in merged["summary"]:
        recs = list(merged["combinations"][row["combination"]]["seeds"].values())
        mean, sd = row["mean_steps_after_80"], row["std_over_seeds"]
        after = MISSING if mean is None else f"{mean:.1f}" + ("" if sd is None else f" ± {sd:.1f}")
        speed = MISSING if row["speedup_vs_softmax"] is None else f"{row['speedup_vs_softmax']:.2f}×"
        secs = sum(r["seconds"] for r in recs)
        share = f"{sum(r['eval_seconds'] for r in recs) / secs:.0%}" if secs > 0 else MISSING
        reached = "/".join(str(n) for n in row["classes_reached"])
        steps = sum(row["steps"]) / len(row["steps"])
        last = [r["levels"][-1]["accuracy_all"] for r in recs if r["levels"] and "accuracy_all" in r["levels"][-1]]
        acc = f"{sum(last) / len(last):.3f}" if last else MISSING
        lines.append(f"| {row['combination']} | {row['seeds']} | {reached} | {steps:,.0f} | {after} | {speed} | "
                     f"{acc} | {share} |")
    return "\n".join(lines)


def build_curriculum_report(run_dirs: Sequence[str | Path], out: str | Path,
                            title: str = "Omniglot curriculum") -> dict[str, Any]:
    """Merge curriculum runs into ``curriculum.json`` and draw the Figure 3 and 9 analogues.

    With one run folder the merged ``curriculum.json`` goes into it (beside its sub-runs),
    with several into ``out``. Figures and ``report.md`` go into ``out``.

    Returns:
        ``{"merged", "table", "markdown", "steps_per_level", "classes_vs_steps", "curriculum"}``.
    """
    runs = [open_run(d) for d in run_dirs]
    records = [r for run in runs for r in curriculum_records(run)]
    if not records:
        raise UserError(f"no curriculum.json in {', '.join(str(r.path) for r in runs)} or their sub-folders")
    merged = merge_records(records)
    table = curriculum_table(merged)
    figs = {"steps_per_level": _steps_per_level_png(merged, title),
            "classes_vs_steps": _classes_vs_steps_png(merged, title)}
    markdown = "\n".join([f"# {title}", "", table, "",
                          "Steps per level after 80 classes: mean over seeds of each seed's mean over the levels "
                          "that end with more than 80 classes; speed-up = the matching softmax run's value / this "
                          "one's (same lr, batch size and criterion).", "",
                          "![steps per level](steps_per_level.png)", "", "![classes vs steps](classes_vs_steps.png)",
                          ""])
    out = RunFolder(out)
    target = RunFolder(runs[0].path) if len(runs) == 1 else out
    paths = {"curriculum": target.write_result("curriculum", merged), "markdown": out.write_text("report.md", markdown)}
    for key, blob in figs.items():
        paths[key] = out.write_bytes(f"{key}.png", blob)
    return {**paths, "merged": merged, "table": table}
