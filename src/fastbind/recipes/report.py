"""``fastbind report``: compare run folders in a markdown table and two PNG figures.

Usage::

    fastbind report runs/ptb-softmax runs/ptb-hebbian
    fastbind report runs/* out=docs/figures split=valid title="PTB, 20 CPU-min"

Reads what ``lm-train`` and ``lm-eval`` leave in each run folder (``config.json``,
``metrics.jsonl``, ``summary.json``, ``eval-<split>.json``, all through
:class:`fastbind.runs.RunFolder`) and writes into ``out``
(default ``<parent of the first run>/report``):

* ``validation.png``: validation perplexity against training tokens, one line per run;
* ``validation_buckets.png``: the same per training-frequency bucket, one panel per bucket
  (runs that logged ``val/bucket_ppl``);
* ``buckets.png``: perplexity per frequency bucket on ``split`` (plus the overall one),
  one bar per run and per dynamic-evaluation variant (``+cache``, ``+mbpa``, ...);
* ``report.md``: the same numbers as a table in the style of Table 2 of Rae et al. (2018).

Omniglot curriculum runs (``fastbind curriculum``) get the Figure 3 and 9 analogues, and
catbAbI runs (``fastbind catbabi``) a per-task test-accuracy table with validation curves
(``accuracy.png``).

Other recipes call :func:`build_report` directly.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastbind._io import atomic_write
from fastbind.errors import BadSetting, UserError
from fastbind.runs import BASE_VARIANT, METRICS_FILE, RunFolder
from fastbind.training.config import format_help, parse_cli
from fastbind.training.curriculum import merge_records

__all__ = ["ReportConfig", "build_catbabi_report", "build_report", "format_ppl", "main", "markdown_table", "read_run"]

MISSING = "–"
USAGE = "fastbind report RUN_DIR [RUN_DIR ...] [out=DIR] [split=test] [title=...]"


@dataclass
class ReportConfig:
    """Settings of ``fastbind report`` (every field is a ``key=value`` override)."""

    out: str | None = None  # output folder; None: <parent of the first run>/report
    split: str = "test"  # which eval-<split>.json to tabulate and plot
    title: str = "fastbind runs"  # heading of report.md and figure titles

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any run is read
        if self.split not in ("valid", "test", "train"):
            raise BadSetting("split", "must be valid, test or train")


# --------------------------------------------------------------------------- reading runs


def _number(value: Any) -> float | None:
    """A finite-or-infinite float, or None for anything that is not a number (or is NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _display_name(run: RunFolder, head: str | None) -> str:
    name = run.name
    if head and head.lower() not in name.lower():
        name = f"{name} ({head})"
    return name


def _open_run(run_dir: str | Path) -> RunFolder:
    """The run folder at ``run_dir`` (read only); UserError when there is no folder."""
    run = RunFolder(run_dir, writer=False)
    if not run.path.exists():
        raise UserError(f"run folder not found: {str(run.path)!r}")
    if not run.path.is_dir():
        raise UserError(f"not a run folder: {str(run.path)!r}")
    return run


def read_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Collect what a language-model run folder says about itself.

    Args:
        run_dir: A folder written by ``lm-train`` and/or ``lm-eval``.
        split: Which ``eval-<split>.json`` to read.

    Returns:
        ``{"dir", "name", "data", "head", "steps", "best_val_ppl", "validation",
        "validation_buckets", "eval"}``: ``validation`` is a list of ``(step, tokens or None,
        ppl)`` in step order, ``validation_buckets`` of ``(step, tokens or None, {bucket:
        ppl})`` for the validations that logged buckets; ``eval``
        is a list of ``(variant, result)`` pairs, the model first, where ``result`` has
        the keys of an evaluation variant (empty when there is no ``eval-<split>.json``).

    Raises:
        UserError: The folder does not exist, has neither ``metrics.jsonl`` nor any
            ``eval-*.json``, or one of its files cannot be parsed.
    """
    run = _open_run(run_dir)
    if not run.has_metrics() and not run.result_names("eval-*"):
        raise UserError(f"{str(run.path)!r} has no {METRICS_FILE} and no eval-*.json; is it a run folder?")

    config = run.config_dict() or {}
    summary = run.read_summary() or {}
    ev = run.read_eval(split)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    head = model.get("head") or summary.get("head") or (ev or {}).get("head")
    data = config.get("data") or summary.get("data") or (ev or {}).get("data")

    merged = {int(row["step"]): row for row in run.read_metrics()}  # one row per step, resumes merged
    validation, bucket_curves = [], []
    for step, row in merged.items():
        ppl = _number(row.get("val/ppl"))
        if ppl is not None:
            tokens = _number(row.get("tokens"))
            validation.append((step, tokens, ppl))
            per = row.get("val/bucket_ppl")
            if isinstance(per, dict):
                bucket_curves.append((step, tokens, {str(k): _number(v) for k, v in per.items()}))

    finite = [p for _, _, p in validation if math.isfinite(p)]
    best = min(finite) if finite else _number(summary.get("best_val_ppl"))
    last_steps = [s for s in (max(merged, default=None), summary.get("step")) if isinstance(s, int)]
    return {
        "dir": run.path,
        "name": _display_name(run, head if isinstance(head, str) else None),
        "data": str(data) if data is not None else None,
        "head": str(head) if head is not None else None,
        "steps": max(last_steps) if last_steps else None,
        "best_val_ppl": best,
        "validation": validation,
        "validation_buckets": bucket_curves,
        "eval": list(ev["variants"].items()) if ev is not None else [(BASE_VARIANT, {})],
        "has_eval": ev is not None,
    }


def _rows(runs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for variant, res in run["eval"]:
            buckets = res.get("buckets") if isinstance(res.get("buckets"), list) else []
            buckets = [b for b in buckets if isinstance(b, dict) and "name" in b]
            label = run["name"] if variant == BASE_VARIANT else f"{run['name']} {variant}"
            rows.append({
                "run": label,
                "name": run["name"],
                "variant": variant,
                "dir": str(run["dir"]),
                "data": run["data"],
                "head": run["head"],
                "steps": run["steps"],
                "best_val_ppl": run["best_val_ppl"],
                "split": split,
                "ppl": _number(res.get("ppl")),
                "tokens": res.get("tokens"),
                "buckets": {str(b["name"]): _number(b.get("ppl")) for b in buckets},
                "bucket_tokens": {str(b["name"]): b.get("tokens") for b in buckets},
            })
    return rows


def _bucket_names(rows: list[dict[str, Any]]) -> list[str]:
    """Bucket names in the order they first appear (eval files list most frequent first)."""
    names: list[str] = []
    for row in rows:
        names += [n for n in row["buckets"] if n not in names]
    return names


def _unique_names(runs: list[dict[str, Any]]) -> None:
    """Prefix clashing display names with their parent folder (runs/a vs other/a)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["name"]] = counts.get(run["name"], 0) + 1
    for run in runs:
        if counts[run["name"]] > 1:
            run["name"] = f"{run['dir'].resolve().parent.name}/{run['name']}"


