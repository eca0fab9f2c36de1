"""The catbAbI report (``fastbind catbabi``): test accuracy per bAbI task, runs side by side,
and answer accuracy over training (``accuracy.png``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastbind.report.common import MISSING, cell, format_int, number, open_run
from fastbind.report.plots import curve_png, line_style, pyplot
from fastbind.runs import RunFolder

__all__ = ["CATBABI_RESULTS", "build_catbabi_report", "catbabi_table", "mean_without", "validation_table"]

CATBABI_RESULTS = "results"  # what `fastbind catbabi` writes: results.json
# qa3 has no 10k training file in the release (it trains on its 1k file): the mean over the
# other tasks is the one that compares with results trained on full data.
SHORT_TASK = "qa3"


def mean_without(per_task: dict[str, float] | None, task: str = SHORT_TASK) -> float | None:
    """The mean accuracy over the tasks other than ``task`` (None without results)."""
    rest = [v for t, v in (per_task or {}).items() if t != task]
    return sum(rest) / len(rest) if rest else None


def _catbabi_run(run: RunFolder) -> dict[str, Any]:
    cfg = run.config_dict() or {}
    model = cfg.get("model") or {}
    rows = run.read_metrics() if run.has_metrics() else []
    return {
        "name": run.name, "arch": model.get("arch"), "mode": cfg.get("mode"),
        "results": run.read_result(CATBABI_RESULTS),
        "valid": [(r["step"], r["val/acc"]) for r in rows if number(r.get("val/acc")) is not None],
        "valid_tasks": [(r["step"], r["val/acc_task"]) for r in rows if isinstance(r.get("val/acc_task"), dict)],
        "train": [(r["step"], r["train/acc"]) for r in rows if number(r.get("train/acc")) is not None],
        "tokens_per_step": cfg.get("batch_size", 0) * cfg.get("seg_len", 0),
    }


def catbabi_table(runs: list[dict[str, Any]]) -> str:
    """Test accuracy per task (rows) for each run (columns), then the mean over tasks and the last
    validation mean; ``–`` where a run has no results yet."""
    tasks = sorted({t for r in runs if r["results"] for t in r["results"]["per_task"]}, key=lambda t: int(t[2:]))
    head = "| task | " + " | ".join(cell(f"{r['name']} ({r['arch']}, {r['mode']})") for r in runs) + " |"
    lines = [head, "|---|" + "--:|" * len(runs)]

    def pct(x: Any) -> str:
        return MISSING if number(x) is None else f"{100 * x:.1f}"

    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(pct((r["results"] or {}).get("per_task", {}).get(t)) for r in runs)
                     + " |")
    lines.append("| **mean** | " + " | ".join(f"**{pct((r['results'] or {}).get('mean'))}**" for r in runs) + " |")
    lines.append(f"| mean without {SHORT_TASK} | " + " | ".join(pct(mean_without((r["results"] or {}).get("per_task")))
                                                             for r in runs) + " |")
    lines.append("| test step | " + " | ".join(format_int((r["results"] or {}).get("step")) for r in runs) + " |")
    lines.append("| last validation mean | " + " | ".join(pct(r["valid"][-1][1] if r["valid"] else None)
                                                        for r in runs) + " |")
    lines.append(f"| last validation mean without {SHORT_TASK} | " + " | ".join(
        pct(mean_without(r["valid_tasks"][-1][1]) if r["valid_tasks"] else None) for r in runs) + " |")
    return "\n".join(lines)


def validation_table(runs: list[dict[str, Any]], columns: int = 12) -> str:
    """Validation mean accuracy (%) by step: one row per run, at most ``columns`` steps (evenly
    spread over the steps any run validated at, the last always among them)."""
    steps = sorted({s for r in runs for s, _ in r["valid"]})
    if len(steps) > columns:
        steps = sorted({steps[round(i * (len(steps) - 1) / (columns - 1))] for i in range(columns)})
    lines = ["| run | " + " | ".join(f"{s:,}" for s in steps) + " |", "|---|" + "---:|" * len(steps)]
    for r in runs:
        at = dict(r["valid"])
        lines.append(f"| {cell(r['name'])} | " + " | ".join(MISSING if s not in at else f"{100 * at[s]:.1f}"
                                                           for s in steps) + " |")
    return "\n".join(lines)


def _catbabi_png(runs: list[dict[str, Any]], title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(runs):
        style = line_style(i)
        if r["valid"]:
            xs, ys = zip(*r["valid"], strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, linewidth=1.6,
                    label=f"{r['name']} validation", **style)
        if r["train"]:
            xs, ys = zip(*r["train"], strict=True)
            ax.plot(xs, [100 * y for y in ys], linewidth=0.8, alpha=0.45, label=f"{r['name']} training",
                    color=style["color"], linestyle=":")
    ax.set_ylim(0, 100)
    return curve_png(fig, ax, "training steps", "answer accuracy (%, mean over tasks for validation)",
                     f"{title}: answer accuracy")


def build_catbabi_report(run_dirs: Sequence[str | Path], out: str | Path, title: str = "catbAbI") -> dict[str, Any]:
    """catbAbI runs side by side: ``report.md`` (test accuracy per task) and ``accuracy.png``
    (validation accuracy over training, and the training answers' accuracy).

    Returns:
        ``{"table", "markdown", "accuracy", "runs"}``.
    """
    runs = [_catbabi_run(open_run(d)) for d in run_dirs]
    table = catbabi_table(runs)
    markdown = "\n".join([f"# {title}", "", "Test accuracy on answer tokens (%), per bAbI task and the mean over "
                          "tasks, with each run's best-validation checkpoint.", "", table, "",
                          "Validation accuracy (%, mean over tasks) by training step:", "", validation_table(runs), "",
                          "![answer accuracy](accuracy.png)", ""])
    folder = RunFolder(out)
    return {"table": table, "markdown": folder.write_text("report.md", markdown),
            "accuracy": folder.write_bytes("accuracy.png", _catbabi_png(runs, title)), "runs": runs}
