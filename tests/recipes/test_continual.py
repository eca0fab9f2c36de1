"""``fastbind continual``: metrics, MbPA in the classifier, forgetting, resume, every method on every scenario."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fastbind.cli import main as cli
from fastbind.continual import (
    ContinualConfig, MbPASweep, accuracies, build_tasks, continual_metrics, run_continual, sweep_run, train_one,
)
from fastbind.data.tasks import Task
from fastbind.memory import MbPA


def _images(classes: int = 10, per_class: int = 40, test_per_class: int = 10, seed: int = 0):
    """Learnable 28 × 28 images: each class a fixed random pattern, plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, 28, 28, generator=g) * 255

    def draw(n_per):
        y = torch.arange(classes).repeat_interleave(n_per)
        x = protos[y] * 0.6 + torch.rand(y.shape[0], 28, 28, generator=g) * 100
        return x.clamp(0, 255).to(torch.uint8), y

    (tx, ty), (sx, sy) = draw(per_class), draw(test_per_class)
    return SimpleNamespace(train_images=tx, train_labels=ty, test_images=sx, test_labels=sy)


def _small(out, **kw) -> ContinualConfig:
    base = dict(out=str(out), hidden=(32,), memory=64, batch_size=8, steps_per_task=6, eval_examples=0,
                progress=False, checkpoint_every=4, eval_at=(0, 2, 5), train_examples=60,
                mbpa=replace(ContinualConfig().mbpa, k=5))
    base.update(kw)
    return ContinualConfig(**base)


# --------------------------------------------------------------------------- metrics