# --------------------------------------------------------------------------- table


def format_ppl(value: float | None) -> str:
    """``124.5`` below 1000, ``6,803`` from 1000, ``–`` when missing, ``inf`` when infinite."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if round(value, 1) < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _format_int(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    return f"{int(value):,}"


def _cell(text: Any) -> str:
    return MISSING if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], bucket_names: Sequence[str], *, split: str | None = None) -> str:
    """A Table-2-style markdown table, one line per row of :func:`build_report`.

    Args:
        rows: Dicts with ``run``, ``data``, ``head``, ``steps``, ``best_val_ppl``, ``ppl``
            and ``buckets`` (bucket name to perplexity); missing keys print as ``–``. When
            the rows' ``tokens`` differ, a ``tokens`` column shows them.
        bucket_names: The bucket columns, in order.
        split: Name of the evaluated split for the header; default: the rows' ``split``
            key, else ``test``.

    Returns:
        The table, one line per row plus two header lines, without a trailing newline.
    """
    if split is None:
        split = next((r["split"] for r in rows if r.get("split")), "test")
    # Rows scored on different targets (e.g. MbPA on a sample, "@sample" variants) say how many.
    show_tokens = len({row.get("tokens") for row in rows} - {None}) > 1
    header = ["run", "data", "head", "steps", "valid ppl (best)", *(["tokens"] if show_tokens else []),
              f"{split} ppl", *bucket_names]
    align = ["---"] * 3 + ["--:"] * (len(header) - 3)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        buckets = row.get("buckets") or {}
        cells = [
            _cell(row.get("run")),
            _cell(row.get("data")),
            _cell(row.get("head")),
            _format_int(row.get("steps")),
            format_ppl(row.get("best_val_ppl")),
            *([_format_int(row.get("tokens"))] if show_tokens else []),
            format_ppl(row.get("ppl")),
            *(format_ppl(buckets.get(name)) for name in bucket_names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tokens_line(rows: list[dict[str, Any]], bucket_names: list[str], split: str) -> str | None:
    first = next((r for r in rows if r["bucket_tokens"]), None)
    if first is None:
        return None
    parts = [f"{name} {_format_int(first['bucket_tokens'].get(name))}" for name in bucket_names]
    total = f", {_format_int(first['tokens'])} in all" if first.get("tokens") is not None else ""
    return f"Tokens per bucket on {split} ({_cell(first['name'])}{total}): " + " · ".join(parts)


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display; also safe under ssh and CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _tick(value: float, _pos: Any = None) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def _plain_log_y(ax: Any) -> None:
    """Log y axis labelled 200 / 1,000 / 6,000 rather than 2x10^2; minor labels in short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    if hi / lo < 30:  # under ~1.5 decades there are too few major ticks to read values off
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.yaxis.set_minor_formatter(FuncFormatter(_tick))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _validation_png(runs: list[dict[str, Any]], title: str) -> bytes:
    from matplotlib.ticker import EngFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [p for run in runs for p in run["validation"]]
    # One x axis for all runs: tokens only when every validation point has them.
    use_tokens = bool(points) and all(t is not None for _, t, _ in points)
    for i, run in enumerate(runs):
        pts = [(t if use_tokens else s, p) for s, t, p in run["validation"] if math.isfinite(p)]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, color=f"C{i % 10}", label=run["name"])
    if any(run["validation"] for run in runs):
        _plain_log_y(ax)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation points in these runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training tokens" if use_tokens else "training step")
    if use_tokens:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(f"{title}: validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def _validation_buckets_png(runs: list[dict[str, Any]], title: str) -> bytes | None:
    """Validation perplexity per frequency bucket over training, one panel per bucket (a
    Figure 4 analogue); None when no run logged buckets."""
    from matplotlib.ticker import EngFormatter

    curves = [run["validation_buckets"] for run in runs]
    names = list(dict.fromkeys(b for c in curves for _, _, per in c for b in per))
    if not names:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    use_tokens = all(t is not None for c in curves for _, t, _ in c)
    for j, (name, ax) in enumerate(zip(names, axes[0], strict=True)):
        for i, (run, c) in enumerate(zip(runs, curves, strict=True)):
            pts = [(t if use_tokens else s, per[name]) for s, t, per in c
                   if per.get(name) is not None and math.isfinite(per[name])]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.3, color=f"C{i % 10}", label=run["name"])
        _plain_log_y(ax)
        ax.set_title(f"bucket {name}", fontsize=10)
        ax.set_xlabel("training tokens" if use_tokens else "training step")
        if use_tokens:
            ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if j == 0:
            ax.set_ylabel("validation perplexity (log scale)")
    # the legend goes on the first panel with curves (a bucket may have no tokens in validation)
    drawn = [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]
    if drawn:
        drawn[0].legend(fontsize=7)
    fig.suptitle(f"{title}: validation perplexity by training-frequency bucket", fontsize=11)
    fig.tight_layout()
    return _png(fig)


