"""``fastbind report``: compare run folders in a markdown table and PNG figures.

Usage::

    fastbind report runs/ptb-softmax runs/ptb-hebbian
    fastbind report runs/* out=docs/figures split=valid title="PTB, 20 CPU-min"
    fastbind report runs/omniglot                     # a curriculum: Figures 3 and 9
    fastbind report runs/cb-fwm runs/cb-lstm          # catbAbI: accuracy per task

Each run folder says which recipe made it (``run.json``); all folders of one call must
come from one family of experiments, whose report (a module of :mod:`fastbind.report`)
writes into ``out``:

* language-model runs (``lm-train``, with ``lm-eval``/``lm-sweep`` results): ``validation.png``,
  ``validation_buckets.png``, ``buckets.png`` and ``report.md`` (a table in the style of
  Table 2 of Rae et al. 2018), default ``out`` beside the first run;
* Omniglot curriculum runs (``curriculum``): ``steps_per_level.png``, ``classes_vs_steps.png``,
  ``report.md`` and the merged ``curriculum.json``, default ``out`` inside the first run;
* catbAbI runs (``catbabi``): ``report.md`` (test accuracy per task) and ``accuracy.png``,
  default ``out`` beside the first run;
* continual-learning runs (``continual``): ``report.md`` (average accuracy, forgetting, backward
  transfer per method and variant), accuracy on task 1 and average accuracy as tasks
  accumulate, new-class accuracy after arrival (``imbalanced``), default ``out`` inside the first run;
* meta-RL runs (``metarl``): ``report.md`` (test reward at fixed episode counts, seeds grouped by
  agent), ``test_reward.png`` and ``train_reward.png``, default ``out`` beside the first run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastbind.errors import BadSetting, UserError
from fastbind.report.catbabi import build_catbabi_report
from fastbind.report.metarl import build_metarl_report
from fastbind.report.common import open_run
from fastbind.report.continual import build_continual_report
from fastbind.report.curriculum import build_curriculum_report
from fastbind.report.lm import build_report
from fastbind.training.config import format_help, parse_cli

__all__ = ["ReportConfig", "main"]

USAGE = "fastbind report RUN_DIR [RUN_DIR ...] [out=DIR] [split=test] [title=...]"


@dataclass
class ReportConfig:
    """Settings of ``fastbind report`` (every field is a ``key=value`` override)."""

    out: str | None = None  # output folder; None: beside the first run (inside it for a curriculum)
    split: str = "test"  # which eval-<split>.json to tabulate and plot (language-model runs)
    title: str = "fastbind runs"  # heading of report.md and figure titles

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any run is read
        if self.split not in ("valid", "test", "train"):
            raise BadSetting("split", "must be valid, test or train")


def _title(cfg: ReportConfig, default: str) -> str:
    return cfg.title if cfg.title != ReportConfig.title else default


def _lm(cfg: ReportConfig, run_dirs: list[str]) -> None:
    out = Path(cfg.out) if cfg.out else Path(run_dirs[0]).absolute().parent / "report"
    result = build_report([Path(d) for d in run_dirs], out, split=cfg.split, title=cfg.title)
    print(result["table"])
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for key in ("markdown", "validation", "validation_buckets", "buckets"):
        if key in result:
            print(f"wrote {result[key]}")


def _curriculum(cfg: ReportConfig, run_dirs: list[str]) -> None:
    out = Path(cfg.out) if cfg.out else Path(run_dirs[0]) / "report"
    result = build_curriculum_report(run_dirs, out, title=_title(cfg, "Omniglot curriculum"))
    print(result["table"])
    for key in ("curriculum", "markdown", "steps_per_level", "classes_vs_steps"):
        print(f"wrote {result[key]}")


def _catbabi(cfg: ReportConfig, run_dirs: list[str]) -> None:
    out = Path(cfg.out) if cfg.out else Path(run_dirs[0]).absolute().parent / "report"
    result = build_catbabi_report(run_dirs, out, title=_title(cfg, "catbAbI"))
    print(result["table"])
    for key in ("markdown", "accuracy"):
        print(f"wrote {result[key]}")


def _metarl(cfg: ReportConfig, run_dirs: list[str]) -> None:
    out = Path(cfg.out) if cfg.out else Path(run_dirs[0]).absolute().parent / "report"
    result = build_metarl_report(run_dirs, out, title=_title(cfg, "Meta-RL on random graphs"))
    print(result["table"])
    for key in ("markdown", "test_reward", "train_reward"):
        print(f"wrote {result[key]}")


def _continual(cfg: ReportConfig, run_dirs: list[str]) -> None:
    out = Path(cfg.out) if cfg.out else Path(run_dirs[0]) / "report"
    result = build_continual_report(run_dirs, out, title=_title(cfg, "Continual learning"))
    print(result["table"])
    print(f"wrote {result['markdown']}")
    for path in result["figures"].values():
        print(f"wrote {path}")


Report = Callable[[ReportConfig, list[str]], None]

# The recipe named in a run folder -> the report of its family. Folders that tell nothing
# (evaluation results without settings) are read as language-model runs, as they always were.
REPORTS: dict[str | None, tuple[str, Report]] = {
    "lm-train": ("language-model", _lm),
    None: ("language-model", _lm),
    "curriculum": ("Omniglot curriculum", _curriculum),
    "catbabi": ("catbAbI", _catbabi),
    "continual": ("continual-learning", _continual),
    "metarl": ("meta-RL", _metarl),
}


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {USAGE}\n\nsettings:\n{format_help(ReportConfig)}")
        return 0
    cfg, run_dirs = parse_cli(argv, ReportConfig)
    if not run_dirs:
        raise UserError(f"no run folders given (usage: {USAGE})")
    families = []
    for d in run_dirs:
        recipe = open_run(d).recipe()
        if recipe not in REPORTS:
            raise UserError(f"{d} holds a `fastbind {recipe}` run, which has no report")
        families.append(REPORTS[recipe])
    family, report = families[0]
    for d, (other, _) in zip(run_dirs, families, strict=True):
        if other != family:
            raise UserError(f"{run_dirs[0]} holds {family} runs and {d} {other} runs: report each family on its "
                            f"own, not both in one call")
    report(cfg, run_dirs)
    return 0
