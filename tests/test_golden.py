"""Golden values: short runs of every recipe, against numbers recorded from an earlier version.

The values in ``tests/golden/recipes.json`` were recorded once, with this file, from the code as it
stood before the package's layout was reorganised; a reorganisation that changes no behaviour leaves
every metric, every result and every trained weight bit-identical. The runs are tiny (``threads=1``,
small generated data): 50 steps of ``lm-train`` for each output layer, ``lm-eval`` with the cache and
MbPA, a small ``lm-sweep``, 200 steps of ``curriculum`` per head and 100 steps of ``catbabi`` per arch.

Bit-identity holds for one PyTorch build on one kind of CPU. Where the build or the CPU's vector
instructions differ from the recording machine, the comparison falls back to a relative tolerance
(float32 rounding differs across instruction sets), and the weights are compared through their sums.

To record anew (only when a change of behaviour is intended and stated)::

    FASTBIND_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.training.checkpoint import load_checkpoint

GOLDEN = Path(__file__).parent / "golden" / "recipes.json"
RECORD = os.environ.get("FASTBIND_RECORD_GOLDEN") == "1"
WALL_TIME = re.compile(r"(second|_per_s|time|elapsed|wall|date|path)", re.IGNORECASE)

LM = ["synthetic.train_tokens=20000", "synthetic.valid_tokens=2000", "synthetic.test_tokens=2000",
      "synthetic.background_vocab=1000", "synthetic.entity_pool=500", "synthetic.num_topics=5",
      "batch_size=4", "bptt=10", "hidden=16", "emb_dim=16", "progress=false", "eval_max_tokens=400",
      "threads=1", "max_steps=50", "eval_every=25", "log_every=10"]
LM_HEADS = {
    "softmax-full": ["head=softmax"],
    "hebbian-full": ["head=hebbian", "T=5", "gamma=0.2"],
    "softmax-adaptive": ["head=softmax", "softmax=adaptive"],
    "hebbian-adaptive": ["head=hebbian", "T=5", "gamma=0.2", "softmax=adaptive"],
}
EVAL = ["split=test", "progress=false", "max_tokens=600", "bptt=50", "cache.size=200", "cache.theta=0.5",
        "cache.lambda=0.2", "mbpa.lambda=0.1", "mbpa.k=16", "mbpa.size=300", "memory_chunk=64"]
SWEEP = ["progress=false", "max_tokens=300", "bptt=50", "sizes=100,200", "thetas=0.3", "cache_lambdas=0.1,0.2",
         "mbpa_lambdas=0.04", "ks=8", "steps=1", "apply_test=true", "test_max_tokens=300", "tag=golden"]
CURRICULUM = ["start_classes=3", "new_classes=2", "channels=8", "batch_size=8", "eval_every=10",
              "progress=false", "mbpa.size=64", "mbpa.k=8", "max_steps=200", "threads=1", "checkpoint_every=50"]
CATBABI = ["batch_size=4", "seg_len=24", "hidden=16", "emb_dim=16", "model.fwm_size=4", "progress=false",
           "threads=1", "log_every=10", "max_steps=100", "eval_every=50"]


# --------------------------------------------------------------------------- what is compared


def _numbers(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every number, bool and short string leaf of a JSON value, by dotted path; wall-time keys dropped."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if WALL_TIME.search(str(k)):
                continue
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float, bool)) or obj is None:
        out[prefix[:-1]] = obj
    return out


def _metrics(run: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    merged: dict[int, dict] = {}
    for r in rows:
        merged.setdefault(int(r["step"]), {}).update(r)
    return _numbers({str(s): r for s, r in sorted(merged.items())}, "metrics.")


def _weights(path: Path) -> dict[str, Any]:
    """Per tensor of the checkpoint's model: a digest of its bytes and its sum (for the tolerant mode)."""
    model = load_checkpoint(path)["model"]
    out = {}
    for k, v in model.items():
        t = v.detach().cpu().contiguous()
        out[f"weights.{k}.sha"] = hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]
        out[f"weights.{k}.sum"] = float(t.double().sum())
    return out


def _eval_variants(record: dict) -> dict[str, Any]:
    """The numbers of each variant of an evaluation record (its settings' layout may change)."""
    keep = ("ppl", "nll", "tokens", "buckets")
    return _numbers({name: {k: v[k] for k in keep if k in v} for name, v in record["variants"].items()}, "variants.")


# --------------------------------------------------------------------------- data