def test_metrics_against_hand_computation():
    R = [[0.9], [0.6, 0.8], [0.5, 0.7, 0.95]]
    m = continual_metrics(R)
    assert m["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    # forgetting: task 1 best 0.9 → 0.5 (0.4); task 2 best 0.8 → 0.7 (0.1); mean 0.25
    assert m["forgetting"] == pytest.approx(0.25)
    # backward transfer: (0.5 − 0.9 + 0.7 − 0.8) / 2
    assert m["backward_transfer"] == pytest.approx(-0.25)
    assert m["average_accuracy_curve"] == pytest.approx([0.9, 0.7, (0.5 + 0.7 + 0.95) / 3])
    # A task that improves after it was learnt: its best is a later row, forgetting 0 for it.
    m2 = continual_metrics([[0.5], [0.7, 0.8], [0.6, 0.8, 0.9]])
    assert m2["forgetting"] == pytest.approx(((0.7 - 0.6) + 0.0) / 2)
    assert m2["backward_transfer"] == pytest.approx(((0.6 - 0.5) + (0.8 - 0.8)) / 2)
    one = continual_metrics([[0.7]])
    assert one["average_accuracy"] == 0.7 and one["forgetting"] is None and one["backward_transfer"] is None
    final_only = continual_metrics([None, [0.4, 0.6]])
    assert final_only["average_accuracy"] == pytest.approx(0.5) and final_only["forgetting"] is None


# --------------------------------------------------------------------------- MbPA in the classifier


def _reference_adapted_logits(q, keys, vals, W, b, k, steps, lr, l2, eps):
    """Per query: the K nearest keys, kernel weights, `steps` autograd SGD steps on the weighted loss."""
    out = []
    for i in range(q.shape[0]):
        d2 = ((keys - q[i]) ** 2).sum(1)
        nb = torch.argsort(d2)[:k]
        w = 1.0 / (eps + d2[nb])
        w = w / w.sum()
        Wp, bp = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        for _ in range(steps):
            logits = keys[nb] @ Wp.T + bp
            loss = (w * F.cross_entropy(logits, vals[nb], reduction="none")).sum()
            loss = loss + l2 * (((Wp - W) ** 2).sum() + ((bp - b) ** 2).sum())
            gW, gb = torch.autograd.grad(loss, [Wp, bp])
            with torch.no_grad():
                Wp -= lr * gW
                bp -= lr * gb
        out.append((q[i] @ Wp.T + bp).detach())
    return torch.stack(out)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_mbpa_in_the_classifier_matches_a_per_query_autograd_reference(steps, exact):
    torch.manual_seed(0)
    d, V, n = 6, 9, 5  # the head has 9 rows; 5 classes seen so far (masked head)
    keys, vals = torch.randn(40, d, dtype=torch.float64), torch.randint(n, (40,))
    W, b = torch.randn(V, d, dtype=torch.float64), torch.randn(V, dtype=torch.float64)
    mbpa = MbPA(size=30, k=7, steps=steps, lr=0.7, l2=0.2, eps=1e-2, policy="reservoir", seed=1,
                exact_distances=exact)
    mbpa.write(keys, vals)
    sk, sv, _ = mbpa.store.view()
    q = torch.randn(11, d, dtype=torch.float64)
    got = mbpa.logits(q, W[:n], b[:n])
    ref = _reference_adapted_logits(q, sk, sv, W[:n], b[:n], 7, steps, 0.7, 0.2, 1e-2)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    assert len(mbpa.store.view()[0]) == 30  # a reservoir of the 40 written


def test_evaluation_leaves_the_memory_unchanged(tmp_path):
    data = _images()
    cfg = _small(tmp_path / "r", scenario=("classes",), method=("finetune",), tasks=2)
    tasks = build_tasks(cfg, data)
    train_one(cfg, tasks)
    from fastbind.runs import RunFolder
    ck, _ = RunFolder(cfg.out).load_checkpoint("last")
    from fastbind.continual import build_model, new_memory
    model = build_model(cfg, 10)
    model.load_state_dict(ck["model"])
    memory = new_memory(cfg)
    memory.load_state_dict(ck["memory"])
    before = memory.state_dict()
    accuracies(model, tasks, 10, "test", {"+mbpa": memory}, 0, 0)
    after = memory.state_dict()
    assert before["count"] == after["count"]
    for key in ("keys", "values", "positions", "payload"):
        assert torch.equal(before[key], after[key])


# --------------------------------------------------------------------------- forgetting


def _remapped_pair(data) -> list[Task]:
    """Task 2: the same images as task 1 with a bright band across the top, and every label moved
    to the next class. Trained on task 2 alone, a network has no reason to look at the band and
    carries the new labels over to task 1's images; with task 1's examples at hand it can tell them apart."""
    def marked(x):
        x = x.clone()
        x[:, :4] = 255
        return x

    def task(name, shift, mark):
        f = marked if mark else (lambda x: x)
        y, sy = (data.train_labels + shift) % 10, (data.test_labels + shift) % 10
        return Task(name, f(data.train_images), y, f(data.train_images[:20]), y[:20], f(data.test_images), sy,
                    classes=tuple(range(10)), n_seen=10)

    return [task("task 1", 0, False), task("task 2", 1, True)]


def test_finetuning_forgets_and_replay_and_mbpa_remember(tmp_path):
    data = _images(per_class=30)
    tasks = _remapped_pair(data)
    common = dict(scenario=("permuted",), hidden=(64,), memory=600, batch_size=16, steps_per_task=300, lr=(0.03,),
                  mbpa=replace(ContinualConfig().mbpa, k=10, lr=5.0, l2=0.0))
    res = {m: train_one(_small(tmp_path / m, method=(m,), **common), tasks) for m in ("finetune", "replay")}
    ft = res["finetune"]["variants"]
    R_ft = ft["base"]["accuracy_matrix"]
    assert R_ft[0][0] > 0.9 and R_ft[1][1] > 0.9  # each task was learnt...
    assert R_ft[1][0] < 0.1  # ...and task 1 forgotten: its images now get the next label
    assert res["replay"]["variants"]["base"]["accuracy_matrix"][1][0] > 0.9
    # MbPA over the same memory, with keys recomputed by the final network, recovers task 1 from
    # the stored examples; with the keys embedded when written (the paper's choice) it does not
    # here: the network that embeds the query has moved away from the one that wrote task 1's keys.
    assert ft["+mbpa-rekey"]["accuracy_matrix"][1][0] > 0.9
    assert ft["+mbpa"]["accuracy_matrix"][1][0] < 0.1
    # On the replay run the features of task 1 are kept, and write-time keys work too.
    assert res["replay"]["variants"]["+mbpa"]["accuracy_matrix"][1][0] > 0.5


# --------------------------------------------------------------------------- resume


def _digest(model_state: dict) -> list:
    return [(k, v.double().sum().item()) for k, v in sorted(model_state.items())]


@pytest.mark.parametrize("scenario,method,slice_steps", [
    ("permuted", "ewc", 4),  # stops inside tasks
    ("permuted", "replay", 5),  # stops exactly at task boundaries
    ("permuted", "hebbian", 3),
    ("imbalanced", "replay", 4),  # across the arrival points
])
def test_resumed_run_equals_uninterrupted(tmp_path, scenario, method, slice_steps):
    from fastbind.runs import RunFolder
    data = _images()
    kw = dict(scenario=(scenario,), method=(method,), tasks=2 if scenario == "imbalanced" else 3, steps_per_task=5,
              memory=30, new_examples=(3,), eval_at=(0, 2, 5, 9))
    whole = train_one(_small(tmp_path / "whole", **kw), build_tasks(_small(tmp_path, **kw), data))
    sliced = tmp_path / "sliced"
    for _ in range(20):
        part = train_one(_small(sliced, stop_after=slice_steps, **kw), build_tasks(_small(tmp_path, **kw), data))
        if part["finished"]:
            break
    assert part["finished"]
    for key in ("variants", "valid", "arrival"):
        assert part.get(key) == whole.get(key)
    a, _ = RunFolder(tmp_path / "whole").load_checkpoint("last")
    b, _ = RunFolder(sliced).load_checkpoint("last")
    assert _digest(a["model"]) == _digest(b["model"])
    for key in ("keys", "values", "positions", "payload"):
        assert torch.equal(a["memory"][key], b["memory"][key])
    from fastbind.runs import metrics_by_step
    ma = metrics_by_step(RunFolder(tmp_path / "whole").read_metrics())
    mb = metrics_by_step(RunFolder(sliced).read_metrics())
    assert ma == mb


def test_resume_refuses_other_settings(tmp_path):
    data = _images()
    cfg = _small(tmp_path / "r", method=("finetune",), tasks=2, stop_after=3)
    train_one(cfg, build_tasks(cfg, data))
    from fastbind.errors import UserError
    with pytest.raises(UserError, match="different 'batch_size'"):
        train_one(replace(cfg, batch_size=4), build_tasks(cfg, data))
    with pytest.raises(UserError, match="other task data"):
        train_one(cfg, build_tasks(cfg, _images(seed=5)))


# --------------------------------------------------------------------------- every method on every scenario


@pytest.mark.parametrize("scenario", ["permuted", "classes", "imbalanced"])
def test_dry_run_every_method(tmp_path, scenario, monkeypatch):
    data = _images()
    monkeypatch.setattr("fastbind.continual.load_images", lambda cfg, dataset: data)
    tasks = 2 if scenario == "imbalanced" else 3
    cfg = _small(tmp_path / scenario, scenario=(scenario,), tasks=tasks, new_examples=(3,))
    results = run_continual(cfg)
    assert [r["method"] for r in results] == ["finetune", "ewc", "replay", "hebbian", "joint"]
    for r in results:
        assert r["finished"] and r["tasks_done"] == tasks
        for split in ("variants", "valid"):
            for v in ("base", "+mbpa", "+mbpa-rekey"):
                R = r[split][v]["accuracy_matrix"]
                assert len(R) == tasks and all(len(row) == tasks for row in R)
                last = R[-1]
                assert all(0.0 <= a <= 1.0 for a in last)
                for i, row in enumerate(R):
                    assert all(a is None for a in row[i + 1:])  # nothing after the tasks trained
                assert 0.0 <= r[split][v]["average_accuracy"] <= 1.0
        R = r["variants"]["base"]["accuracy_matrix"]
        assert all(a is not None for i, row in enumerate(R) for a in row[: i + 1])
        assert r["valid"]["base"]["accuracy_matrix"][0][0] is None  # validation: after the last task only
        if scenario == "imbalanced":
            assert [p["step"] for p in r["arrival"]] == [0, 2, 5]
            for p in r["arrival"]:
                for v in ("base", "+mbpa"):
                    assert set(p["test"][v]) == {"old", "new", "overall"}


def test_recent_memory_keeps_the_last_examples(tmp_path, monkeypatch):
    from fastbind.runs import RunFolder
    data = _images()
    monkeypatch.setattr("fastbind.continual.load_images", lambda cfg, dataset: data)
    cfg = _small(tmp_path / "r", method=("finetune",), tasks=3, memory=20, memory_policy="recent")
    (r,) = run_continual(cfg)
    assert r["memory_policy"] == "recent" and r["finished"]
    run = tmp_path / "r" / "permuted-finetune-lr0.03-recent-s0"
    ck, _ = RunFolder(run).load_checkpoint("last")
    written = 3 * 6 * 8  # tasks × steps × batch
    from fastbind.memory.knn import RingStore
    store = RingStore(20, policy="recent")
    store.load_state_dict(ck["memory"])
    assert sorted(store.view()[2].tolist()) == list(range(written - 20, written))  # the last 20 written
    assert ck["memory"]["policy"] == "recent" and ck["memory"]["count"] == written


def test_class_incremental_convnet_on_omniglot_like_data(tmp_path):
    data = _images(classes=12, per_class=8, test_per_class=3)
    cfg = _small(tmp_path / "o", scenario=("classes",), dataset=("omniglot",), method=("finetune", "hebbian"),
                 tasks=4, dropout=0.2)
    for one_cfg in (replace(cfg, out=f"{cfg.out}/{m}", method=(m,)) for m in cfg.method):
        r = train_one(one_cfg, build_tasks(one_cfg, data))
        R = r["variants"]["base"]["accuracy_matrix"]
        assert r["finished"] and len(R) == 4
        assert r["tasks"][0] == "classes 0-2"


# --------------------------------------------------------------------------- the commands


def _write_idx(path: Path, t: torch.Tensor) -> None:
    dims = struct.pack(f">{t.dim()}I", *t.shape)
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, t.dim()]) + dims + t.to(torch.uint8).numpy().tobytes())


