"""A bad value of lm-eval, lm-sweep or demo is one line on stderr and exit 2, before any work.

Each case runs in-process through the CLI entry point; loading the run is made to fail the
test, so a case that passes has been refused while its settings were read, and nothing was
written to the run folder (nor, for the demo, its output folder made).
"""

from __future__ import annotations

import pytest

import fastbind.lm
from fastbind.cli import main as cli

from test_lm_recipes import TINY  # noqa: E402  (tests/recipes is on sys.path under pytest's rootdir-less import)

CASES = [  # (command, key=value, message fragment)
    ("lm-eval", "cache.lambda=1.5", "must be in [0, 1)"),
    ("lm-eval", "cache.lambda=-0.1", "must be in [0, 1)"),
    ("lm-eval", "mbpa.lambda=1", "must be in [0, 1)"),
    ("lm-eval", "cache.size=0", "must be >= 1"),
    ("lm-eval", "cache.theta=0", "must be > 0"),
    ("lm-eval", "mbpa.size=-1", "must be >= 1, or 0"),
    ("lm-eval", "mbpa.k=0", "must be >= 1"),
    ("lm-eval", "mbpa.steps=0", "must be >= 1"),
    ("lm-eval", "mbpa.lr=0", "must be > 0"),
    ("lm-eval", "mbpa.l2=-0.5", "must be >= 0"),
    ("lm-eval", "mbpa.eps=0", "must be > 0"),
    ("lm-eval", "mbpa.stride=0", "must be >= 1"),
    ("lm-eval", "batch_size=0", "must be >= 1"),
    ("lm-eval", "bptt=0", "must be >= 1"),
    ("lm-eval", "max_tokens=-1", "must be >= 0"),
    ("lm-eval", "memory_chunk=0", "must be >= 1"),
    ("lm-eval", "buckets=[100,10]", "strictly increasing"),
    ("lm-eval", "device=gpu", "must be auto, cpu, mps, cuda or cuda:N"),
    ("lm-sweep", "device=gpu", "must be auto, cpu, mps, cuda or cuda:N"),
    ("lm-eval", "split=dev", "split"),
    ("lm-eval", "checkpoint=first", "checkpoint"),
    ("lm-eval", "cache.lambda=0.6 mbpa.lambda=0.5", "cache.lambda + mbpa.lambda must be < 1"),
    ("lm-eval", "batch_size=4 cache.lambda=0.1", "use batch_size=1"),
    ("lm-sweep", "split=dev", "must be valid, test or train"),
    ("lm-sweep", "checkpoint=first", "must be best or last"),
    ("lm-sweep", "thetas=[0.3,0]", "each must be > 0"),
    ("lm-sweep", "cache_lambdas=[0.1,1.0]", "each must be in [0, 1)"),
    ("lm-sweep", "mbpa_lambdas=[-0.1]", "each must be in [0, 1)"),
    ("lm-sweep", "sizes=[0]", "each must be >= 1"),
    ("lm-sweep", "ks=[0]", "each must be >= 1"),
    ("lm-sweep", "steps=[]", "needs at least one value"),
    ("lm-sweep", "mbpa_sizes=[7]", "each must be one of sizes"),
    ("lm-sweep", "lr=0", "must be > 0"),
    ("lm-sweep", "l2=-1", "must be >= 0"),
    ("lm-sweep", "eps=0", "must be > 0"),
    ("lm-sweep", "bptt=0", "must be >= 1"),
    ("lm-sweep", "memory_chunk=0", "must be >= 1"),
    ("lm-sweep", "mbpa_stride=0", "must be >= 1"),
    ("lm-sweep", "test_mbpa_stride=-1", "must be >= 1"),
    ("lm-sweep", "max_tokens=-1", "must be >= 0"),
    ("lm-sweep", "test_max_tokens=-1", "must be >= 0"),
    ("lm-sweep", "tag=a/b", "may hold only"),
    ("demo", "memory_sizes=[0,100]", "needs sizes >= 1"),
    ("demo", "mbpa_k=0", "must be >= 1"),
    ("demo", "mbpa_stride=0", "must be >= 1"),
    ("demo", "max_steps=0", "must be >= 1"),  # an lm-train key, in the demo's train section
    ("demo", "head=hebbian", "both heads"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "run"
    assert cli(["lm-train", f"out={out}", *TINY, "max_steps=2", "eval_every=0"]) == 0
    return out


@pytest.mark.parametrize(("command", "setting", "fragment"), CASES, ids=[f"{c} {s}" for c, s, _ in CASES])
def test_bad_value_is_one_line_and_nothing_runs(run, tmp_path, monkeypatch, capsys, command, setting, fragment):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{command} {setting}: the run was loaded despite a bad setting")

    monkeypatch.setattr(fastbind.lm, "load_lm_run", refuse)
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "demo"
    argv = [f"out={out}"] if command == "demo" else [str(run)]
    assert cli([command, *argv, "progress=false", *setting.split()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    if " " not in setting:  # a single bad value is named by the key as typed
        assert setting.split("=")[0] in err[0], err
    assert sorted(p.name for p in run.iterdir()) == before  # no eval-*.json, sweep-*.json
    assert not out.exists()
