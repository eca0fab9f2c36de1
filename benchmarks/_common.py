"""Pieces shared by the benchmark scripts (run by path, so this sibling module is importable)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from fastbind import __version__


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    """What a result depends on: versions, threads, device and machine."""
    return {
        "fastbind": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "device": str(device), "machine": platform.machine(),
        "processor": platform.processor(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def write_result(path: Path, result: dict) -> None:
    """Write the JSON result (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
