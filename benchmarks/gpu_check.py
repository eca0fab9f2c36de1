"""GPU check: the CUDA tests, the benchmarks on the GPU and a short training of each head, in one JSON file.

Run from a plain checkout on a machine with a GPU and PyTorch >= 2.1 (no install step, no
network, nothing outside the repository)::

    PYTHONPATH=src python benchmarks/gpu_check.py                          # synthetic corpus, 180 s
    PYTHONPATH=src python benchmarks/gpu_check.py --wikitext2 path/to/wikitext-2 --out gpu.json
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke                  # the same code on CPU, tiny (CI)

Stages, in order; each gets a share of ``--budget-s`` (time a stage leaves unused goes to the
ones after it), is stopped when it runs past its share, and is skipped with a note when too
little time is left. A stage that fails does not stop the others.

* ``environment``: versions (torch, CUDA, cuDNN, Python), the GPU and its memory, optional
  packages (matplotlib, pytest) present or not;
* ``cuda_tests``: ``python -m pytest -m cuda`` in a subprocess (CUDA against CPU for the
  Hebbian heads, the memories, FWM and the LM; tests/test_cuda.py), pass/fail counts;
* ``bench_hebbian``, ``bench_memory``, ``bench_lm``, ``bench_transformer``, ``bench_fwm``,
  ``bench_adaptive``: the benchmarks with ``--device``, each one's JSON kept whole, and their
  correctness columns checked against limits (``checks``);
* ``lm_train``: ``fastbind lm-train`` of an LSTM with each head (softmax, hebbian; full
  softmax) for a few hundred steps: steps/s and the final perplexities;
* ``lm_train_transformer``: the same for ``arch=transformer`` (2 blocks of 256, 4 heads,
  ``mlp_ratio`` 2, context 128): it trains on the device, its perplexities and rates are finite,
  and with the softmax head validation beats the uniform distribution.

Each stage records ``status`` (passed, failed: a check or test failed, error, timeout,
skipped), ``seconds``, ``results``, ``checks`` and, where something went wrong, ``error``
(the traceback as text). The JSON is rewritten after every stage, so a run that is killed
still leaves what it finished. Exit status 0 when no stage failed, errored or timed out.

``--smoke`` runs the same stages on the CPU at tiny sizes (budget 40 s; the CUDA tests are
collected and skip): the CI test tests/test_benchmarks_smoke.py runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fastbind
from fastbind._io import atomic_write

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STATUSES = ("passed", "failed", "error", "timeout", "skipped")


class StageTimeout(BaseException):
    """Raised inside a stage that runs past its share (a BaseException, so that library code
    catching ``Exception`` cannot swallow it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; without it, on other platforms or
    threads, the block runs to its end and only the budget check before a stage applies)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise StageTimeout(f"stopped after its share of the budget ({seconds:.0f} s)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- checks


def check(value, *, below: float | None = None, equals=None) -> dict:
    """One correctness check: the value, its limit and whether it holds (NaN never does)."""
    if below is not None:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value < below
        return {"value": value, "limit": f"< {below:g}", "ok": bool(ok)}
    return {"value": value, "limit": f"== {equals!r}", "ok": value == equals}


# ---------------------------------------------------------------- sizes


@dataclass
class Plan:
    """What the stages run: the device, the data and the sizes (GPU-sized or smoke-sized)."""

    device: str
    smoke: bool
    data: str  # "synthetic" or a WikiText-2 folder
    tmp: Path
    threads: list[str] = field(default_factory=list)  # ["--threads", "1"] in smoke runs

    @property
    def synthetic(self) -> bool:
        return self.data == "synthetic"

    def bench_args(self, name: str) -> list[str]:
        """Arguments of each benchmark (the device, the data, the sizes)."""
        dev = ["--device", self.device]
        if self.smoke:
            extra = {"bench_lm": ["--data", "synthetic"], "bench_adaptive": ["--data", "zipf"]}.get(name, [])
            return [*dev, "--quick", *self.threads, *extra]
        return dev + {
            "bench_hebbian": ["--vocab", "33278", "267735", "--dim", "256", "1024", "--reps", "11"],
            "bench_memory": ["--dim", "256", "1024"],
            "bench_lm": ["--data", self.data, "--steps", "50", "--rounds", "3"],
            "bench_transformer": ["--data", self.data, "--steps", "40", "--rounds", "3"],
            "bench_fwm": ["--rounds", "5"],
            "bench_adaptive": ["--data", "zipf" if self.synthetic else self.data, "--rounds", "5"],
        }[name]

    def lm_train_args(self, arch: str = "lstm") -> tuple[list[str], int]:
        """``lm-train`` settings of ``arch`` shared by both heads, and the number of steps."""
        if self.smoke:
            steps = 20
            # A large step size, so that 20 steps already beat the uniform distribution clearly.
            sizes = ["emb_dim=16", "batch_size=8", "eval_max_tokens=400", "log_every=5", "threads=1", "lr=0.01"]
            sizes += (["transformer.blocks=1", "transformer.heads=2", "transformer.context=16", "bptt=0"]
                      if arch == "transformer" else ["hidden=16", "bptt=16"])
            synth = {"train_tokens": 4000, "valid_tokens": 500, "test_tokens": 200, "background_vocab": 300,
                     "entity_pool": 200, "topic_words": 30}
        else:
            steps = 400
            sizes = ["emb_dim=256", "batch_size=32", "eval_max_tokens=50000", "log_every=50"]
            sizes += (["transformer.blocks=2", "transformer.heads=4", "transformer.mlp_ratio=2",
                       "transformer.context=128", "bptt=0"] if arch == "transformer" else ["hidden=256", "bptt=35"])
            synth = {"train_tokens": 500_000, "valid_tokens": 50_000, "test_tokens": 1000}
        args = [f"data={self.data}", f"device={self.device}", f"arch={arch}", "softmax=full", f"max_steps={steps}",
                f"eval_every={steps}", "progress=false", "tensorboard=false", "seed=0", *sizes]
        if self.synthetic:
            args += [f"synthetic.{k}={v}" for k, v in synth.items()]
        return args, steps


# ---------------------------------------------------------------- stages


def stage_environment(plan: Plan) -> tuple[dict, dict]:
    env = {
        "fastbind": fastbind.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "packages": {name: _version_of(name) for name in ("numpy", "tqdm", "matplotlib", "pytest")},
        "git_commit": _run_quietly(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "data": plan.data, "device": plan.device,
    }
    checks = {}
    if plan.device.startswith("cuda"):
        checks["cuda_available"] = check(torch.cuda.is_available(), equals=True)
        if torch.cuda.is_available():
            dev = torch.device(plan.device)
            props = torch.cuda.get_device_properties(dev)
            env["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                          "memory_gib": round(props.total_memory / 2**30, 1),
                          "capability": f"{props.major}.{props.minor}",
                          "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count(),
                          "bf16_supported": torch.cuda.is_bf16_supported()}
            env["nvidia_smi"] = _run_quietly(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                              "--format=csv,noheader"])
            # One product on the device against the CPU: the device computes at all.
            g = torch.Generator().manual_seed(0)
            a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
            diff = float(((a.to(dev) @ b.to(dev)).cpu() - a @ b).abs().max())
            checks["matmul_vs_cpu_max_abs_diff"] = check(diff, below=1e-2)  # TF32 may be on
    return env, checks


def stage_cuda_tests(plan: Plan, seconds: float) -> tuple[dict, dict]:
    if _version_of("pytest") is None:
        raise Skip("pytest is not installed")
    junit = plan.tmp / "cuda_tests.xml"
    paths = ["tests/test_cuda.py"] if plan.smoke else ["tests"]
    # A test module that cannot be imported here (an optional package missing) must not stop the rest.
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           "--continue-on-collection-errors", *paths]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as e:
        raise StageTimeout(f"pytest ran past {seconds:.0f} s:\n{_tail(e.stdout)}") from None
    counts = _junit_counts(junit) if junit.is_file() else _summary_counts(proc.stdout)
    results = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, **counts,
               "output_tail": _tail(proc.stdout + proc.stderr, 4000)}
    # rc 5: nothing collected/selected. Skips are fine on a CPU; on a GPU every test must run.
    checks = {"failed": check(counts.get("failed", 0) + counts.get("errors", 0), equals=0),
              "returncode": check(proc.returncode, equals=0)}
    if plan.device.startswith("cuda"):
        checks["ran_on_gpu"] = check(counts.get("passed", 0) > 0, equals=True)
    return results, checks


