"""The continual-learning report (``fastbind continual``): MbPA's headline pictures and tables.

A continual run folder holds one sub-run per combination (scenario, method, settings, seed),
each with a ``results.json``. The report groups the runs that differ only in their seed and
writes, per scenario:

* a table of average accuracy, forgetting and backward transfer (mean ± sd over seeds) for
  each method × variant (``base``, ``+mbpa``, ``+mbpa-rekey``) on the test split;
* ``<scenario>_task1.png``: accuracy on the first task as tasks accumulate (the paper's
  headline picture) and ``<scenario>_average.png``: average accuracy over the tasks seen so
  far against their number, one line per method and variant, mean ± 2σ over seeds;
* for ``imbalanced``, ``imbalanced_new.png``: new-class accuracy against steps after the new
  classes arrive, and a table of new / old / overall accuracy at each point;
* the MbPA sweeps found in the runs (``mbpa-sweep-<split>.json``), one row per setting.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastbind.errors import UserError
from fastbind.report.common import MISSING, open_run
from fastbind.report.plots import band, curve_png, line_style, pyplot
from fastbind.runs import RunFolder

__all__ = ["build_continual_report", "continual_records", "group_runs", "summary_table"]

METRICS = (("average_accuracy", "average accuracy"), ("forgetting", "forgetting"),
           ("backward_transfer", "backward transfer"))


def continual_records(run: RunFolder) -> list[dict[str, Any]]:
    """The ``results.json`` records of a continual run folder (its own, or its sub-runs')."""
    def record(folder: RunFolder) -> dict[str, Any] | None:
        rec = folder.read_result("results") if folder.exists() else None
        if rec is None or "variants" not in rec:
            return None
        sweeps = {name[len("mbpa-sweep-"):]: folder.read_result(name)
                  for name in folder.result_names("mbpa-sweep-*")}  # valid, test, valid-rekey, ...
        return {**rec, "run": folder.name, "sweeps": sweeps}

    own = record(run)
    if own is not None:
        return [own]
    return [r for sub in run.subruns() if (r := record(sub)) is not None]


def _key(r: dict[str, Any]) -> tuple:
    return (r["scenario"], r["dataset"], r.get("new_examples"), r["method"], r["lr"], r.get("ewc_lambda"),
            r.get("replay_ratio"), r.get("memory"), r.get("memory_policy", "reservoir"))


def _label(r: dict[str, Any]) -> str:
    parts = [r["method"], f"lr {r['lr']:g}"]
    if r.get("ewc_lambda") is not None:
        parts.append(f"λ {r['ewc_lambda']:g}")
    if r.get("replay_ratio") is not None:
        parts.append(f"mix {r['replay_ratio']:g}")
    if r.get("memory_policy", "reservoir") != "reservoir":
        parts.append(f"{r['memory_policy']} memory")
    return ", ".join(parts)


def group_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only in their seed, as one group each (``runs`` sorted by seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for key, runs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        runs.sort(key=lambda r: r["seed"])
        out.append({"scenario": key[0], "dataset": key[1], "new_examples": key[2], "label": _label(runs[0]),
                    "runs": runs})
    return out


def _mean_sd(values: list[float | None]) -> str:
    vals = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return MISSING
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def _scenario_name(g: dict[str, Any]) -> str:
    name = g["scenario"] if g["dataset"] == "fashion-mnist" else f"{g['scenario']} ({g['dataset']})"
    return name if g["new_examples"] is None else f"{name}, {g['new_examples']} per new class"


def summary_table(groups: list[dict[str, Any]], split: str = "test") -> str:
    """Average accuracy, forgetting and backward transfer (%, mean ± sd over seeds) per group × variant."""
    lines = ["| scenario | method | variant | seeds | tasks done | " + " | ".join(n for _, n in METRICS) + " |",
             "|---|---|---|---|---|" + "---|" * len(METRICS)]
    for g in groups:
        variants = list(g["runs"][0]["variants"])
        for v in variants:
            per_run = [(r["variants"] if split == "test" else r.get("valid", {})).get(v, {}) for r in g["runs"]]
            cells = [_mean_sd([m.get(key) for m in per_run]) for key, _ in METRICS]
            done = min(r["tasks_done"] for r in g["runs"])
            lines.append(f"| {_scenario_name(g)} | {g['label']} | {v} | {len(g['runs'])} | "
                         f"{done}/{len(g['runs'][0]['tasks'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arrival_table(groups: list[dict[str, Any]], split: str = "test") -> str | None:
    """Imbalanced runs: new / old / overall accuracy (%) at each point after the new classes arrive."""
    rows = []
    for g in groups:
        arrival = [r.get("arrival") for r in g["runs"]]
        if not all(arrival):
            continue
        steps = [p["step"] for p in arrival[0]]
        for v in g["runs"][0]["variants"]:
            for part in ("new", "old", "overall"):
                cells = [_mean_sd([next((p[split][v][part] for p in a if p["step"] == s), None) for a in arrival])
                         for s in steps]
                rows.append((g, v, part, steps, cells))
    if not rows:
        return None
    steps = sorted({s for row in rows for s in row[3]})  # every group's points; missing cells print as –
    rows = [(g, v, part, steps, [dict(zip(own, cells, strict=True)).get(s, MISSING) for s in steps])
            for g, v, part, own, cells in rows]
    lines = ["| new examples per class | method | variant | accuracy on | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|---|---|" + "---|" * len(steps)]
    for g, v, part, _, cells in rows:
        lines.append(f"| {g['new_examples']} | {g['label']} | {v} | {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(records: list[dict[str, Any]]) -> str | None:
    """Every MbPA sweep found: one row per run × setting, with the plain network's accuracy."""
    lines = []
    for r in records:
        for split, sweep in sorted(r["sweeps"].items()):
            if not sweep:
                continue
            for row in sweep["rows"]:
                where = split.replace("-rekey", ", keys recomputed").replace("-n", ", images per task ")
                lines.append(f"| {r['run']} | {where} | "
                             f"{100 * sweep['base']['average_accuracy']:.1f} | {row['size']} | {row['k']} | "
                             f"{row['steps']} | {row['lr']:g} | {row['l2']:g} | {100 * row['average_accuracy']:.1f} |")
    if not lines:
        return None
    return "\n".join(["| run | split | base | memory | K | steps | local lr | L2 | +mbpa |",
                      "|---|---|---|---|---|---|---|---|---|", *lines])


def _style(group: int, variant: str) -> dict[str, str]:
    """One colour per group (method and settings), one line style per variant."""
    dashes = {"base": "-", "+mbpa": "--", "+mbpa-rekey": ":"}
    return {"color": line_style(group)["color"], "linestyle": dashes.get(variant, "-.")}


def _curves_png(groups: list[dict[str, Any]], title: str, what: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for gi, g in enumerate(groups):
        for v in g["runs"][0]["variants"]:
            if any(row is None or row[0] is None for row in g["runs"][0]["variants"][v]["accuracy_matrix"][:1]):
                continue  # measured after the last task only (+mbpa-rekey): no curve
            T = max(len(r["tasks"]) for r in g["runs"])  # seeds may have finished different numbers of tasks
            series = []
            for r in g["runs"]:
                R = r["variants"][v]["accuracy_matrix"]
                if what == "task1":
                    ys = [100 * row[0] if row[0] is not None else math.nan for row in R]
                else:
                    ys = [100 * c if c is not None else math.nan for c in r["variants"][v]["average_accuracy_curve"]]
                series.append(ys + [math.nan] * (T - len(ys)))
            xs = list(range(1, T + 1))
            band(ax, xs, series, _style(gi, v), f"{g['label']} {v}")
    ax.set_ylim(0, 100)
    ylabel = "accuracy on task 1 (%)" if what == "task1" else "average accuracy over tasks seen (%)"
    return curve_png(fig, ax, "tasks trained", ylabel, title)


def _arrival_png(groups: list[dict[str, Any]], title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for gi, g in enumerate(groups):
        arrival = [r.get("arrival") or [] for r in g["runs"]]
        if not all(arrival):
            continue
        steps = [p["step"] for p in arrival[0]]
        for v in g["runs"][0]["variants"]:
            series = [[100 * next((p["test"][v]["new"] for p in a if p["step"] == s), math.nan) for s in steps]
                      for a in arrival]
            band(ax, steps, series, _style(gi, v), f"n={g['new_examples']} {g['label']} {v}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_ylim(0, 100)
    return curve_png(fig, ax, "steps after the new classes arrive", "new-class test accuracy (%)", title)


def build_continual_report(run_dirs: Sequence[str | Path], out: str | Path,
                           title: str = "Continual learning") -> dict[str, Any]:
    """Continual runs side by side: ``report.md`` and the figures (see the module docstring).

    Returns:
        ``{"table", "markdown", "figures", "groups"}``.
    """
    records = [r for d in run_dirs for r in continual_records(open_run(d))]
    if not records:
        raise UserError(f"no results.json in {', '.join(str(d) for d in run_dirs)} (has training started?)")
    groups = group_runs(records)
    folder = RunFolder(out)
    table = summary_table(groups)
    md = [f"# {title}", "", "Test accuracy (%), mean ± sd over seeds, after the last task trained; forgetting is the "
          "mean drop from each task's best accuracy to its final one, backward transfer the mean of "
          "R[T][j] − R[j][j]. Variants: the plain network (base), MbPA over the episodic memory with "
          "the keys written during training (+mbpa) or recomputed by the final network (+mbpa-rekey).", "", table, ""]
    figures = {}
    scenarios: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        scenarios.setdefault(g["scenario"] if g["dataset"] == "fashion-mnist" else f"{g['scenario']}-{g['dataset']}",
                             []).append(g)
    for name, gs in scenarios.items():
        if name == "imbalanced":
            figures[f"{name}_new"] = folder.write_bytes(f"{name}_new.png", _arrival_png(gs, f"{title}: {name}"))
            md += [f"## {name}: after the new classes arrive", "", arrival_table(gs) or "", "",
                   f"![new-class accuracy]({name}_new.png)", ""]
            continue
        figures[f"{name}_task1"] = folder.write_bytes(f"{name}_task1.png", _curves_png(gs, f"{title}: {name}", "task1"))
        figures[f"{name}_average"] = folder.write_bytes(f"{name}_average.png",
                                                        _curves_png(gs, f"{title}: {name}", "average"))
        md += [f"## {name}", "", f"![accuracy on task 1]({name}_task1.png)",
               f"![average accuracy]({name}_average.png)", ""]
    sweeps = sweep_table(records)
    if sweeps:
        md += ["## MbPA sweeps (evaluation only)", "", sweeps, ""]
    return {"table": table, "markdown": folder.write_text("report.md", "\n".join(md)), "figures": figures,
            "groups": groups}
