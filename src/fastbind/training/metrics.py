"""Metrics logging: one JSON line per call in ``run_dir/metrics.jsonl``, TensorBoard optional.

Example::

    with MetricsWriter(run_dir) as log:
        log.log(step, loss=float(loss), lr=sched.get_last_lr()[0])
        log.log(step, {"valid/ppl": ppl, "valid/bucket": {"<100": 9170.0}})
    rows = read_metrics(run_dir)          # [{"step": ..., "loss": ...}, ...]

Each line is a flat or nested JSON object with an integer ``"step"`` first. Values may be
Python numbers, strings, bools, 0-dim tensors or numpy scalars, or (nested) dicts and lists
of those. Non-finite floats are written as JSON's common ``NaN``/``Infinity`` extension,
which :func:`read_metrics` reads back. Only the primary rank writes; on other ranks the
writer does nothing. The file is appended to, so a resumed run continues the same file.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fastbind.errors import UserError
from fastbind.training import distributed

__all__ = ["METRICS_FILE", "MetricsWriter", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def _tensorboard_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except (ImportError, ModuleNotFoundError):
        return None
    return SummaryWriter


def _jsonable(value: Any, key: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r} is a tensor of shape {tuple(value.shape)}; log a scalar")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{key}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"metric {key!r} has unsupported type {type(value).__name__}")


def _scalars(prefix: str, value: Any) -> list[tuple[str, float]]:
    """Numbers inside ``value`` with ``/``-joined tags, for TensorBoard."""
    if isinstance(value, bool):
        return [(prefix, float(value))]
    if isinstance(value, (int, float)):
        return [(prefix, float(value))]
    if isinstance(value, dict):
        out: list[tuple[str, float]] = []
        for k, v in value.items():
            out.extend(_scalars(f"{prefix}/{k}", v))
        return out
    return []


class MetricsWriter:
    """Append metric dicts to ``run_dir/metrics.jsonl`` (and TensorBoard), primary rank only.

    Args:
        run_dir: The run folder (created if missing).
        tensorboard: Also write TensorBoard events to ``run_dir/tb``. None: when TensorBoard
            is installed. True: required (UserError if not installed). False: never.
        enabled: Whether this process writes; default: the primary rank.
    """

    def __init__(self, run_dir: str | os.PathLike[str], tensorboard: bool | None = None, *,
                 enabled: bool | None = None) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = distributed.is_primary() if enabled is None else bool(enabled)
        self._fh: Any = None
        self._tb: Any = None
        if tensorboard is not False:
            writer_cls = _tensorboard_writer_class()
            if writer_cls is None and tensorboard:
                raise UserError("tensorboard=True but TensorBoard is not installed (pip install 'fastbind[tb]')")
            if writer_cls is not None and self.enabled:
                self._tb = writer_cls(log_dir=str(self.run_dir / "tb"))
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    @property
    def tensorboard(self) -> bool:
        """True when TensorBoard events are being written."""
        return self._tb is not None

    def log(self, step: int, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Write one line ``{"step": step, **values, **kwargs}`` and flush it.

        Args:
            step: Training step (an int; tensors and numpy ints are accepted).
            values: Metric name to value; names may contain ``/`` to group in TensorBoard.
            **kwargs: More metrics, merged after ``values``.
        """
        if not self.enabled:
            return
        if self._fh is None:
            raise RuntimeError("MetricsWriter is closed")
        step = int(step)
        merged = {**(values or {}), **kwargs}
        if "step" in merged:
            raise ValueError("'step' is given as the first argument, not as a metric")
        row: dict[str, Any] = {"step": step}
        for k, v in merged.items():
            row[str(k)] = _jsonable(v, str(k))
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k == "step":
                    continue
                for tag, number in _scalars(k, v):
                    self._tb.add_scalar(tag, number, step)

    def close(self) -> None:
        """Flush and close the files; further ``log`` calls raise."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (or the one inside a run folder).

    A truncated last line (a run killed mid-write) is skipped; a malformed line elsewhere
    is an error.

    Args:
        path: The jsonl file or the run folder containing it.

    Returns:
        One dict per logged line, in order.

    Raises:
        UserError: The file is missing or a non-final line is not a JSON object.
    """
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    if not p.is_file():
        raise UserError(f"metrics file not found: {str(p)!r}")
    lines = p.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{str(p)!r} line {i + 1} is not valid JSON") from None
        if not isinstance(row, dict):
            raise UserError(f"{str(p)!r} line {i + 1} is not a JSON object")
        rows.append(row)
    return rows