CHECKS: dict[str, Callable[[dict], dict]] = {}


def _checks(name: str):
    def register(fn):
        CHECKS[name] = fn
        return fn
    return register


@_checks("bench_hebbian")
def _(res: dict) -> dict:
    rows = res["results"]
    return {"memorize_max_abs_diff": check(max(r["memorize_max_abs_diff"] for r in rows), below=1e-5),
            "memorize_only_batch_rows_changed": check(all(r["memorize_only_batch_rows_changed"] for r in rows),
                                                      equals=True),
            "memorize_counts_exact": check(all(r["memorize_counts_exact"] for r in rows), equals=True)}


@_checks("bench_memory")
def _(res: dict) -> dict:
    rows = res["results"]
    return {"cache_vs_loop_max_abs_diff": check(max(r["cache_vs_loop"]["max_abs_diff"] for r in rows), below=1e-3),
            "mbpa_vs_naive_max_abs_diff": check(max(m["max_abs_diff"] for r in rows for m in r["mbpa_vs_naive"]),
                                                below=1e-3)}


@_checks("bench_lm")
def _(res: dict) -> dict:
    c = res["checks"]
    return {"equal_tokens": check(c["equal_tokens"], equals=True),
            "mean_loss_gap_softmax_plain": check(c["mean_loss_gap_softmax_plain"], below=0.1 * c["log_vocab"])}