def _write_babi(root: Path) -> Path:
    people, places, things = ["mary", "john", "sandra", "daniel"], ["garden", "kitchen", "office"], ["apple", "milk"]
    rng = random.Random(0)

    def qa1(stories: int) -> str:
        lines = []
        for _ in range(stories):
            n, where = 0, {}
            for _ in range(rng.randint(1, 3)):
                p, place = rng.choice(people), rng.choice(places)
                where[p] = place
                n += 1
                lines.append(f"{n} {p.capitalize()} went to the {place}.")
                n += 1
                ask = rng.choice(sorted(where))
                lines.append(f"{n} Where is {ask.capitalize()}? \t{where[ask]}\t{n - 1}")
        return "\n".join(lines) + "\n"

    def qa8(stories: int) -> str:
        lines = []
        for _ in range(stories):
            p, got = rng.choice(people), rng.sample(things, rng.randint(1, 2))
            for i, thing in enumerate(got, 1):
                lines.append(f"{i} {p.capitalize()} got the {thing} there.")
            lines.append(f"{len(got) + 1} What is {p.capitalize()} carrying? \t{','.join(got)}\t1")
        return "\n".join(lines) + "\n"

    base = root / "tasks_1-20_v1-2"
    (base / "en-10k").mkdir(parents=True)
    (base / "en").mkdir()
    (base / "en-10k" / "qa1_single-supporting-fact_train.txt").write_text(qa1(60))
    (base / "en-10k" / "qa1_single-supporting-fact_test.txt").write_text(qa1(12))
    (base / "en" / "qa8_lists-sets_train.txt").write_text(qa8(40))
    (base / "en" / "qa8_lists-sets_test.txt").write_text(qa8(10))
    return root


# --------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def observed(tmp_path_factory, omniglot_zip) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("golden")
    threads = torch.get_num_threads()
    out: dict[str, dict[str, Any]] = {}
    try:
        for name, extra in LM_HEADS.items():
            run = root / name
            assert cli(["lm-train", f"out={run}", *LM, *extra]) == 0
            summary = json.loads((run / "summary.json").read_text())
            out[f"lm-train/{name}"] = {**_metrics(run), **_numbers(summary, "summary."), **_weights(run / "last.pt")}
        run = root / "hebbian-full"
        assert cli(["lm-eval", str(run), *EVAL]) == 0
        out["lm-eval"] = _eval_variants(json.loads((run / "eval-test.json").read_text()))
        assert cli(["lm-sweep", str(run), *SWEEP]) == 0
        (applied,) = [p for p in run.glob("eval-test-*.json")]
        out["lm-sweep"] = _eval_variants(json.loads(applied.read_text()))

        omni = root / "omniglot"
        omniglot_zip(omni / "a.zip", "images_background", {"Greek": 5, "Latin": 4})
        for head in ("softmax", "hebbian", "mbpa"):
            run = root / f"curriculum-{head}"
            assert cli(["curriculum", f"data={omni}", f"out={run}", f"head={head}", *CURRICULUM]) == 0
            (sub,) = [p for p in run.iterdir() if p.is_dir()]
            record = json.loads((sub / "curriculum.json").read_text())
            out[f"curriculum/{head}"] = {**_metrics(sub), **_numbers(record, "result."), **_weights(sub / "last.pt")}

        babi = _write_babi(root / "babi")
        for arch in ("lstm", "fwm"):
            run = root / f"catbabi-{arch}"
            assert cli(["catbabi", f"out={run}", f"data={babi}", f"arch={arch}", *CATBABI]) == 0
            record = json.loads((run / "results.json").read_text())
            out[f"catbabi/{arch}"] = {**_metrics(run), **_numbers(record, "result."), **_weights(run / "last.pt")}
    finally:
        torch.set_num_threads(threads)
    return out


def _machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def test_recipes_match_the_recorded_golden_values(observed):
    if RECORD:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"machine": _machine(), "runs": observed}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    exact = golden["machine"] == _machine()
    assert sorted(observed) == sorted(golden["runs"])
    for run, expected in golden["runs"].items():
        got = observed[run]
        missing = sorted(set(expected) - set(got))
        assert not missing, f"{run}: no longer produced: {missing[:10]}"
        for key, want in expected.items():
            have = got[key]
            if exact or not isinstance(want, float) or key.endswith(".sha"):
                if key.endswith(".sha") and not exact:
                    continue
                assert have == want or (isinstance(want, float) and math.isnan(want) and math.isnan(have)), \
                    f"{run}: {key} = {have!r}, recorded {want!r}"
            else:
                assert have == pytest.approx(want, rel=1e-3, abs=1e-6), f"{run}: {key} = {have!r}, recorded {want!r}"