def _idx_folder(tmp_path: Path) -> Path:
    data = _images(per_class=30)
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte.gz", data.train_images)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", data.train_labels)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", data.test_images)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", data.test_labels)
    return folder


def test_commands_end_to_end(tmp_path, capsys):
    folder = _idx_folder(tmp_path)
    out = tmp_path / "runs"
    args = [f"data={folder}", f"out={out}", "method=finetune,ewc", "tasks=2", "train_examples=100",
            "steps_per_task=5", "hidden=[16]", "memory=50", "eval_examples=0", "progress=false", "mbpa.k=4",
            "ewc.lambda=1,10"]
    assert cli(["continual", *args]) == 0
    printed = capsys.readouterr().out
    assert "permuted   finetune seed 0" in printed and printed.count("ewc") >= 2
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["permuted-ewc-lr0.03-lam1-s0", "permuted-ewc-lr0.03-lam10-s0", "permuted-finetune-lr0.03-s0"]
    res = json.loads((out / subs[2] / "results.json").read_text())
    assert res["finished"] and len(res["variants"]["base"]["accuracy_matrix"]) == 2
    # Re-running skips the finished combinations.
    mtime = (out / subs[2] / "results.json").stat().st_mtime_ns
    assert cli(["continual", *args]) == 0
    assert (out / subs[2] / "results.json").stat().st_mtime_ns == mtime
    # Evaluation-only sweep over a finished combination.
    assert cli(["continual-sweep", str(out / subs[2]), "k=2,4", "lr=0.5", "steps=1", "progress=false"]) == 0
    sweep = json.loads((out / subs[2] / "mbpa-sweep-valid.json").read_text())
    assert [(r["k"], r["lr"]) for r in sweep["rows"]] == [(2, 0.5), (4, 0.5)]
    assert all(0 <= r["average_accuracy"] <= 1 and len(r["per_task"]) == 2 for r in sweep["rows"])
    # The report.
    assert cli(["report", str(out)]) == 0
    md = (out / "report" / "report.md").read_text()
    assert "| permuted | finetune, lr 0.03 | +mbpa |" in md and "MbPA sweeps" in md
    assert (out / "report" / "permuted_task1.png").stat().st_size > 1000