_HATCHES = ("", "//", "..", "xx", "\\\\", "oo")


def _buckets_png(runs: list[dict[str, Any]], rows: list[dict[str, Any]], bucket_names: list[str],
                 split: str, title: str) -> bytes:
    plt = _pyplot()
    groups = ["overall", *bucket_names]
    plotted = [r for r in rows if r["ppl"] is not None or any(v is not None for v in r["buckets"].values())]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 + 0.35 * len(groups) * max(len(plotted), 1)), 4.5))
    color = {run["name"]: f"C{i % 10}" for i, run in enumerate(runs)}
    hatch: dict[str, str] = {}
    width = 0.8 / max(len(plotted), 1)
    for j, row in enumerate(plotted):
        values = [row["ppl"], *(row["buckets"].get(n) for n in bucket_names)]
        ys = [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]
        xs = [g - 0.4 + width * (j + 0.5) for g in range(len(groups))]
        h = hatch.setdefault(row["variant"], _HATCHES[len(hatch) % len(_HATCHES)])
        bars = ax.bar(xs, ys, width=width, color=color[row["name"]], hatch=h, edgecolor="white",
                      linewidth=0.5, label=row["run"])
        if len(plotted) <= 8:
            labels = [format_ppl(v) if not math.isnan(v) else "" for v in ys]
            ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("word frequency in training data (bucket)")
    ax.set_ylabel(f"{split} perplexity (log scale)")
    ax.set_title(f"{title}: {split} perplexity by frequency bucket")
    if plotted:
        ax.set_yscale("log")
        ax.margins(y=0.15)
        _plain_log_y(ax)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no eval-{split}.json in these runs", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- report


