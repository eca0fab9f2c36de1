"""The meta-RL report (``fastbind metarl``): test and training reward over episodes, agents side by side.

Runs are grouped by agent (architecture, LSTM width, fast-weight size, variant, and the
settings that change the task: reward input, critic, training graphs); the seeds of a group
give a mean curve and, from two seeds on, a ±2σ band. ``report.md`` has one row per group: the
test reward at fixed episode counts, each the mean of the tests in the ``WINDOW`` episodes
before it (one test is one noisy episode), the final training reward, and the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastbind.report.common import MISSING, cell, number, open_run
from fastbind.report.plots import band, curve_png, line_style, pyplot
from fastbind.runs import RunFolder

__all__ = ["WINDOW", "build_metarl_report", "metarl_table", "reward_at"]

WINDOW = 1000  # episodes: a reward "at E" is the mean of the tests in (E − WINDOW, E]
AT = (5000, 10000, 20000, 30000, 50000)


def reward_at(curve: list[tuple[int, float]], episode: int, window: int = WINDOW) -> float | None:
    """The mean of a ``[(episode, reward), ...]`` curve over ``(episode − window, episode]``; None
    when the curve does not reach ``episode``."""
    if not curve or curve[-1][0] < episode:
        return None
    vals = [r for e, r in curve if episode - window < e <= episode]
    return sum(vals) / len(vals) if vals else None


def _label(cfg: dict[str, Any]) -> str:
    agent, env, a2c = cfg.get("agent") or {}, cfg.get("env") or {}, cfg.get("a2c") or {}
    name = f"{str(agent.get('arch', '?')).upper()}-{agent.get('hidden', '?')}"
    if agent.get("arch") == "fwm":
        name += f"/{agent.get('fwm_size', '?')}"
        if agent.get("fwm_variant", "authors") != "authors":
            name += f" {agent.get('fwm_variant')}"
    extras = [f"{k}={v}" for k, v, default in (("reward_input", env.get("reward_input"), "authors"),
                                               ("critic", a2c.get("critic"), "authors"),
                                               ("train_graphs", cfg.get("train_graphs"), "fixed"))
              if v not in (None, default)]
    return " ".join([name, *extras])


def _metarl_run(run: RunFolder) -> dict[str, Any]:
    cfg = run.config_dict() or {}
    rows = run.read_metrics() if run.has_metrics() else []
    return {"name": run.name, "label": _label(cfg), "seed": cfg.get("seed"),
            "test": [(r["step"], r["test/reward"]) for r in rows if number(r.get("test/reward")) is not None],
            "train": [(r["step"], r["train/reward"]) for r in rows if number(r.get("train/reward")) is not None]}


def _groups(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r["label"], []).append(r)
    return out


def _mean_sd(values: list[float]) -> str:
    if not values:
        return MISSING
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.1f}"
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{m:.1f} ± {sd:.1f}"


def metarl_table(runs: list[dict[str, Any]]) -> str:
    """One row per agent group: test reward at each episode count of ``AT`` that some run reached
    (mean ± sd over the seeds that reached it), and the training reward at the episode count every
    seed of the group reached (the ``episodes`` column), so seeds of unequal length compare."""
    groups = _groups(runs)
    reached = max((r["test"][-1][0] for r in runs if r["test"]), default=0)
    at = [e for e in AT if e <= reached] or [reached]
    head = ("| agent | seeds | episodes | " + " | ".join(f"test reward at {e:,}" for e in at)
            + f" | training reward at `episodes` (the {WINDOW:,} before) |")
    lines = [head, "|---|---:|---:|" + "---:|" * (len(at) + 1)]
    for label, members in groups.items():
        episodes = [r["test"][-1][0] if r["test"] else (r["train"][-1][0] if r["train"] else 0) for r in members]
        cells = []
        for e in at:
            cells.append(_mean_sd([v for r in members if (v := reward_at(r["test"], e)) is not None]))
        common = min(episodes)
        train = [v for r in members if (v := reward_at(r["train"], common)) is not None]
        lines.append(f"| {cell(label)} | {len(members)} | {common:,} | " + " | ".join(cells)
                     + f" | {_mean_sd(train)} |")
    return "\n".join(lines)


def _curves_png(runs: list[dict[str, Any]], key: str, title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, members) in enumerate(_groups(runs).items()):
        curves = [r[key] for r in members if r[key]]
        if not curves:
            continue
        xs = sorted({e for c in curves for e, _ in c})
        series = [[dict(c).get(x, float("nan")) for x in xs] for c in curves]
        band(ax, xs, series, line_style(i), f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
    return curve_png(fig, ax, "training episodes", f"{key} reward per episode (mean over environments)", title)


def build_metarl_report(run_dirs: Sequence[str | Path], out: str | Path, title: str = "Meta-RL") -> dict[str, Any]:
    """Meta-RL runs side by side: ``report.md`` (the table), ``test_reward.png`` and ``train_reward.png``.

    Returns:
        ``{"table", "markdown", "test_reward", "train_reward", "runs"}``.
    """
    runs = [_metarl_run(open_run(d)) for d in run_dirs]
    table = metarl_table(runs)
    intro = (f"Test reward: one episode on the test graphs every `test_every` training episodes; each cell is the "
             f"mean of the tests in the {WINDOW:,} episodes up to that count, then the mean ± sd over seeds.")
    markdown = "\n".join([
        f"# {title}", "", intro, "", table, "", "![test reward](test_reward.png)", "", "![training reward](train_reward.png)", ""])
    folder = RunFolder(out)
    return {"table": table, "markdown": folder.write_text("report.md", markdown),
            "test_reward": folder.write_bytes("test_reward.png", _curves_png(runs, "test", f"{title}: test reward")),
            "train_reward": folder.write_bytes("train_reward.png",
                                               _curves_png(runs, "train", f"{title}: training reward")),
            "runs": runs}
