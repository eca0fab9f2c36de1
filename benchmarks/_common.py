"""Pieces shared by the benchmark scripts (run by path, so this sibling module is importable)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fastbind import __version__
from fastbind._io import atomic_write


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for cuBLAS and cuDNN inside the block (correctness checks compare float32 results;
    the timings keep PyTorch's defaults)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def environment(device: torch.device) -> dict:
    """What a result depends on: versions, threads, device and machine."""
    return {
        "fastbind": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "device": str(device), "machine": platform.machine(),
        "processor": platform.processor(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda_version": torch.version.cuda if device.type == "cuda" else None,
    }


def write_result(path: Path, result: dict) -> None:
    """Write the JSON result (creating its folder) and say where."""
    text = json.dumps(result, indent=2).encode()
    atomic_write(path, lambda fh: fh.write(text))
    print(f"wrote {path}")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a − b|`` in float64 on the CPU (0 for empty tensors): the benchmarks' correctness columns."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    return float((a.detach().double() - b.detach().double().to(a.device)).abs().max())


def matmul_times(n: int, reps: int, device: torch.device) -> list[float]:
    """Seconds of ``reps`` float32 ``(n, n) @ (n, n)`` products, after one warm-up."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n, generator=g).to(device)
    w = torch.randn(n, n, generator=g).to(device)
    torch.mm(x, w)
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(x, w)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak(n: int, times: list[float]) -> dict:
    """Peak FLOP/s from matmul timings: the median (used for fractions) and the best."""
    med = statistics.median(times)
    return {"size": n, "runs": len(times), "seconds_median": med, "flops_per_s": 2 * n**3 / med,
            "flops_per_s_best": 2 * n**3 / min(times)}


def interleaved_rounds(runners: dict, a, device: torch.device, train_flops_per_token: float) -> tuple[dict, dict, dict]:
    """Time training loops side by side: ``runners`` (name → a call returning ``{"tokens",
    "seconds", "mean_loss", ...}``) run once each with ``a.warmup_steps`` steps (when set), then
    ``a.rounds`` rounds, each in a rotated order, the matmul peak sampled before and after every
    round. Returns ``(rounds, results, peak)``: each variant's round records, its medians
    (tokens/s, achieved FLOP/s, fraction of the peak, losses, tokens), and the peak."""
    names = list(runners)
    peak_times = matmul_times(a.peak_size, a.peak_reps, device)
    if a.warmup_steps:
        timed_steps, a.steps = a.steps, a.warmup_steps
        for name in names:
            runners[name]()
        a.steps = timed_steps
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            res = runners[name]()
            res["tokens_per_s"] = res["tokens"] / res["seconds"]
            rounds[name].append(res)
        print(f"round {r + 1}/{a.rounds}: " + "  ".join(
            f"{n} {rounds[n][-1]['tokens_per_s']:,.0f} tok/s" for n in names), flush=True)
        peak_times += matmul_times(a.peak_size, a.peak_reps, device)
    peak = matmul_peak(a.peak_size, peak_times)
    results = {}
    for name in names:
        tps = [x["tokens_per_s"] for x in rounds[name]]
        med = statistics.median(tps)
        achieved = train_flops_per_token * med
        entry = {"tokens_per_s_median": med, "tokens_per_s_rounds": tps,
                 "seconds_rounds": [x["seconds"] for x in rounds[name]],
                 "achieved_flops_per_s": achieved, "fraction_of_peak": achieved / peak["flops_per_s"]}
        if name.startswith("fastbind"):
            logged = [x["tokens_per_s_logged"] for x in rounds[name] if x["tokens_per_s_logged"]]
            entry["tokens_per_s_logged_median"] = statistics.median(logged) if logged else None
        entry["mean_loss_rounds"] = [x["mean_loss"] for x in rounds[name]]
        entry["tokens_rounds"] = [x["tokens"] for x in rounds[name]]
        results[name] = entry
    return rounds, results, peak


def run_lm_train(config_for, prefix: str) -> dict:
    """One ``lm-train`` run (:func:`fastbind.lm.train`) in a temporary folder, timed by the recipe
    itself: ``config_for(out)`` gives its config. Returns ``{"seconds", "tokens",
    "tokens_per_s_logged", "mean_loss"}`` (the last logged rate and mean training loss)."""
    import tempfile  # noqa: PLC0415

    from fastbind.lm import train  # noqa: PLC0415
    from fastbind.training.metrics import read_metrics  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        out = Path(tmp) / "run"
        summary = train(config_for(out))
        records = read_metrics(out)
    logged = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r]  # one record: the mean over every step
    return {"seconds": summary["seconds_this_run"], "tokens": summary["train_tokens"],
            "tokens_per_s_logged": logged[-1] if logged else None, "mean_loss": losses[-1] if losses else None}


def load_catbabi_run(run_dir: Path, which: str = "best", data: str | None = None):
    """A ``fastbind catbabi`` run's checkpoint as ``(cfg, model in eval mode, data, checkpoint)``."""
    from fastbind.data.babi import load_babi
    from fastbind.models.registry import build_lm
    from fastbind.recipes.catbabi import CatbAbIConfig
    from fastbind.runs import RunFolder
    from fastbind.training.config import from_dict

    ck, _ = RunFolder(run_dir, writer=False).load_checkpoint(which, map_location="cpu")
    cfg = from_dict(CatbAbIConfig, ck["config"])
    babi = load_babi(data or cfg.data, seed=cfg.seed, valid_fraction=cfg.valid_fraction)
    model = build_lm(cfg, ck["vocab_size"])
    model.load_state_dict(ck["model"])
    model.eval()
    return cfg, model, babi, ck