def build_report(run_dirs: Sequence[str | Path], out: str | Path, split: str = "test",
                 title: str = "fastbind runs") -> dict[str, Any]:
    """Read run folders, write ``validation.png``, ``buckets.png`` and ``report.md`` to ``out``.

    Every input is read and every figure rendered before anything is written, so a bad
    run folder leaves ``out`` untouched; each file is written atomically.

    Args:
        run_dirs: Run folders, in the order of the table rows and legends.
        out: Output folder (created).
        split: Which ``eval-<split>.json`` to tabulate and plot.
        title: Heading of the markdown and the figures.

    Returns:
        ``{"markdown", "validation", "buckets"}`` (paths written), ``"table"`` (the markdown
        table), ``"rows"`` (one dict per run and dynamic-evaluation variant, as taken by
        :func:`markdown_table`), ``"bucket_names"`` and ``"notes"`` (runs without
        ``eval-<split>.json`` or without validation points).

    Raises:
        UserError: No run folders, or one that is missing, empty or unreadable.
    """
    if not run_dirs:
        raise UserError(f"no run folders given (usage: {USAGE})")
    runs = [read_run(d, split) for d in run_dirs]
    _unique_names(runs)
    rows = _rows(runs, split)
    names = _bucket_names(rows)
    table = markdown_table(rows, names, split=split)

    notes = [f"{run['name']}: no eval-{split}.json" for run in runs if not run["has_eval"]]
    notes += [f"{run['name']}: no validation points" for run in runs if not run["validation"]]
    lines = [f"# {title}", "", table, ""]
    tokens = _tokens_line(rows, names, split)
    if tokens:
        lines += [tokens, ""]
    lines += [
        f"Perplexity per frequency bucket of the training data (most to least frequent) on {split};",
        "valid ppl (best) is the lowest validation perplexity seen during training.",
        "",
    ]
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    lines += [
        "![validation perplexity vs training tokens](validation.png)",
        "",
        f"![{split} perplexity by frequency bucket](buckets.png)",
        "",
    ]
    validation = _validation_png(runs, title)
    per_bucket = _validation_buckets_png(runs, title)
    if per_bucket is not None:
        lines += ["![validation perplexity by bucket over training](validation_buckets.png)", ""]
    markdown = "\n".join(lines)
    buckets = _buckets_png(runs, rows, names, split, title)

    out = Path(out)
    paths = {"validation": out / "validation.png", "buckets": out / "buckets.png", "markdown": out / "report.md"}
    blobs = [("validation", validation), ("buckets", buckets), ("markdown", markdown.encode("utf-8"))]
    if per_bucket is not None:
        paths["validation_buckets"] = out / "validation_buckets.png"
        blobs.append(("validation_buckets", per_bucket))
    out.mkdir(parents=True, exist_ok=True)
    for key, blob in blobs:
        atomic_write(paths[key], lambda fh, blob=blob: fh.write(blob))
    return {**paths, "table": table, "rows": rows, "bucket_names": names, "notes": notes}


# --------------------------------------------------------------------------- curriculum runs


def curriculum_records(run: RunFolder) -> list[dict[str, Any]]:
    """The per-run ``curriculum.json`` records of a curriculum run folder (its own or its sub-runs')."""
    def record(folder: RunFolder) -> dict[str, Any] | None:
        rec = folder.read_result("curriculum") if folder.exists() else None
        return rec if rec is not None and "levels" in rec else None  # not a merged file

    own = record(run)
    if own is not None:
        return [own]
    return [r for sub in run.subruns() if (r := record(sub)) is not None]