@_checks("bench_transformer")
def _(res: dict) -> dict:
    c = res["checks"]
    return {"equal_tokens": check(c["equal_tokens"], equals=True),
            "mean_loss_gap_softmax_plain": check(c["mean_loss_gap_softmax_plain"], below=0.1 * c["log_vocab"]),
            "finite": check(c["finite"], equals=True),
            "flops_formula_matches_count": check(c["flops_formula_matches_count"], equals=True)}


@_checks("bench_fwm")
def _(res: dict) -> dict:
    c = res["checks"]
    scale = max(1.0, c["logits_max_abs"])
    return {"fwm_vs_fwm_step_logits_max_abs_diff": check(c["fwm_vs_fwm_step_logits_max_abs_diff"], below=1e-4 * scale),
            "fwm_vs_fwm_step_grad_max_abs_diff": check(c["fwm_vs_fwm_step_grad_max_abs_diff"], below=1e-4),
            "fwm_vs_authors_loop_logits_max_abs_diff": check(c["fwm_vs_authors_loop_logits_max_abs_diff"],
                                                             below=1e-4 * scale)}


@_checks("bench_adaptive")
def _(res: dict) -> dict:
    c = res["checks"]
    return {"nll_vs_log_prob_max_abs_diff": check(c["nll_vs_log_prob_max_abs_diff"], below=1e-4),
            "torch_module_max_abs_diff": check(c["torch_module_max_abs_diff"], below=1e-4)}


def stage_benchmark(name: str, plan: Plan) -> tuple[dict, dict]:
    out = plan.tmp / f"{name}.json"
    argv = [*plan.bench_args(name), "--out", str(out)]
    load_benchmark(name).main(argv)
    res = json.loads(out.read_text())
    res["argv"] = argv[:-2]
    return res, CHECKS[name](res)


def stage_lm_train(plan: Plan, arch: str = "lstm") -> tuple[dict, dict]:
    from fastbind.cli import main as cli
    from fastbind.training.metrics import read_metrics

    common, steps = plan.lm_train_args(arch)
    results, checks = {"settings": common}, {}
    for head in ("softmax", "hebbian"):
        folder = plan.tmp / f"lm-{arch}-{head}"
        t0 = time.perf_counter()
        rc = cli(["lm-train", f"out={folder}", f"head={head}", *common])
        wall = time.perf_counter() - t0
        if rc:
            raise RuntimeError(f"lm-train head={head} exited with {rc}")
        summary = json.loads((folder / "summary.json").read_text())
        records = read_metrics(folder)
        rates = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r]
        train_ppl = [r["train/ppl"] for r in records if "train/ppl" in r]
        tokens_per_step = summary["train_tokens"] / max(summary["step"], 1)
        # The first logged rate includes the first steps' kernel selection and allocator warm-up.
        steady = statistics.median(rates[1:] or rates)
        results[head] = {
            "steps": summary["step"], "vocab_size": summary["vocab_size"], "wall_s": wall,
            "loop_s": summary["seconds_this_run"], "tokens_per_s_steady": steady,
            "steps_per_s_steady": steady / tokens_per_step, "steps_per_s_overall": summary["step"] / wall,
            "final_train_ppl": train_ppl[-1] if train_ppl else None, "final_val_ppl": summary["last_val_ppl"],
        }
        checks[f"{head}_steps"] = check(summary["step"], equals=steps)
        # Better than the uniform distribution after a few hundred steps (a few, in smoke runs). A
        # Hebbian transformer only has to stay finite: its rows memorize LayerNorm outputs (norm
        # about sqrt(d)), and in a smoke run's 20 steps at lr 0.01 that leaves it worse than uniform.
        uniform = math.inf if (arch, head) == ("transformer", "hebbian") else float(summary["vocab_size"])
        checks[f"{head}_val_ppl"] = check(summary["last_val_ppl"], below=uniform)
        checks[f"{head}_finite"] = check(all(isinstance(x, (int, float)) and math.isfinite(x)
                                             for x in [*train_ppl, *rates, summary["best_val_ppl"]]), equals=True)
    return results, checks


