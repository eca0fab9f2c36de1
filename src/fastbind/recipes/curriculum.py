"""``fastbind curriculum``: the Omniglot class curriculum (Rae et al. 2018, section 4.1, Figure 3).

A convnet starts with 30 Omniglot classes in a seeded random order; each time its test
accuracy passes 60% five new classes arrive. How many training steps each level takes
measures how fast a head binds new classes. Heads: ``softmax``; ``hebbian`` (Hebbian
Softmax, memorizing the pre-dropout features after each optimizer step); ``mbpa`` (the
softmax head, judged by MbPA-adapted predictions over a memory of the most recent
training features). Usage::

    fastbind curriculum data=../shared/data/omniglot out=runs/omniglot
    fastbind curriculum data=omniglot head=softmax,hebbian seeds=0,1,2 max_classes=150
    fastbind curriculum out=runs/lr head=softmax lr=1e-4,1e-3,8e-3,4e-2     # Figure 8 analogue
    fastbind report runs/omniglot                                            # Figures 3 and 9

``head``, ``seeds``, ``objective``, ``lr``, ``T``, ``gamma`` and ``batch_size`` take lists;
every combination runs in its own sub-folder of ``out`` (``hebbian-l2-T20-g0.1-lr0.008-b32-s0``,
with ``-crit-all`` under ``criterion=all``), so combinations can also run as separate processes
side by side. Each sub-folder is a run folder (config.json, metrics.jsonl, last.pt,
curriculum.json with one record per level); re-running the same command resumes unfinished
combinations and skips finished ones. See docs/curriculum.md.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.data.omniglot import Omniglot, augment, load_omniglot
from fastbind.errors import BadSetting, UserError
from fastbind.evaluation import accuracy, check_local_adaptation
from fastbind.memory import MbPA
from fastbind.models.convnet import ConvClassifier, ConvNetConfig
from fastbind.runs import RunFolder, check_resume
from fastbind.training.checkpoint import rng_state, set_rng_state
from fastbind.training.config import alias, parse_cli, to_dict
from fastbind.training.curriculum import Curriculum, combination_name, mean_steps_after
from fastbind.training.distributed import DistInfo, check_device, resolve_device

Head = Literal["softmax", "hebbian", "mbpa"]
Objective = Literal["l2", "ip", "svm", "smax"]


@dataclass
class MbPAHeadSettings:
    """The ``mbpa`` head: softmax predictions mixed with MbPA over recent training features."""

    # Defaults from the MbPA head screen (docs/RESULTS.md, "MbPA head screen"): the
    # larger step size passes levels faster but loses accuracy over all classes; this one keeps it.
    size: int = 1000  # training features kept (the most recent ones)
    k: int = 10  # neighbours per query
    steps: int = 1
    lr: float = 0.1
    l2: float = 0.5
    lam: float = alias("lambda", default=1.0)  # p = (1 − λ)·p_softmax + λ·p_mbpa; set as mbpa.lambda=
    eps: float = 1e-3

    def __post_init__(self) -> None:  # MbPA's own limits, checked while the command line is read
        if self.size < 1:
            raise BadSetting("size", "must be >= 1")
        check_local_adaptation(self)
        if not 0.0 <= self.lam <= 1.0:
            raise BadSetting("lam", "must lie in [0, 1]")


@dataclass
class CurriculumConfig:
    """Settings of ``fastbind curriculum`` (list-valued keys run every combination)."""

    out: str = "runs/curriculum"  # run folder; one sub-folder per combination
    data: str = "omniglot"  # folder of Omniglot archives (zips or extracted), or omniglot = download
    data_dir: str | None = None  # data cache folder (default ~/.cache/fastbind)
    head: tuple[Head, ...] = ("softmax", "hebbian", "mbpa")
    seeds: tuple[int, ...] = (0,)
    objective: tuple[Objective, ...] = ("l2",)  # Hebbian inner objective (eqs. 7-10)
    # T 20, γ 0.1 (with batch 32): the best of a T × γ × batch screen (docs/RESULTS.md).
    T: tuple[int, ...] = (20,)  # Hebbian: memorize a class while it has been seen fewer than T times
    gamma: tuple[float, ...] = (0.1,)  # Hebbian: smallest mixing rate
    lr: tuple[float, ...] = (8e-3,)  # RMSprop learning rate
    batch_size: tuple[int, ...] = (32,)
    criterion: Literal["new", "all"] = "new"  # judge the level's new classes, or all so far
    start_classes: int = 30
    new_classes: int = 5
    threshold: float = 0.6  # a level passes when test accuracy is above this
    eval_every: int = 10  # steps between level checks
    max_classes: int = 0  # stop after the level that reaches this many classes (0 = all)
    max_steps: int = 30000  # per combination
    max_minutes: float = 0.0  # stop this invocation (with checkpoints) after this long; 0 = off
    checkpoint_every: int = 500
    augment: bool = True  # rotation in [-30°, 30°] and shifts up to 10%, batched on tensors
    dropout: float = 0.2
    channels: int = 64
    device: str = "cpu"  # cpu | auto | cuda | cuda:N (the batches are small: a CPU does well)
    threads: int = 0  # torch CPU threads (0: torch's default)
    progress: bool = True
    mbpa: MbPAHeadSettings = field(default_factory=MbPAHeadSettings)

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any work
        for name in ("head", "seeds", "objective", "T", "gamma", "lr", "batch_size"):
            if not getattr(self, name):
                raise BadSetting(name, "needs at least one value")
        if not all(0 <= s < 2**32 for s in self.seeds):
            raise BadSetting("seeds", "each value must lie in [0, 2**32)")
        if not all(t >= 0 for t in self.T):
            raise BadSetting("T", "each value must be >= 0")
        if not all(0 <= g <= 1 for g in self.gamma):
            raise BadSetting("gamma", "each value must lie in [0, 1]")
        if not all(x > 0 for x in self.lr):
            raise BadSetting("lr", "each value must be positive")
        if not all(b >= 1 for b in self.batch_size):
            raise BadSetting("batch_size", "each value must be >= 1")
        for name in ("start_classes", "new_classes", "eval_every", "max_steps", "checkpoint_every", "channels"):
            if getattr(self, name) < 1:
                raise BadSetting(name, "must be >= 1")
        for name in ("max_classes", "max_minutes", "threads"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if not 0 <= self.threshold < 1:
            raise BadSetting("threshold", "must lie in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise BadSetting("dropout", "must lie in [0, 1)")
        check_device(self.device)


def mbpa_settings(cfg: CurriculumConfig) -> dict:
    """The MbPA head's settings as recorded (and named) with its results."""
    m = cfg.mbpa
    return {"size": m.size, "k": m.k, "steps": m.steps, "lr": m.lr, "l2": m.l2, "lam": m.lam, "eps": m.eps}


