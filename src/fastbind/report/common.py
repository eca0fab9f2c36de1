"""What every family's report shares: opening a run folder, reading numbers, markdown cells.

Every family reads run folders that may be half written (a run still training, a run that was
never evaluated), so missing values are the rule: they read as None and print as ``–``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastbind.errors import UserError
from fastbind.runs import RunFolder

__all__ = ["MISSING", "cell", "format_int", "number", "open_run"]

MISSING = "–"


def number(value: Any) -> float | None:
    """A finite-or-infinite float, or None for anything that is not a number (or is NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def open_run(run_dir: str | Path) -> RunFolder:
    """The run folder at ``run_dir`` (read only); UserError when there is no folder."""
    run = RunFolder(run_dir, writer=False)
    if not run.path.exists():
        raise UserError(f"run folder not found: {str(run.path)!r}")
    if not run.path.is_dir():
        raise UserError(f"not a run folder: {str(run.path)!r}")
    return run


def format_int(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    return f"{int(value):,}"


def cell(text: Any) -> str:
    """A markdown table cell: ``–`` for None; ``|`` and newlines would break the row."""
    return MISSING if text is None else str(text).replace("|", "\\|").replace("\n", " ")