# ---------------------------------------------------------------- the run


class Skip(Exception):
    """A stage that cannot run here (a missing optional package); not a failure."""


# (name, share of the budget; shares are relative). On an H200, as separate processes at these
# sizes, the CUDA tests took about 12 s, bench_hebbian 19 s, bench_memory 10 s and bench_lm 18 s
# (start-up included); with a --budget-s of 200 every stage finished in under a quarter of its
# share. The two transformer stages are new and not yet timed on a GPU.
STAGES: list[tuple[str, float]] = [
    ("environment", 0.0), ("cuda_tests", 0.16), ("bench_hebbian", 0.14), ("bench_memory", 0.10),
    ("bench_lm", 0.16), ("bench_transformer", 0.12), ("bench_fwm", 0.12), ("bench_adaptive", 0.10),
    ("lm_train", 0.22), ("lm_train_transformer", 0.14),
]
MIN_STAGE_S = 3.0  # a stage with less time than this left is skipped


def run_stage(name: str, plan: Plan, seconds: float) -> dict:
    """Run one stage within ``seconds``; never raises."""
    rec: dict = {"status": "error", "seconds": 0.0, "budget_s": round(seconds, 1)}
    cuda = plan.device.startswith("cuda") and torch.cuda.is_available()
    t0 = time.perf_counter()
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with time_limit(seconds + (5.0 if name == "cuda_tests" else 0.0)):  # pytest has its own timeout
            if name == "environment":
                results, checks = stage_environment(plan)
            elif name == "cuda_tests":
                results, checks = stage_cuda_tests(plan, seconds)
            elif name == "lm_train":
                results, checks = stage_lm_train(plan)
            elif name == "lm_train_transformer":
                results, checks = stage_lm_train(plan, "transformer")
            else:
                results, checks = stage_benchmark(name, plan)
            if cuda:
                torch.cuda.synchronize()
        rec.update(results=results, checks=checks,
                   status="passed" if all(c["ok"] for c in checks.values()) else "failed")
    except Skip as e:
        rec.update(status="skipped", note=str(e))
    except StageTimeout as e:
        rec.update(status="timeout", error=f"{e}\n{_tail(traceback.format_exc(), 3000)}")
    except BaseException as e:  # noqa: BLE001 - one stage's failure must not stop the others
        if isinstance(e, KeyboardInterrupt):
            raise
        rec.update(status="error", error=_tail(traceback.format_exc(), 6000))
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    if cuda:
        try:
            rec["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - a broken context is reported by the stage itself
            rec["peak_gpu_bytes"] = f"unavailable: {e}"
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wikitext2", type=Path, default=None,
                   help="a WikiText-2 folder (wiki.train.tokens, ...); default: the synthetic corpus")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole check (default 180; 40 with --smoke)")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "gpu_check.json")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--smoke", action="store_true", help="the same stages on the CPU at tiny sizes (CI)")
    p.add_argument("--stages", default=",".join(n for n, _ in STAGES),
                   help="comma-separated subset of the stages (environment always runs)")
    a = p.parse_args(argv)
    budget = a.budget_s if a.budget_s is not None else (40.0 if a.smoke else 180.0)
    device = a.device or ("cpu" if a.smoke else "cuda")
    wanted = {s.strip() for s in a.stages.split(",") if s.strip()} | {"environment"}
    unknown = wanted - {n for n, _ in STAGES}
    if unknown:
        p.error(f"unknown stages {sorted(unknown)} (known: {', '.join(n for n, _ in STAGES)})")
    if a.wikitext2 is not None and not a.wikitext2.is_dir():
        p.error(f"--wikitext2 {a.wikitext2} is not a folder")
    t_start = time.perf_counter()
    deadline = t_start + budget
    report = {
        "check": "fastbind_gpu_check", "argv": sys.argv[1:] if argv is None else list(argv),
        "mode": "smoke" if a.smoke else "full", "device": device, "budget_s": budget,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        plan = Plan(device=device, smoke=a.smoke, data=str(a.wikitext2.resolve()) if a.wikitext2 else "synthetic",
                    tmp=Path(tmp), threads=["--threads", "1"] if a.smoke else [])
        todo = [(n, s) for n, s in STAGES if n in wanted]
        for i, (name, share) in enumerate(todo):
            left = deadline - time.perf_counter()
            rest = sum(s for _, s in todo[i:])
            # The environment has no share: it takes what it needs (CUDA's start-up), at most 30 s.
            seconds = min(30.0, left) if name == "environment" else left * share / rest
            if name != "environment" and seconds < MIN_STAGE_S:
                rec = {"status": "skipped", "seconds": 0.0,
                       "note": f"budget spent ({max(left, 0):.0f} s of {budget:.0f} s left, {seconds:.1f} s for this stage)"}
            else:
                print(f"[gpu_check] {name}: up to {seconds:.0f} s", flush=True)
                rec = run_stage(name, plan, max(seconds, MIN_STAGE_S))
            if name == "environment":
                report["environment"] = rec.pop("results", {})
            report["stages"][name] = rec
            note = _note(rec)
            print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']:.1f} s" + (f" ({note})" if note else ""),
                  flush=True)
            _finish(report, t_start)
            _write(a.out, report)
    _finish(report, t_start)
    _write(a.out, report)
    print(summary_table(report))
    print(f"wrote {a.out}")
    return 0 if report["ok"] else 1