def combinations(cfg: CurriculumConfig) -> list[CurriculumConfig]:
    """One single-valued config per combination, ``out`` set to its sub-folder.

    Hebbian settings (objective, T, γ) multiply only the Hebbian runs.
    """
    out, seen = [], set()
    for head, seed, obj, T, gamma, lr, bs in itertools.product(cfg.head, cfg.seeds, cfg.objective, cfg.T,
                                                               cfg.gamma, cfg.lr, cfg.batch_size):
        if head != "hebbian":
            obj, T, gamma = cfg.objective[0], cfg.T[0], cfg.gamma[0]
        settings = {"head": head, "objective": obj, "T": T, "gamma": gamma, "lr": lr, "batch_size": bs,
                    "criterion": cfg.criterion, "mbpa": mbpa_settings(cfg) if head == "mbpa" else None}
        name = f"{combination_name(settings)}-s{seed}"
        if name in seen:
            continue
        seen.add(name)
        out.append(replace(cfg, out=f"{cfg.out}/{name}", head=(head,), seeds=(seed,), objective=(obj,), T=(T,),
                           gamma=(gamma,), lr=(lr,), batch_size=(bs,)))
    return out


# --------------------------------------------------------------------------- one combination


def _class_order(data: Omniglot, seed: int, max_classes: int) -> torch.Tensor:
    order = torch.randperm(data.num_classes, generator=torch.Generator().manual_seed(seed))
    return order[:max_classes] if max_classes else order


