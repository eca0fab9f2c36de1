"""``fastbind metarl``: dry runs of both agents, bit-identical resume, and what a run folder holds."""

from __future__ import annotations

import json

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.training.checkpoint import load_checkpoint

TINY = ("env.envs=12", "env.steps=6", "hidden=8", "agent.fwm_size=4", "log_every=2", "test_every=2",
        "checkpoint_every=100", "progress=false", "threads=1")


def metarl(out, *args) -> int:
    return cli(["metarl", f"out={out}", *TINY, *args])


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["lstm", "fwm"])
def test_dry_run_writes_rewards_and_results(tmp_path, arch, capsys):
    run = tmp_path / arch
    assert metarl(run, f"arch={arch}", "max_steps=4") == 0
    assert "episode 4/4, test reward" in capsys.readouterr().out
    rows = _rows(run)
    assert [r["step"] for r in rows] == [2, 4]
    assert all("train/reward" in r and "test/reward" in r and r["episodes_per_s"] > 0 for r in rows)
    res = json.loads((run / "results.json").read_text())
    assert res["arch"] == arch and res["episodes"] == 4 and [t[0] for t in res["test_rewards"]] == [2, 4]
    assert res["test_reward"] == pytest.approx((rows[0]["test/reward"] + rows[1]["test/reward"]) / 2)
    assert json.loads((run / "run.json").read_text())["recipe"] == "metarl"
    # rewards are in the range the environment allows: at most one goal per two steps... and no less than
    # a penalty at every step
    for r in rows:
        assert -0.05 * 6 - 1e-6 <= r["test/reward"] <= 10 * 6


@pytest.mark.parametrize("graphs", ["fixed", "resample"])
def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path, graphs):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("arch=fwm", f"train_graphs={graphs}", "env.reward_input=true")
    assert metarl(a, *common, "max_steps=6") == 0
    assert metarl(b, *common, "max_steps=4") == 0  # a first slice, then the rest
    assert metarl(b, *common, "max_steps=6") == 0
    ka, kb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for k, v in ka["model"].items():
        assert torch.equal(v, kb["model"][k]), k
    assert ka["tests"] == kb["tests"]
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "episodes_per_s"} for r in rows]
    assert strip(_rows(a)) == strip(_rows(b))


def test_test_episodes_do_not_change_training(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert metarl(a, "max_steps=4", "test_every=0") == 0
    assert metarl(b, "max_steps=4", "test_every=1") == 0
    ka, kb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert all(torch.equal(v, kb["model"][k]) for k, v in ka["model"].items())
    assert len(kb["tests"]) == 4 and not ka["tests"]


def test_training_graphs_fixed_or_resampled(tmp_path):
    fixed, resampled = tmp_path / "f", tmp_path / "r"
    assert metarl(fixed, "max_steps=2", "arch=lstm") == 0
    assert metarl(resampled, "max_steps=2", "arch=lstm", "train_graphs=resample") == 0
    assert load_checkpoint(fixed / "last.pt")["train_graphs"] is None
    drawn = load_checkpoint(resampled / "last.pt")["train_graphs"]
    from fastbind.data.graph_env import graph_codes, split_graphs
    test, train, _ = split_graphs(12, 12, 5, 3, 666)
    assert drawn.shape == train.shape and not torch.equal(drawn, train)
    assert not torch.isin(graph_codes(drawn), graph_codes(test)).any()


def test_resume_refuses_other_settings(tmp_path, capsys):
    run = tmp_path / "r"
    assert metarl(run, "max_steps=2") == 0
    capsys.readouterr()
    assert metarl(run, "max_steps=4", "a2c.critic=per_env") == 2
    err = capsys.readouterr().err.strip()
    assert "different 'a2c.critic' ('authors', now 'per_env')" in err and len(err.splitlines()) == 1


def test_report_groups_seeds_by_agent(tmp_path, capsys):
    runs = []
    for arch, seed in (("lstm", 0), ("lstm", 1), ("fwm", 0)):
        run = tmp_path / f"{arch}-s{seed}"
        assert metarl(run, f"arch={arch}", f"seed={seed}", "max_steps=4") == 0
        runs.append(str(run))
    assert cli(["report", *runs, f"out={tmp_path / 'rep'}"]) == 0
    table = capsys.readouterr().out
    assert "| LSTM-8 | 2 | 4 |" in table and "| FWM-8/4 | 1 | 4 |" in table
    assert (tmp_path / "rep" / "test_reward.png").stat().st_size > 1000
    assert "Meta-RL" in (tmp_path / "rep" / "report.md").read_text()


def test_reward_at_is_the_mean_of_a_window():
    from fastbind.report.metarl import reward_at
    curve = [(e, float(e)) for e in range(50, 2050, 50)]
    assert reward_at(curve, 2000, window=1000) == sum(range(1050, 2050, 50)) / 20
    assert reward_at(curve, 2500) is None and reward_at([], 10) is None


def test_table_compares_seeds_of_unequal_length_at_a_common_count():
    from fastbind.report.metarl import metarl_table
    def run(last, offset):  # a test and a training reward every 50 episodes, the reward = episode / 100 + offset
        curve = [(e, e / 100 + offset) for e in range(50, last + 50, 50)]
        return {"name": f"s{offset}", "label": "LSTM-32", "seed": offset, "test": curve, "train": curve}

    row = metarl_table([run(10000, 0.0), run(6000, 2.0)]).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # the episodes column is the shorter run's; 5,000 is reached by both, 10,000 by one
    assert cells[1:3] == ["2", "6,000"]
    both = [sum(e / 100 for e in range(4050, 5050, 50)) / 20 + o for o in (0.0, 2.0)]
    assert cells[3] == f"{(both[0] + both[1]) / 2:.1f} ± {2 ** 0.5:.1f}"
    assert cells[4] == f"{sum(e / 100 for e in range(9050, 10050, 50)) / 20:.1f}"
    # training reward: both seeds at 6,000 episodes, not each at its own end
    train = [sum(e / 100 for e in range(5050, 6050, 50)) / 20 + o for o in (0.0, 2.0)]
    assert cells[-1] == f"{(train[0] + train[1]) / 2:.1f} ± {2 ** 0.5:.1f}"
