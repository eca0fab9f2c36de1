"""The language-model report: validation curves and a Table-2-style markdown table of runs.

Reads what ``lm-train``, ``lm-eval`` and ``lm-sweep`` leave in each run folder
(``config.json``, ``metrics.jsonl``, ``summary.json``, ``eval-<split>.json``, all through
:class:`fastbind.runs.RunFolder`) and writes into ``out``:

* ``validation.png``: validation perplexity against training tokens, one line per run;
* ``validation_buckets.png``: the same per training-frequency bucket, one panel per bucket
  (runs that logged ``val/bucket_ppl``);
* ``buckets.png``: perplexity per frequency bucket on ``split`` (plus the overall one),
  one bar per run and per evaluation variant (``+cache``, ``+mbpa``, ...);
* ``report.md``: the same numbers as a table in the style of Table 2 of Rae et al. (2018).

Evaluation records are read in one place, :func:`read_eval_variants`, so a change of their
layout touches one function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastbind._io import atomic_write
from fastbind.errors import UserError
from fastbind.report.common import MISSING, cell, format_int, number, open_run
from fastbind.report.plots import plain_log_y, png_bytes, pyplot
from fastbind.runs import BASE_VARIANT, METRICS_FILE, RunFolder

__all__ = ["build_report", "format_ppl", "markdown_table", "read_eval_variants", "read_run"]


def _display_name(run: RunFolder, head: str | None) -> str:
    name = run.name
    if head and head.lower() not in name.lower():
        name = f"{name} ({head})"
    return name


def read_eval_variants(run: RunFolder, split: str) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]] | None:
    """What the report takes from ``eval-<split>.json``: the variants and the record's context.

    Returns:
        ``(variants, context)``: ``variants`` is a list of ``(name, result)`` pairs, the model
        first, where ``result`` has the keys of an evaluation variant (``ppl``, ``tokens``,
        ``buckets``, ``settings``); ``context`` is the rest of the record (``split``,
        ``head``, ``data``, ...). None when the run has no such file.
    """
    ev = run.read_eval(split)
    if ev is None:
        return None
    return list(ev["variants"].items()), {k: v for k, v in ev.items() if k != "variants"}


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
    run = open_run(run_dir)
    if not run.has_metrics() and not run.result_names("eval-*"):
        raise UserError(f"{str(run.path)!r} has no {METRICS_FILE} and no eval-*.json; is it a run folder?")

    config = run.config_dict() or {}
    summary = run.read_summary() or {}
    evaluation = read_eval_variants(run, split)
    context = evaluation[1] if evaluation is not None else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    head = model.get("head") or summary.get("head") or context.get("head")
    data = config.get("data") or summary.get("data") or context.get("data")

    merged = {int(row["step"]): row for row in run.read_metrics()}  # one row per step, resumes merged
    validation, bucket_curves = [], []
    for step, row in merged.items():
        ppl = number(row.get("val/ppl"))
        if ppl is not None:
            tokens = number(row.get("tokens"))
            validation.append((step, tokens, ppl))
            per = row.get("val/bucket_ppl")
            if isinstance(per, dict):
                bucket_curves.append((step, tokens, {str(k): number(v) for k, v in per.items()}))

    finite = [p for _, _, p in validation if math.isfinite(p)]
    best = min(finite) if finite else number(summary.get("best_val_ppl"))
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
        "eval": evaluation[0] if evaluation is not None else [(BASE_VARIANT, {})],
        "has_eval": evaluation is not None,
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
                "ppl": number(res.get("ppl")),
                "tokens": res.get("tokens"),
                "buckets": {str(b["name"]): number(b.get("ppl")) for b in buckets},
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
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        buckets = row.get("buckets") or {}
        cells = [
            cell(row.get("run")),
            cell(row.get("data")),
            cell(row.get("head")),
            format_int(row.get("steps")),
            format_ppl(row.get("best_val_ppl")),
            *([format_int(row.get("tokens"))] if show_tokens else []),
            format_ppl(row.get("ppl")),
            *(format_ppl(buckets.get(name)) for name in bucket_names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tokens_line(rows: list[dict[str, Any]], bucket_names: list[str], split: str) -> str | None:
    first = next((r for r in rows if r["bucket_tokens"]), None)
    if first is None:
        return None
    parts = [f"{name} {format_int(first['bucket_tokens'].get(name))}" for name in bucket_names]
    total = f", {format_int(first['tokens'])} in all" if first.get("tokens") is not None else ""
    return f"Tokens per bucket on {split} ({cell(first['name'])}{total}): " + " · ".join(parts)



# --------------------------------------------------------------------------- figures


def _validation_png(runs: list[dict[str, Any]], title: str) -> bytes:
    from matplotlib.ticker import EngFormatter

    plt = pyplot()
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
        plain_log_y(ax)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation points in these runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training tokens" if use_tokens else "training step")
    if use_tokens:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(f"{title}: validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    return png_bytes(fig)


def _validation_buckets_png(runs: list[dict[str, Any]], title: str) -> bytes | None:
    """Validation perplexity per frequency bucket over training, one panel per bucket (a
    Figure 4 analogue); None when no run logged buckets."""
    from matplotlib.ticker import EngFormatter

    curves = [run["validation_buckets"] for run in runs]
    names = list(dict.fromkeys(b for c in curves for _, _, per in c for b in per))
    if not names:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    use_tokens = all(t is not None for c in curves for _, t, _ in c)
    for j, (name, ax) in enumerate(zip(names, axes[0], strict=True)):
        for i, (run, c) in enumerate(zip(runs, curves, strict=True)):
            pts = [(t if use_tokens else s, per[name]) for s, t, per in c
                   if per.get(name) is not None and math.isfinite(per[name])]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.3, color=f"C{i % 10}", label=run["name"])
        plain_log_y(ax)
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
    return png_bytes(fig)


_HATCHES = ("", "//", "..", "xx", "\\\\", "oo")


def _buckets_png(runs: list[dict[str, Any]], rows: list[dict[str, Any]], bucket_names: list[str],
                 split: str, title: str) -> bytes:
    plt = pyplot()
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
        plain_log_y(ax)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no eval-{split}.json in these runs", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return png_bytes(fig)


# --------------------------------------------------------------------------- report



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
        table), ``"rows"`` (one dict per run and evaluation variant, as taken by
        :func:`markdown_table`), ``"bucket_names"`` and ``"notes"`` (runs without
        ``eval-<split>.json`` or without validation points).

    Raises:
        UserError: No run folders, or one that is missing, empty or unreadable.
    """
    if not run_dirs:
        raise UserError("no run folders given")
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