def _relabelled(images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Images of the curriculum's classes grouped by arrival, with labels = arrival index."""
    rank = torch.full((int(labels.max()) + 1,), -1, dtype=torch.int64)
    rank[order] = torch.arange(order.numel())
    new = rank[labels]
    keep = (new >= 0).nonzero()[:, 0]
    idx = keep[torch.argsort(new[keep], stable=True)]
    y = new[idx]
    counts = torch.bincount(y, minlength=order.numel())
    return images[idx], y, torch.cumsum(counts, 0) - counts, counts


def train_one(cfg: CurriculumConfig, data: Omniglot, deadline: float | None = None) -> dict:
    """Run (or resume) one combination; returns its curriculum record (also in ``curriculum.json``)."""
    run = RunFolder(cfg.out)
    head, seed, lr, bs = cfg.head[0], cfg.seeds[0], cfg.lr[0], cfg.batch_size[0]
    device = resolve_device(cfg.device, DistInfo())  # one process
    ck = None
    if run.has_checkpoint("last"):
        ck, _ = run.load_checkpoint("last", map_location=device)
        check_resume(ck["config"], cfg, run.path, pinned=frozenset({"eval_every"}))  # it paces the levels
    digest = hashlib.sha1("\n".join(data.classes).encode("utf-8")).hexdigest()
    if ck is not None and ck.get("classes_digest", digest) != digest:
        raise UserError(f"{run.path} was trained on other Omniglot classes than data={cfg.data} holds now "
                        f"({data.num_classes}); use the same archives or another out=")
    record = run.read_result("curriculum")
    if ck is None and record is not None:
        raise UserError(f"{run.path} has results but no checkpoint; use another out=")

    total = min(cfg.max_classes or data.num_classes, data.num_classes)
    order = _class_order(data, seed, total)
    tr_x, _, tr_off, tr_cnt = _relabelled(data.train_images, data.train_labels, order)
    te_x, te_y, te_off, te_cnt = _relabelled(data.test_images, data.test_labels, order)
    te_x, te_y = te_x.to(device), te_y.to(device)

    torch.manual_seed(seed)
    model = ConvClassifier(ConvNetConfig(max_classes=total, channels=cfg.channels, dropout=cfg.dropout,
                                         head="hebbian" if head == "hebbian" else "softmax",
                                         gamma=cfg.gamma[0], T=cfg.T[0], objective=cfg.objective[0]))
    model.reset_head(torch.Generator().manual_seed(seed))  # the same start for every head kind
    torch.manual_seed(seed)  # dropout draws the same numbers for every head kind
    model.to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    m = cfg.mbpa
    mbpa = MbPA(size=m.size, k=m.k, steps=m.steps, lr=m.lr, l2=m.l2, eps=m.eps) if head == "mbpa" else None
    cur = Curriculum(total, start=cfg.start_classes, new=cfg.new_classes, threshold=cfg.threshold,
                     criterion=cfg.criterion)
    gen = torch.Generator().manual_seed(seed + 1)  # batches and augmentation
    step, seconds, eval_seconds = 0, 0.0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        cur.load_state_dict(ck["curriculum"])
        step, seconds, eval_seconds = int(ck["step"]), float(ck["seconds"]), float(ck["eval_seconds"])
        set_rng_state(ck["rng"])
        gen.set_state(ck["generator"].cpu())
        if mbpa is not None:
            mbpa.load_state_dict(ck["mbpa"])  # on the device the checkpoint was mapped to
    run.save_config(cfg, recipe="curriculum")

    def test_set(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(te_off[lo]), int(te_off[hi - 1] + te_cnt[hi - 1])
        return te_x[a:b], te_y[a:b]

    def summary(finished: bool) -> dict:
        return {"head": head, "objective": cfg.objective[0], "T": cfg.T[0], "gamma": cfg.gamma[0], "lr": lr,
                "batch_size": bs, "seed": seed, "criterion": cfg.criterion, "total_classes": total,
                "mbpa": mbpa_settings(cfg) if head == "mbpa" else None,
                "start_classes": cfg.start_classes, "new_classes": cfg.new_classes,
                "classes": cur.n, "step": step, "complete": cur.finished, "finished": finished,
                "levels_passed": len(cur.levels), "seconds": seconds, "eval_seconds": eval_seconds,
                "mean_steps_after_80": mean_steps_after(cur.levels),
                "levels": cur.levels}

    def checkpoint() -> None:
        run.save_checkpoint("last", {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "config": to_dict(cfg), "step": step,
            "curriculum": cur.state_dict(), "seconds": seconds, "eval_seconds": eval_seconds,
            "rng": rng_state(), "generator": gen.get_state(), "classes_digest": digest,
            "mbpa": mbpa.state_dict() if mbpa is not None else None,
        })

    writer = run.metrics_writer(tensorboard=False)
    bar = tqdm(total=total, initial=cur.levels[-1]["classes"] if cur.levels else 0,
               desc=run.name, dynamic_ncols=True, disable=not cfg.progress, unit="class")
    images = tr_x.float().div(255).unsqueeze(1).to(device)  # (N, 1, 28, 28), converted once
    loss_sum, loss_n, t_mark, img_rate, acc = 0.0, 0, time.perf_counter(), 0.0, math.nan
    stopped = False
    model.train()
    while not cur.finished and step < cfg.max_steps:
        t0 = time.perf_counter()
        n = cur.n
        y = torch.randint(n, (bs,), generator=gen)  # uniform over the introduced classes
        idx = tr_off[y] + (torch.rand(bs, generator=gen) * tr_cnt[y]).long()
        y, idx = y.to(device), idx.to(device)
        x = augment(images[idx], generator=gen) if cfg.augment else images[idx]
        out = model(x, n)
        loss = F.cross_entropy(out.logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        feats = out.features.detach()
        model.memorize(feats, y, n)
        if mbpa is not None:
            mbpa.write(feats, y)
        step += 1
        loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        seconds += time.perf_counter() - t0
        if step % cfg.eval_every == 0:
            t1 = time.perf_counter()
            xs, ys = test_set(*cur.judged)
            acc = accuracy(model, xs, ys, n, mbpa, m.lam)
            passed_level = cur.level
            extra = {}
            if cur.update(step, acc, seconds=seconds + time.perf_counter() - t1):
                if cfg.criterion == "new":  # also record the accuracy over every class so far
                    extra_x, extra_y = test_set(0, n)
                    cur.levels[-1]["accuracy_all"] = accuracy(model, extra_x, extra_y, n, mbpa, m.lam)
                else:
                    cur.levels[-1]["accuracy_all"] = acc
                extra = {"level/passed": passed_level, "level/classes": n, "level/steps": cur.levels[-1]["steps"]}
                bar.update(n - bar.n)
            eval_seconds += time.perf_counter() - t1
            seconds += time.perf_counter() - t1
            now = time.perf_counter()
            img_rate = loss_n * bs / max(now - t_mark, 1e-9)
            writer.log(step, {"classes": n, "level": passed_level, "test/acc": acc,
                              "train/loss": loss_sum / loss_n, "images_per_s": img_rate, **extra})
            bar.set_postfix(level=cur.level, step=step, acc=f"{acc:.2f}", img_s=f"{img_rate:.0f}")
            loss_sum, loss_n, t_mark = 0.0, 0, now
            if extra:
                run.write_result("curriculum", summary(False))
                checkpoint()
        if step % cfg.checkpoint_every == 0:
            checkpoint()
        if deadline is not None and time.perf_counter() > deadline and not cur.finished:
            stopped = True
            break
    bar.close()
    writer.close()
    checkpoint()
    result = summary(cur.finished or step >= cfg.max_steps)
    run.write_result("curriculum", result)
    if cfg.progress and not stopped:
        status = "finished" if cur.finished else f"stopped at max_steps={cfg.max_steps}"
        tqdm.write(f"{run.name}: {status}, {len(cur.levels)} levels, {cur.n} classes, "
                   f"{step} steps")
    return result


def run_curriculum(cfg: CurriculumConfig) -> list[dict]:
    """Every combination of ``cfg``, one after another (resuming or skipping those done)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolve_device(cfg.device, DistInfo())  # a missing GPU fails here, before the data is read
    data = load_omniglot(cfg.data, cfg.data_dir, progress=cfg.progress)
    print(f"omniglot: {data.num_classes} classes from {len(data.alphabets)} alphabets "
          f"({len(data.train_labels)} training / {len(data.test_labels)} test images)", flush=True)
    if data.num_classes < cfg.start_classes:
        raise UserError(f"{cfg.data} has {data.num_classes} classes, fewer than start_classes={cfg.start_classes}")
    deadline = time.perf_counter() + 60 * cfg.max_minutes if cfg.max_minutes else None
    RunFolder(cfg.out).mark("curriculum")  # the parent of the combinations' sub-runs
    results = []
    for one in combinations(cfg):
        done = RunFolder(one.out).read_result("curriculum")
        if done is not None and (done.get("complete") or done.get("step", 0) >= one.max_steps):
            results.append(done)
            continue
        if deadline is not None and time.perf_counter() > deadline:
            break
        results.append(train_one(one, data, deadline))
    return results


CONFIG = CurriculumConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, CurriculumConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/omniglot)")
    results = run_curriculum(cfg)
    for r in results:
        after = r["mean_steps_after_80"]
        print(f"{r['head']:8s} seed {r['seed']}: {r['levels_passed']} levels, {r['classes']} classes, "
              f"{r['step']} steps; mean steps per level after 80 classes: "
              f"{'–' if after is None else f'{after:.1f}'}")
    print(f"run `fastbind report {cfg.out}` for the figures")
    return 0