def _finish(report: dict, t_start: float) -> None:
    stages = report["stages"].values()
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    report["ok"] = all(s["status"] in ("passed", "skipped") for s in stages)
    report["complete"] = all(s["status"] == "passed" for s in stages)
    report["counts"] = {k: sum(s["status"] == k for s in stages) for k in STATUSES}


def summary_table(report: dict) -> str:
    lines = [f"{'stage':<22}{'status':<9}{'seconds':>8}  notes"]
    for name, s in report["stages"].items():
        lines.append(f"{name:<22}{s['status']:<9}{s['seconds']:>8.1f}  {_note(s)}")
    lines.append(f"{'total':<22}{'ok' if report['ok'] else 'NOT OK':<9}{report['seconds']:>8.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- helpers


_LOADED: dict[str, object] = {}


def load_benchmark(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module (they import ``_common`` as a sibling)."""
    if name not in _LOADED:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        spec = importlib.util.spec_from_file_location(f"fastbind_benchmarks_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _LOADED[name] = module
    return _LOADED[name]


def _note(rec: dict) -> str:
    """One line on what went wrong in a stage (empty when it passed)."""
    if rec.get("note"):
        return rec["note"]
    if rec.get("error"):
        lines = rec["error"].strip().splitlines()
        return lines[-1][:120] if lines else "error"
    bad = [k for k, c in rec.get("checks", {}).items() if not c["ok"]]
    return f"checks failed: {', '.join(bad)}" if bad else ""


def _version_of(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed (or not as a distribution)
        return None


def _run_quietly(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() or None if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _tail(text: str | bytes | None, n: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def _junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"collected": total["tests"], "failed": total["failures"], "errors": total["errors"],
            "skipped": total["skipped"], "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed_tests": [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                             if c.find("failure") is not None or c.find("error") is not None]}


def _summary_counts(stdout: str) -> dict:
    """Counts from pytest's last line (when no JUnit file was written, e.g. a collection error)."""
    found = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", stdout))
    if "error" in found:
        found["errors"] = found.pop("error")
    return {"passed": found.get("passed", 0), "failed": found.get("failed", 0), "errors": found.get("errors", 0),
            "skipped": found.get("skipped", 0)}


def _write(path: Path, report: dict) -> None:
    text = json.dumps(report, indent=2, default=str).encode()
    atomic_write(path, lambda fh: fh.write(text))


if __name__ == "__main__":
    raise SystemExit(main())