def _style(i: int) -> dict[str, str]:
    """Colour and line style of the i-th line: ten colours, then the next line style."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}


def _band(ax: Any, xs: list[float], series: list[list[float]], style: dict[str, str], label: str) -> None:
    """Mean line and, with two or more series, a mean ± 2σ band (σ over the series at each x)."""
    import numpy as np

    a = np.array(series, dtype=float)  # (seeds, len(xs)), NaN where a seed has no value
    count = (~np.isnan(a)).sum(0)
    mean = np.full(len(xs), np.nan)
    mean[count > 0] = np.nanmean(a[:, count > 0], axis=0)  # NaN where no seed has a value (not drawn)
    ax.plot(xs, mean, linewidth=1.6, label=label, **style)
    if a.shape[0] > 1:
        ok = count > 1
        sd = np.zeros_like(mean)
        sd[ok] = np.nanstd(a[:, ok], axis=0, ddof=1)
        # Steps and classes are never negative: the band's lower edge stops at 0.
        ax.fill_between(np.array(xs)[ok], np.maximum(mean - 2 * sd, 0)[ok], (mean + 2 * sd)[ok],
                        color=style["color"], alpha=0.18,
                        linewidth=0)


def _curve_png(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> bytes:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def _steps_per_level_png(merged: dict[str, Any], title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, c) in enumerate(merged["combinations"].items()):
        per_seed = [{r["classes"]: r["steps"] for r in rec["levels"]} for rec in c["seeds"].values()]
        xs = sorted({x for d in per_seed for x in d})
        if not xs:
            continue
        series = [[d.get(x, math.nan) for x in xs] for d in per_seed]
        _band(ax, xs, series, _style(i), f"{name} ({len(per_seed)} seed{'s' * (len(per_seed) > 1)})")
    return _curve_png(fig, ax, "number of classes in the level", "training steps to pass the level",
                      f"{title}: steps per level (mean, 2σ band over seeds)")


def _classes_vs_steps_png(merged: dict[str, Any], title: str) -> bytes:
    plt = _pyplot()
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
        _band(ax, grid, series, _style(i), name)
    return _curve_png(fig, ax, "training steps", "classes introduced",
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
    runs = [_open_run(d) for d in run_dirs]
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


# --------------------------------------------------------------------------- catbAbI runs

CATBABI_RESULTS = "results"  # what `fastbind catbabi` writes: results.json


def is_catbabi_run(run: RunFolder) -> bool:
    """Whether the folder holds a ``fastbind catbabi`` run (its config has ``seg_len`` and ``mode``)."""
    cfg = run.config_dict() if run.exists() else None
    return bool(cfg) and "seg_len" in cfg and "mode" in cfg


def _catbabi_run(run: RunFolder) -> dict[str, Any]:
    cfg = run.config_dict() or {}
    model = cfg.get("model") or {}
    rows = run.read_metrics() if run.has_metrics() else []
    return {
        "name": run.name, "arch": model.get("arch"), "mode": cfg.get("mode"),
        "results": run.read_result(CATBABI_RESULTS),
        "valid": [(r["step"], r["val/acc"]) for r in rows if _number(r.get("val/acc")) is not None],
        "valid_tasks": [(r["step"], r["val/acc_task"]) for r in rows if isinstance(r.get("val/acc_task"), dict)],
        "train": [(r["step"], r["train/acc"]) for r in rows if _number(r.get("train/acc")) is not None],
        "tokens_per_step": cfg.get("batch_size", 0) * cfg.get("seg_len", 0),
    }


def catbabi_table(runs: list[dict[str, Any]]) -> str:
    """Test accuracy per task (rows) for each run (columns), then the mean over tasks and the last
    validation mean; ``–`` where a run has no results yet."""
    tasks = sorted({t for r in runs if r["results"] for t in r["results"]["per_task"]}, key=lambda t: int(t[2:]))
    head = "| task | " + " | ".join(_cell(f"{r['name']} ({r['arch']}, {r['mode']})") for r in runs) + " |"
    lines = [head, "|---|" + "--:|" * len(runs)]

    def pct(x: Any) -> str:
        return MISSING if _number(x) is None else f"{100 * x:.1f}"

    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(pct((r["results"] or {}).get("per_task", {}).get(t)) for r in runs)
                     + " |")
    lines.append("| **mean** | " + " | ".join(f"**{pct((r['results'] or {}).get('mean'))}**" for r in runs) + " |")
    lines.append("| test step | " + " | ".join(_format_int((r["results"] or {}).get("step")) for r in runs) + " |")
    lines.append("| last validation mean | " + " | ".join(pct(r["valid"][-1][1] if r["valid"] else None)
                                                        for r in runs) + " |")
    return "\n".join(lines)


def _catbabi_png(runs: list[dict[str, Any]], title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(runs):
        style = _style(i)
        if r["valid"]:
            xs, ys = zip(*r["valid"], strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, linewidth=1.6,
                    label=f"{r['name']} validation", **style)
        if r["train"]:
            xs, ys = zip(*r["train"], strict=True)
            ax.plot(xs, [100 * y for y in ys], linewidth=0.8, alpha=0.45, label=f"{r['name']} training",
                    color=style["color"], linestyle=":")
    ax.set_ylim(0, 100)
    return _curve_png(fig, ax, "training steps", "answer accuracy (%, mean over tasks for validation)",
                      f"{title}: answer accuracy")


def build_catbabi_report(run_dirs: Sequence[str | Path], out: str | Path, title: str = "catbAbI") -> dict[str, Any]:
    """catbAbI runs side by side: ``report.md`` (test accuracy per task) and ``accuracy.png``
    (validation accuracy over training, and the training answers' accuracy).

    Returns:
        ``{"table", "markdown", "accuracy", "runs"}``.
    """
    runs = [_catbabi_run(_open_run(d)) for d in run_dirs]
    table = catbabi_table(runs)
    markdown = "\n".join([f"# {title}", "", "Test accuracy on answer tokens (%), per bAbI task and the mean over "
                          "tasks, with each run's best-validation checkpoint.", "", table, "",
                          "![answer accuracy](accuracy.png)", ""])
    folder = RunFolder(out)
    return {"table": table, "markdown": folder.write_text("report.md", markdown),
            "accuracy": folder.write_bytes("accuracy.png", _catbabi_png(runs, title)), "runs": runs}


def is_curriculum_run(run: RunFolder) -> bool:
    """Whether the folder or one of its sub-runs holds a ``curriculum.json`` (nothing is parsed)."""
    return any(folder.result_names("curriculum") for folder in (run, *run.subruns()))


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {USAGE}\n\nsettings:\n{format_help(ReportConfig)}")
        return 0
    cfg, run_dirs = parse_cli(argv, ReportConfig)
    if not run_dirs:
        raise UserError(f"no run folders given (usage: {USAGE})")
    runs = [_open_run(d) for d in run_dirs]
    catbabi = {is_catbabi_run(r) for r in runs}
    if catbabi == {True}:
        out = Path(cfg.out) if cfg.out else Path(run_dirs[0]).absolute().parent / "report"
        title = cfg.title if cfg.title != ReportConfig.title else "catbAbI"
        result = build_catbabi_report(run_dirs, out, title=title)
        print(result["table"])
        for key in ("markdown", "accuracy"):
            print(f"wrote {result[key]}")
        return 0
    if len(catbabi) > 1:
        raise UserError("give either catbAbI run folders or other run folders, not both")
    kinds = {is_curriculum_run(r) for r in runs}
    if kinds == {True}:
        out = Path(cfg.out) if cfg.out else Path(run_dirs[0]) / "report"
        title = cfg.title if cfg.title != ReportConfig.title else "Omniglot curriculum"
        result = build_curriculum_report(run_dirs, out, title=title)
        print(result["table"])
        for key in ("curriculum", "markdown", "steps_per_level", "classes_vs_steps"):
            print(f"wrote {result[key]}")
        return 0
    if len(kinds) > 1:
        raise UserError("give either curriculum run folders or language-model run folders, not both")
    out = Path(cfg.out) if cfg.out else Path(run_dirs[0]).absolute().parent / "report"
    result = build_report([Path(d) for d in run_dirs], out, split=cfg.split, title=cfg.title)
    print(result["table"])
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for key in ("markdown", "validation", "validation_buckets", "buckets"):
        if key in result:
            print(f"wrote {result[key]}")
    return 0