def test_report_with_a_partial_seed(tmp_path):
    from fastbind.report.continual import build_continual_report
    data = _images()
    out = tmp_path / "runs"
    kw = dict(scenario=("permuted",), method=("finetune",), tasks=3)
    train_one(_small(out / "a-s0", seeds=(0,), **kw), build_tasks(_small(tmp_path, **kw), data))
    train_one(_small(out / "a-s1", seeds=(1,), stop_after=8, **kw), build_tasks(_small(tmp_path, seeds=(1,), **kw), data))
    from fastbind.runs import RunFolder
    RunFolder(out).mark("continual")
    res = build_continual_report([out], tmp_path / "rep")
    assert "| 2 | 1/3 |" in res["table"]  # two seeds, the slower one through task 1 of 3
    assert (tmp_path / "rep" / "permuted_task1.png").stat().st_size > 1000


def test_sweep_refuses_unfinished_and_foreign_runs(tmp_path, capsys):
    folder = _idx_folder(tmp_path)
    out = tmp_path / "runs"
    assert cli(["continual", f"data={folder}", f"out={out}", "method=finetune", "tasks=2", "train_examples=100",
                "steps_per_task=5", "hidden=[16]", "memory=50", "progress=false", "stop_after=3"]) == 0
    run = out / "permuted-finetune-lr0.03-s0"
    assert cli(["continual-sweep", str(run)]) == 2
    assert "has not finished training" in capsys.readouterr().err
    assert cli(["continual-sweep", str(out)]) == 2
    assert "several combinations" in capsys.readouterr().err
    assert cli(["continual-sweep", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.parametrize("argv,fragment", [  # the continual command's own keys: tests/test_bad_values.py
    (["continual-sweep", "runs/x", "k=0"], "must be >= 1"),
    (["continual-sweep", "runs/x", "split=train"], "must be valid or test"),
    (["continual-sweep", "runs/x", "lr=0"], "must be > 0"),
    (["continual-sweep", "runs/x", "size=-1"], "must be >= 0"),
    (["continual-sweep", "runs/x", "l2=-1"], "must be >= 0"),
    (["continual-sweep", "runs/x", "steps=0"], "must be >= 1"),
    (["continual-sweep", "runs/x", "threads=-1"], "must be >= 0"),
])
def test_bad_sweep_setting_is_one_line_exit_2(argv, fragment, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and argv[-1].split("=")[0] in err and "\n" not in err


def test_data_that_cannot_hold_the_tasks_is_one_line(tmp_path, capsys):
    folder = _idx_folder(tmp_path)
    assert cli(["continual", f"data={folder}", f"out={tmp_path / 'o'}", "train_examples=100000",
                "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "permuted on fashion-mnist" in err and "\n" not in err
