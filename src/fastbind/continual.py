"""Continual learning with an episodic memory: MbPA's own claims (Sprechmann et al. 2018).

A network learns a sequence of tasks (:mod:`fastbind.data.tasks`) one after another with no
access to earlier tasks' training data except through a bounded episodic memory. The same
memory serves experience replay during training and MbPA at prediction time; MbPA changes no
training, so every trained run is evaluated plain (``base``) and with MbPA (``+mbpa``) from the
same network, and with MbPA over keys recomputed by the final network from the stored
inputs (``+mbpa-rekey``, an ablation: the paper keeps the keys embedded when written).

The library functions (``fastbind continual`` and ``fastbind continual-sweep`` are command
lines over them)::

    cfg = ContinualConfig(scenario=("permuted",), method=("finetune", "ewc"), data="fashion-mnist")
    run_continual(cfg)                    # one run folder per combination, results.json each
    sweep_run("runs/continual/permuted-ewc-lr0.03-lam100-s0", MbPASweep(k=(10, 100)))

**The memory** (``memory=N`` entries, ``memory/`` :class:`~fastbind.memory.MbPA` with
``policy="reservoir"``, distances taken from the search: test images are never stored): every training example of the current task is written after its
optimizer step with its key (the penultimate layer's output, before dropout), its label and
its input; a reservoir keeps a uniform sample of everything written, so each finished task
keeps a share of the memory in proportion to its share of the stream.

**Methods** (the same network, data order and number of steps): ``finetune`` (plain SGD);
``ewc`` (:class:`fastbind.training.ewc.EWC`); ``replay`` (each batch adds ``replay.ratio × batch``
examples drawn uniformly from the memory); ``hebbian`` (the Hebbian Softmax head; on
``permuted``, where every task has the same classes, its counts restart at each task
boundary); ``joint`` (at task ``t`` the batches come from the union of tasks ``1..t``: the
upper bound with all data at hand, same budget).

**Results** (``results.json``): per split (``valid``, ``test``) and variant, the accuracy
matrix ``R[i][j]`` (accuracy on task ``j`` after training on task ``i``, ``None`` for ``j > i``),
``average_accuracy`` (mean of the last row), ``forgetting`` (mean over all but the last task
of the drop from its best earlier accuracy to its final one, Chaudhry et al. 2018),
``backward_transfer`` (mean of ``R[T−1][j] − R[j][j]``, Lopez-Paz & Ranzato 2017) and the
average accuracy after each task. ``imbalanced`` adds the new-class, old-class and overall
accuracy at ``eval_at`` steps after the new classes arrive.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.data.idx import load_image_set
from fastbind.data.omniglot import load_omniglot
from fastbind.data.tasks import Task, class_split_tasks, imbalanced_tasks, permuted_tasks
from fastbind.errors import BadSetting, UserError
from fastbind.evaluation import check_local_adaptation, predict
from fastbind.memory import MbPA
from fastbind.models.convnet import ConvClassifier, ConvNetConfig
from fastbind.runs import RunFolder, check_resume
from fastbind.training.checkpoint import rng_state, set_rng_state
from fastbind.training.config import alias, to_dict
from fastbind.training.distributed import DistInfo, check_device, resolve_device
from fastbind.training.ewc import EWC, diagonal_fisher

__all__ = ["ContinualConfig", "MbPASweep", "continual_metrics", "combinations", "run_continual", "sweep_run",
           "train_one", "build_tasks"]

Scenario = Literal["permuted", "classes", "imbalanced"]
Dataset = Literal["fashion-mnist", "omniglot"]
Method = Literal["finetune", "ewc", "replay", "hebbian", "joint"]
VARIANTS = ("base", "+mbpa", "+mbpa-rekey")
SPLITS = ("valid", "test")
# Scenario defaults when tasks=0: permuted 10 tasks; classes 5 (Fashion-MNIST: 5 × 2) or 10
# (Omniglot); imbalanced always 2 (old classes, then the new ones).
DEFAULT_TASKS = {("permuted", "fashion-mnist"): 10, ("classes", "fashion-mnist"): 5,
                 ("classes", "omniglot"): 10, ("imbalanced", "fashion-mnist"): 2}


@dataclass
class LocalAdaptation:
    """MbPA at prediction time: K neighbours from the memory, ``steps`` local steps of ``lr``."""

    # The best of a K × lr screen on permuted Fashion-MNIST's validation split (docs/RESULTS.md).
    k: int = 1024
    steps: int = 1
    lr: float = 0.3
    l2: float = 0.1  # β of the pull back to the trained output layer
    eps: float = 1e-3  # kernel ε

    def __post_init__(self) -> None:
        check_local_adaptation(self)


@dataclass
class EWCSettings:
    lam: tuple[float, ...] = alias("lambda", default=(100.0,))  # penalty weight λ (a list runs each)
    fisher_examples: int = 1000  # training examples of a finished task its Fisher is estimated on

    def __post_init__(self) -> None:
        if not self.lam or not all(v >= 0 for v in self.lam):
            raise BadSetting("lam", "needs one or more values >= 0")
        if self.fisher_examples < 1:
            raise BadSetting("fisher_examples", "must be >= 1")


@dataclass
class ReplaySettings:
    ratio: tuple[float, ...] = (1.0,)  # replayed examples per new example in a batch (a list runs each)

    def __post_init__(self) -> None:
        if not self.ratio or not all(v > 0 for v in self.ratio):
            raise BadSetting("ratio", "needs one or more values > 0")


@dataclass
class HebbianSettings:
    gamma: float = 0.1  # smallest mixing rate
    T: int = 20  # memorize a class while it has been seen fewer than T times (per task on permuted)

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1:
            raise BadSetting("gamma", "must lie in [0, 1]")
        if self.T < 0:
            raise BadSetting("T", "must be >= 0")


@dataclass
class ContinualConfig:
    """Settings of ``fastbind continual`` (list-valued keys run every combination)."""

    out: str = "runs/continual"  # run folder; one sub-folder per combination
    scenario: tuple[Scenario, ...] = ("permuted",)
    dataset: tuple[Dataset, ...] = ("fashion-mnist",)  # omniglot: the classes scenario only
    method: tuple[Method, ...] = ("finetune", "ewc", "replay", "hebbian", "joint")
    seeds: tuple[int, ...] = (0,)
    data: str = "fashion-mnist"  # folder of the four IDX files (Fashion-MNIST or MNIST), or a name to download
    omniglot: str = "omniglot"  # folder of Omniglot archives, or omniglot = download
    data_dir: str | None = None  # data cache folder (default: the user cache folder)
    tasks: int = 0  # 0: the scenario's default (permuted 10, classes 5 / Omniglot 10, imbalanced 2)
    steps_per_task: int = 0  # 0: one pass over the task's training examples
    train_examples: int = 10000  # permuted: training images per task (the paper's 10,000)
    valid_fraction: float = 0.1  # of each task's training data, held out for choosing settings
    new_examples: tuple[int, ...] = (1, 5, 50, 500)  # imbalanced: training images per new class
    old_classes: int = 8  # imbalanced: classes learnt first
    eval_at: tuple[int, ...] = (0, 10, 50, 100, 500, 1000)  # imbalanced: steps after the new classes arrive
    memory: int = 10000  # episodic memory entries
    # reservoir: a uniform sample of every training example (each task keeps its share); recent:
    # the last `memory` examples, the paper's first-in-first-out buffer (evicts the first task first)
    memory_policy: Literal["reservoir", "recent"] = "reservoir"
    batch_size: int = 32
    lr: tuple[float, ...] = (0.03,)  # SGD learning rate of the network (a list runs each)
    momentum: float = 0.0
    hidden: tuple[int, ...] = (1000, 1000)  # the MLP's hidden layers (Fashion-MNIST)
    dropout: float = 0.0  # before the output layer (Omniglot's convnet: 0.2)
    eval_examples: int = 2000  # test (and validation) images per task in each evaluation (0: all)
    mbpa: LocalAdaptation = field(default_factory=LocalAdaptation)
    ewc: EWCSettings = field(default_factory=EWCSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    hebbian: HebbianSettings = field(default_factory=HebbianSettings)
    max_minutes: float = 0.0  # stop this invocation (with checkpoints) after this long; 0 = off
    stop_after: int = 0  # stop a combination after this many training steps in this invocation; re-running resumes
    checkpoint_every: int = 500  # steps
    device: str = "cpu"  # cpu | auto | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("scenario", "dataset", "method", "seeds", "lr", "new_examples", "eval_at"):
            if not getattr(self, name):
                raise BadSetting(name, "needs at least one value")
        if not all(0 <= s < 2**32 for s in self.seeds):
            raise BadSetting("seeds", "each value must lie in [0, 2**32)")
        if not all(x > 0 for x in self.lr):
            raise BadSetting("lr", "each value must be positive")
        if not all(n >= 1 for n in self.new_examples):
            raise BadSetting("new_examples", "each value must be >= 1")
        if not all(s >= 0 for s in self.eval_at):
            raise BadSetting("eval_at", "each value must be >= 0")
        for name in ("memory", "batch_size", "train_examples", "checkpoint_every", "old_classes"):
            if getattr(self, name) < 1:
                raise BadSetting(name, "must be >= 1")
        for name in ("tasks", "steps_per_task", "eval_examples", "max_minutes", "stop_after", "threads"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if self.tasks == 1:
            raise BadSetting("tasks", "must be >= 2 (or 0 for the scenario's default)")
        if not 0 < self.valid_fraction < 1:
            raise BadSetting("valid_fraction", "must lie in (0, 1)")
        if not 0 <= self.dropout < 1:
            raise BadSetting("dropout", "must lie in [0, 1)")
        if self.momentum < 0:
            raise BadSetting("momentum", "must be >= 0")
        if not self.hidden or min(self.hidden) < 1:
            raise BadSetting("hidden", "needs one or more sizes >= 1")
        if not all(round(r * self.batch_size) >= 1 for r in self.replay.ratio):
            raise BadSetting("replay.ratio", f"must give at least one replayed example per batch of {self.batch_size}")
        if "imbalanced" in self.scenario and self.tasks not in (0, 2):
            raise BadSetting("tasks", "imbalanced has 2 tasks (old classes, then new ones): use 0 or 2")
        if "omniglot" in self.dataset and set(self.scenario) - {"classes"}:
            raise BadSetting("dataset", "omniglot runs the classes scenario only")
        check_device(self.device)


# --------------------------------------------------------------------------- combinations


def combination_name(scenario: str, dataset: str, method: str, lr: float, seed: int, *,
                     new_examples: int | None = None, lam: float | None = None, ratio: float | None = None,
                     policy: str = "reservoir") -> str:
    parts = [scenario]
    if dataset != "fashion-mnist":
        parts.append(dataset)
    if new_examples is not None:
        parts.append(f"n{new_examples}")
    parts += [method, f"lr{lr:g}"]
    if lam is not None:
        parts.append(f"lam{lam:g}")
    if ratio is not None:
        parts.append(f"mix{ratio:g}")
    if policy != "reservoir":
        parts.append(policy)
    return "-".join(parts + [f"s{seed}"])


def combinations(cfg: ContinualConfig) -> list[ContinualConfig]:
    """One single-valued config per combination, ``out`` set to its sub-folder. EWC's λ multiplies
    only the EWC runs, the replay ratio only the replay runs, ``new_examples`` only ``imbalanced``."""
    out, seen = [], set()
    for scenario, dataset, method, lr, seed in itertools.product(cfg.scenario, cfg.dataset, cfg.method, cfg.lr,
                                                                  cfg.seeds):
        if dataset == "omniglot" and scenario != "classes":
            continue
        news = cfg.new_examples if scenario == "imbalanced" else (None,)
        lams = cfg.ewc.lam if method == "ewc" else (None,)
        ratios = cfg.replay.ratio if method == "replay" else (None,)
        for n, lam, ratio in itertools.product(news, lams, ratios):
            name = combination_name(scenario, dataset, method, lr, seed, new_examples=n, lam=lam, ratio=ratio,
                                    policy=cfg.memory_policy)
            if name in seen:
                continue
            seen.add(name)
            out.append(replace(
                cfg, out=f"{cfg.out}/{name}", scenario=(scenario,), dataset=(dataset,), method=(method,), lr=(lr,),
                seeds=(seed,), new_examples=(n if n is not None else cfg.new_examples[0],),
                ewc=replace(cfg.ewc, lam=(lam if lam is not None else cfg.ewc.lam[0],)),
                replay=replace(cfg.replay, ratio=(ratio if ratio is not None else cfg.replay.ratio[0],))))
    return out


# --------------------------------------------------------------------------- data and model


def build_tasks(cfg: ContinualConfig, images: Any) -> list[Task]:
    """The task sequence of a single-valued config on the loaded data set."""
    scenario, dataset, seed = cfg.scenario[0], cfg.dataset[0], cfg.seeds[0]
    tasks = cfg.tasks or DEFAULT_TASKS[(scenario, dataset)]
    shape = tuple(images.train_images.shape[1:])
    if len(shape) != 2 or shape[0] != shape[1]:
        raise UserError(f"{dataset}: the networks take square images, got {'×'.join(map(str, shape))}")
    try:
        if scenario == "permuted":
            valid = round(cfg.train_examples * cfg.valid_fraction / (1 - cfg.valid_fraction))
            return permuted_tasks(images, tasks, train=cfg.train_examples, valid=valid, seed=seed)
        if scenario == "classes":
            return class_split_tasks(images, tasks, valid_fraction=cfg.valid_fraction, seed=seed)
        return imbalanced_tasks(images, old=cfg.old_classes, new_examples=cfg.new_examples[0],
                                valid_fraction=cfg.valid_fraction, seed=seed)
    except ValueError as exc:  # settings the data set cannot meet (too many tasks, examples, classes)
        raise UserError(f"{scenario} on {dataset}: {exc}") from None


def build_model(cfg: ContinualConfig, n_classes: int, image_size: int = 28) -> ConvClassifier:
    """The MLP (Fashion-MNIST) or the curriculum's convnet (Omniglot) with a softmax or Hebbian head."""
    conv = cfg.dataset[0] == "omniglot"
    return ConvClassifier(ConvNetConfig(
        max_classes=n_classes, encoder="conv" if conv else "mlp", hidden=tuple(cfg.hidden), dropout=cfg.dropout,
        image_size=image_size,
        head="hebbian" if cfg.method[0] == "hebbian" else "softmax", gamma=cfg.hebbian.gamma, T=cfg.hebbian.T))


def _reservoir(size: int, m: Any, exact_distances: bool = False, seed: int = 0, policy: str = "reservoir") -> MbPA:
    """An empty memory of ``size`` entries adapting with ``m``'s k, steps, lr, l2 and eps (a reservoir
    unless said otherwise; a copy written in one call of at most ``size`` rows keeps them all either way)."""
    return MbPA(size=size, k=m.k, steps=m.steps, lr=m.lr, l2=m.l2, eps=m.eps, policy=policy,  # type: ignore[arg-type]
                seed=seed, exact_distances=exact_distances)


def new_memory(cfg: ContinualConfig, seed: int = 0) -> MbPA:
    """The episodic memory of a run: ``memory`` entries, distances from the search (test images are never stored)."""
    return _reservoir(cfg.memory, cfg.mbpa, False, seed, cfg.memory_policy)


def _floats(x: torch.Tensor) -> torch.Tensor:
    """uint8 images ``(B, H, W)`` → ``(B, 1, H, W)`` floats in [0, 1]."""
    return x.float().div_(255).unsqueeze(1)


# --------------------------------------------------------------------------- metrics


def continual_metrics(R: list[list[float] | None]) -> dict[str, Any]:
    """Average accuracy, forgetting, backward transfer and the average after each task, from the
    lower-triangular accuracy matrix ``R[i][j]`` (rows: after task ``i``; ``R[i][j]`` for ``j ≤ i``).

    A row may be None (not measured after that task): the curve has None there, and forgetting
    and backward transfer, which need every row, are None."""
    T = len(R)
    if T == 0 or R[-1] is None:
        return {"average_accuracy": None, "forgetting": None, "backward_transfer": None,
                "average_accuracy_curve": [None if row is None else sum(row[: i + 1]) / (i + 1)
                                           for i, row in enumerate(R)]}
    curve = [None if R[i] is None else sum(R[i][: i + 1]) / (i + 1) for i in range(T)]  # type: ignore[index]
    last = R[T - 1]
    forgetting = bwt = None
    if T > 1 and all(row is not None for row in R):
        forgetting = sum(max(R[i][j] for i in range(j, T - 1)) - last[j] for j in range(T - 1)) / (T - 1)  # type: ignore[type-var,operator]
        bwt = sum(last[j] - R[j][j] for j in range(T - 1)) / (T - 1)  # type: ignore[operator]
    return {"average_accuracy": curve[-1], "forgetting": forgetting, "backward_transfer": bwt,
            "average_accuracy_curve": curve}


# --------------------------------------------------------------------------- evaluation


def _subset(task: Task, split: str, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = task.split(split)
    if limit and x.shape[0] > limit:  # the same seeded sample at every evaluation
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
        x, y = x[keep], y[keep]
    return x, y


@torch.no_grad()
def rekeyed(memory: MbPA, model: ConvClassifier, chunk: int = 1024) -> MbPA:
    """A copy of ``memory`` whose keys are recomputed by ``model`` from the stored inputs."""
    out = _reservoir(memory.size, memory, memory.exact_distances)
    view, inputs = memory.store.view(), memory.store.payload()
    if view is None or inputs is None:
        return out
    was = model.training
    model.eval()
    keys = torch.cat([model.features(_floats(inputs[i:i + chunk])) for i in range(0, inputs.shape[0], chunk)])
    model.train(was)
    out.write(keys, view[1])
    return out


def accuracies(model: ConvClassifier, tasks: list[Task], n: int, split: str, memories: dict[str, MbPA | None],
               limit: int, seed: int) -> dict[str, list[float]]:
    """Accuracy on each task's ``split`` (classes ``[0, n)``), per variant (``None``: the plain network);
    None for a task with no images in the split."""
    out: dict[str, list[float]] = {v: [] for v in memories}
    for j, task in enumerate(tasks):
        x, y = _subset(task, split, limit, seed + j)
        for variant, mem in memories.items():
            pred = predict(model, x, n, mem, 1.0 if mem is not None else 0.0)
            out[variant].append(float((pred.cpu() == y).float().mean()) if y.numel() else None)
    return out


def variant_memories(memory: MbPA, model: ConvClassifier) -> dict[str, MbPA | None]:
    return {"base": None, "+mbpa": memory, "+mbpa-rekey": rekeyed(memory, model)}


# --------------------------------------------------------------------------- one combination


def tasks_digest(tasks: list[Task]) -> str:
    """A fingerprint of a task sequence's data (every label, every training and test image), to refuse
    resuming on other data."""
    h = hashlib.sha1()
    for t in tasks:
        for part in (t.train_x, t.train_y, t.valid_y, t.test_x, t.test_y):
            h.update(part.contiguous().numpy().tobytes())
    return h.hexdigest()


def _step_generator(seed: int, task: int, step: int) -> torch.Generator:
    """Each step's batch draws come from their own generator: a resumed run draws the same ones."""
    digest = hashlib.blake2b(f"{seed}/{task}/{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


class _Batches:
    """The training batches of one task: each step's indices depend only on (seed, task, step), so a
    resumed run draws the same ones. What does not change between steps is computed once per task."""

    def __init__(self, pool_y: torch.Tensor, balanced: bool, bs: int, seed: int, task: int) -> None:
        self.n, self.balanced, self.bs, self.seed, self.task = pool_y.shape[0], balanced, bs, seed, task
        if balanced:  # a class uniformly among the task's, then one of its examples
            self.classes = torch.unique(pool_y)
            self.order = torch.argsort(pool_y, stable=True)
            self.counts = torch.bincount(pool_y, minlength=int(self.classes.max()) + 1)
            self.start = torch.cumsum(self.counts, 0) - self.counts
        self._epoch: tuple[int, torch.Tensor] | None = None  # the permutation of the current pass

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, torch.randperm(self.n, generator=_step_generator(self.seed, self.task, -1 - epoch)))
        return self._epoch[1]

    def at(self, step: int) -> torch.Tensor:
        bs = self.bs
        if self.balanced:
            g = _step_generator(self.seed, self.task, step)
            c = self.classes[torch.randint(self.classes.numel(), (bs,), generator=g)]
            return self.order[self.start[c] + (torch.rand(bs, generator=g) * self.counts[c]).long()]
        pos, need, parts = step * bs, bs, []
        while need:  # shuffled passes over the pool, one permutation per pass
            epoch, offset = divmod(pos, self.n)
            take = self._permutation(epoch)[offset:offset + need]
            parts.append(take)
            pos, need = pos + take.numel(), need - take.numel()
        return torch.cat(parts)


def train_one(cfg: ContinualConfig, tasks: list[Task], deadline: float | None = None) -> dict[str, Any]:
    """Run (or resume) one combination; returns its results (also in ``results.json``)."""
    run = RunFolder(cfg.out)
    scenario, method, seed, lr = cfg.scenario[0], cfg.method[0], cfg.seeds[0], cfg.lr[0]
    device = resolve_device(cfg.device, DistInfo())
    ck = None
    if run.has_checkpoint("last"):
        ck, _ = run.load_checkpoint("last", map_location=device)
        check_resume(ck["config"], cfg, run.path)
    elif run.read_result("results") is not None:
        raise UserError(f"{run.path} has results but no checkpoint; use another out=")
    digest = tasks_digest(tasks)
    if ck is not None and ck.get("tasks_digest", digest) != digest:
        raise UserError(f"{run.path} was trained on other task data than data={cfg.data} gives now; "
                        "use the same data or another out=")
    n_classes = tasks[-1].n_seen
    torch.manual_seed(seed)
    model = build_model(cfg, n_classes, tasks[0].train_x.shape[-1]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum)
    memory = new_memory(cfg, seed=seed)
    ewc = EWC(cfg.ewc.lam[0]) if method == "ewc" else None
    state: dict[str, Any] = {"task": 0, "step": 0, "seconds": 0.0, "eval_seconds": 0.0,
                             "matrix": {s: {v: [] for v in VARIANTS} for s in SPLITS}, "arrival": []}
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        memory.load_state_dict(ck["memory"])
        if ewc is not None:
            ewc.load_state_dict(ck["ewc"])
        state = ck["state"]
        set_rng_state(ck["rng"])
    run.save_config(cfg, recipe="continual")
    steps_of = [cfg.steps_per_task or math.ceil(t.train_y.shape[0] / cfg.batch_size) for t in tasks]
    if scenario == "imbalanced" and not cfg.steps_per_task:
        steps_of[1] = max(steps_of[1], max(cfg.eval_at))  # the curve's last point needs that many steps
    replay_n = round(cfg.replay.ratio[0] * cfg.batch_size) if method == "replay" else 0
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    fisher_loss = (lambda mod, xi, yi, n: F.cross_entropy(mod(xi, n).logits, yi))

    def checkpoint() -> None:
        run.save_checkpoint("last", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "memory": memory.state_dict(), "ewc": ewc.state_dict() if ewc else None,
                                     "state": state, "rng": rng_state(), "config": to_dict(cfg),
                                     "tasks_digest": digest})

    def evaluate(t: int, n: int) -> dict[str, dict[str, list[float] | None]]:
        """After task t: the test split with and without MbPA; after the last task also the
        validation split (what settings are chosen on) and MbPA over keys recomputed by the
        final network (defined for the final network only)."""
        t0 = time.perf_counter()
        final = t == len(tasks) - 1
        mems = variant_memories(memory, model) if final else {"base": None, "+mbpa": memory}
        out: dict[str, dict[str, list[float] | None]] = {s: dict.fromkeys(VARIANTS) for s in SPLITS}
        for s in SPLITS if final else ("test",):
            out[s].update(accuracies(model, tasks[: t + 1], n, s, mems, cfg.eval_examples, seed))
        state["eval_seconds"] += time.perf_counter() - t0
        return out

    def arrival_point(step: int) -> None:  # imbalanced: old / new / overall accuracy after the arrival
        t0 = time.perf_counter()
        mems = variant_memories(memory, model)
        point: dict[str, Any] = {"step": step}
        for s in SPLITS:
            acc = accuracies(model, tasks, n_classes, s, mems, cfg.eval_examples, seed)
            sizes = [t.split(s)[1].numel() for t in tasks]  # the accuracy over all classes' images, estimated
            # from each task's sample (the samples are capped alike, the classes' shares are not)
            point[s] = {v: {"old": a[0], "new": a[1], "overall": (a[0] * sizes[0] + a[1] * sizes[1]) / sum(sizes)}
                        for v, a in acc.items()}
        state["arrival"].append(point)
        state["eval_seconds"] += time.perf_counter() - t0

    total = sum(steps_of)
    done = sum(steps_of[: state["task"]])  # steps of the finished tasks
    bar = tqdm(total=total, initial=done + state["step"], desc=run.name, dynamic_ncols=True, disable=not cfg.progress, unit="step")
    writer = run.metrics_writer(tensorboard=False)
    stopped, steps_here = False, 0
    model.train()
    while state["task"] < len(tasks):
        t = state["task"]
        task = tasks[t]
        n = task.n_seen
        pool = tasks[: t + 1] if method == "joint" else [task]
        pool_x = torch.cat([p.train_x for p in pool]) if len(pool) > 1 else task.train_x
        pool_y = torch.cat([p.train_y for p in pool]) if len(pool) > 1 else task.train_y
        batches = _Batches(pool_y, task.balanced, cfg.batch_size, seed, t)
        if state["step"] == 0 and t > 0 and method == "hebbian" and scenario == "permuted":
            model.head.counts.zero_()  # the same ten classes again: memorize them afresh for this task
        while state["step"] < steps_of[t]:
            s = state["step"]
            if scenario == "imbalanced" and t == 1 and s in cfg.eval_at and not any(
                    p["step"] == s for p in state["arrival"]):
                arrival_point(s)
            t0 = time.perf_counter()
            idx = batches.at(s)
            xb_raw, yb = pool_x[idx], pool_y[idx]
            x, y = _floats(xb_raw).to(device), yb.to(device)
            stored = memory.store.view()
            if replay_n and stored is not None:
                pick = torch.randint(stored[1].shape[0], (replay_n,), generator=_step_generator(seed, t, s + 10**9))
                inputs = memory.store.payload()
                assert inputs is not None
                x = torch.cat([x, _floats(inputs[pick.to(inputs.device)]).to(device)])
                y = torch.cat([y, stored[1][pick.to(stored[1].device)].to(device)])
            out = model(x, n)
            keys = out.features.detach()[: idx.shape[0]]
            if batch_norm:  # keys in the feature map queries see: running statistics, not this batch's
                with torch.no_grad():
                    model.eval()
                    keys = model.features(x[: idx.shape[0]])
                    model.train()
            loss = F.cross_entropy(out.logits, y)
            if ewc is not None:
                loss = loss + ewc.penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.memorize(out.features.detach()[: idx.shape[0]], y[: idx.shape[0]], n)
            memory.write(keys, y[: idx.shape[0]], payload=xb_raw.to(device))
            state["step"] += 1
            state["seconds"] += time.perf_counter() - t0
            bar.update(1)
            if state["step"] % 50 == 0:
                writer.log(done + state["step"], {"task": t + 1, "train/loss": float(loss.detach())})
                bar.set_postfix(task=f"{t + 1}/{len(tasks)}", loss=f"{float(loss.detach()):.3f}")
            if state["step"] % cfg.checkpoint_every == 0:
                checkpoint()
            steps_here += 1
            if (deadline is not None and time.perf_counter() > deadline) or steps_here == cfg.stop_after:
                stopped = True
                break
        if stopped:
            break
        if scenario == "imbalanced" and t == 1 and any(s >= steps_of[t] for s in cfg.eval_at) and not any(
                p["step"] == steps_of[t] for p in state["arrival"]):
            arrival_point(steps_of[t])  # points past the task's steps: recorded once, at its end
        if ewc is not None and t < len(tasks) - 1:  # the last task's term would never be used
            m = min(cfg.ewc.fisher_examples, task.train_y.shape[0])
            pick = torch.randperm(task.train_y.shape[0], generator=_step_generator(seed, t, -10**9))[:m]
            fisher = diagonal_fisher(model, lambda mod, xi, yi: fisher_loss(mod, xi, yi, n),
                                     _floats(task.train_x[pick]).to(device), task.train_y[pick].to(device))
            ewc.consolidate(model, fisher)
        acc = evaluate(t, n)
        for s in SPLITS:
            for v in VARIANTS:
                state["matrix"][s][v].append(acc[s][v])
        writer.log(done + steps_of[t], {"task": t + 1, **{f"test/{v}": sum(a) / len(a)
                                                          for v, a in acc["test"].items() if a}})
        state["task"], state["step"] = t + 1, 0
        done = sum(steps_of[: t + 1])
        checkpoint()
        run.write_result("results", results(cfg, tasks, state, steps_of, finished=state["task"] == len(tasks)))
    bar.close()
    writer.close()
    result = results(cfg, tasks, state, steps_of, finished=state["task"] == len(tasks))
    if stopped:  # otherwise the end of the last task has just saved both
        checkpoint()
        run.write_result("results", result)
    return result


def results(cfg: ContinualConfig, tasks: list[Task], state: dict[str, Any], steps_of: list[int],
            finished: bool) -> dict[str, Any]:
    """The ``results.json`` record of a (possibly unfinished) run."""
    T = len(tasks)
    splits = {}
    for s in SPLITS:
        splits[s] = {}
        for v in VARIANTS:
            rows = state["matrix"][s][v]
            R = [[*row, *([None] * (T - len(row)))] if row is not None else [None] * T for row in rows]
            splits[s][v] = {"accuracy_matrix": R, **continual_metrics(
                [row[: i + 1] if rows[i] is not None else None for i, row in enumerate(R)])}
    m = cfg.mbpa
    mbpa = {"size": cfg.memory, "k": m.k, "steps": m.steps, "lr": m.lr, "l2": m.l2, "eps": m.eps, "lambda": 1.0,
            "policy": cfg.memory_policy}
    return {
        "scenario": cfg.scenario[0], "dataset": cfg.dataset[0], "method": cfg.method[0], "seed": cfg.seeds[0],
        "lr": cfg.lr[0], "batch_size": cfg.batch_size, "memory": cfg.memory, "memory_policy": cfg.memory_policy,
        "ewc_lambda": cfg.ewc.lam[0] if cfg.method[0] == "ewc" else None,
        "replay_ratio": cfg.replay.ratio[0] if cfg.method[0] == "replay" else None,
        "new_examples": cfg.new_examples[0] if cfg.scenario[0] == "imbalanced" else None,
        "tasks": [t.name for t in tasks], "steps_per_task": steps_of, "tasks_done": state["task"],
        "finished": finished, "seconds": state["seconds"], "eval_seconds": state["eval_seconds"],
        "eval_examples": cfg.eval_examples,
        "variant_settings": {"base": None, "+mbpa": {"mbpa": mbpa}, "+mbpa-rekey": {"mbpa": {**mbpa, "rekey": True}}},
        "variants": splits["test"], "valid": splits["valid"],
        **({"arrival": state["arrival"]} if state["arrival"] else {}),
    }


# --------------------------------------------------------------------------- the command


def load_images(cfg: ContinualConfig, dataset: str) -> Any:
    if dataset == "omniglot":
        return load_omniglot(cfg.omniglot, cfg.data_dir, progress=cfg.progress)
    return load_image_set(cfg.data, cfg.data_dir, progress=cfg.progress)


def run_continual(cfg: ContinualConfig) -> list[dict[str, Any]]:
    """Every combination of ``cfg``, one after another (resuming or skipping those done)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolve_device(cfg.device, DistInfo())  # a missing GPU fails here, before the data is read
    deadline = time.perf_counter() + 60 * cfg.max_minutes if cfg.max_minutes else None
    RunFolder(cfg.out).mark("continual")
    loaded: dict[str, Any] = {}
    results_ = []
    for one in combinations(cfg):
        folder = RunFolder(one.out)
        done = folder.read_result("results")
        if done is not None and done.get("finished"):
            saved = folder.config_dict()
            if saved is not None:  # a finished run is only returned for the settings that made it
                check_resume(saved, one, folder.path)
            results_.append(done)
            continue
        if deadline is not None and time.perf_counter() > deadline:
            break
        dataset = one.dataset[0]
        if dataset not in loaded:
            loaded[dataset] = load_images(cfg, dataset)
        result = train_one(one, build_tasks(one, loaded[dataset]), deadline)
        results_.append(result)
        if not result["finished"]:  # stopped by max_minutes or stop_after: the rest waits for the next slice
            break
    return results_


# --------------------------------------------------------------------------- evaluation-only sweeps


@dataclass
class MbPASweep:
    """MbPA settings to try over a finished run's final network and memory (lists: every combination)."""

    size: tuple[int, ...] = (0,)  # memory entries used (a seeded uniform subset); 0: the whole memory
    k: tuple[int, ...] = (10, 100, 1024)
    steps: tuple[int, ...] = (1, 5)
    lr: tuple[float, ...] = (0.1, 1.0)
    l2: tuple[float, ...] = (0.1,)
    eps: float = 1e-3
    rekey: bool = False  # keys recomputed by the final network from the stored inputs
    eval_examples: int = 0  # images per task and split (a seeded sample); 0: the run's own eval_examples

    def __post_init__(self) -> None:
        for name in ("size", "k", "steps", "lr", "l2"):
            if not getattr(self, name):
                raise BadSetting(name, "needs at least one value")
        if not all(s >= 0 for s in self.size):
            raise BadSetting("size", "each value must be >= 0")
        for name in ("k", "steps"):
            if not all(v >= 1 for v in getattr(self, name)):
                raise BadSetting(name, "each value must be >= 1")
        if not all(v > 0 for v in self.lr):
            raise BadSetting("lr", "each value must be > 0")
        if not all(v >= 0 for v in self.l2):
            raise BadSetting("l2", "each value must be >= 0")
        if not self.eps > 0:
            raise BadSetting("eps", "must be > 0")
        if self.eval_examples < 0:
            raise BadSetting("eval_examples", "must be >= 0")


def load_run(run_dir: str | Path, data: str | None = None, omniglot: str | None = None,
             data_dir: str | None = None, progress: bool = True) -> tuple[ContinualConfig, ConvClassifier, MbPA,
                                                                          list[Task]]:
    """A finished combination's config, final network, memory and tasks."""
    run = RunFolder(run_dir, writer=False)
    if not run.path.is_dir():
        raise UserError(f"run folder not found: {str(run.path)!r}")
    if run.recipe() != "continual":
        raise UserError(f"{run.path} is not a continual run (made by {run.recipe() or 'no recipe'})")
    if run.config_dict() is None:
        subs = [s.name for s in run.subruns()]
        raise UserError(f"{run.path} holds several combinations; name one of its sub-folders "
                        f"({', '.join(subs[:3])}{', ...' if len(subs) > 3 else ''})")
    cfg = run.load_config(ContinualConfig)
    if len(combinations(cfg)) != 1:
        raise UserError(f"{run.path} holds several combinations; name one of its sub-folders")
    done = run.read_result("results")
    if done is None or not done.get("finished"):
        raise UserError(f"{run.path} has not finished training; resume it with fastbind continual first")
    cfg = replace(cfg, data=data or cfg.data, omniglot=omniglot or cfg.omniglot, data_dir=data_dir or cfg.data_dir,
                  progress=progress)
    ck, _ = run.load_checkpoint("last")
    tasks = build_tasks(cfg, load_images(cfg, cfg.dataset[0]))
    if ck.get("tasks_digest", tasks_digest(tasks)) != tasks_digest(tasks):
        raise UserError(f"{run.path} was trained on other task data than data={cfg.data} gives now; "
                        "point data= at the data it was trained on")
    model = build_model(cfg, tasks[-1].n_seen, tasks[0].train_x.shape[-1])
    model.load_state_dict(ck["model"])
    memory = new_memory(cfg, seed=cfg.seeds[0])
    memory.load_state_dict(ck["memory"])
    return cfg, model, memory, tasks


def _subsampled(memory: MbPA, size: int, settings: LocalAdaptation, seed: int) -> MbPA:
    view = memory.store.view()
    out = _reservoir(size or memory.size, settings, memory.exact_distances)
    if view is None:
        return out
    keep = torch.arange(view[0].shape[0])
    if size and size < keep.numel():
        keep = torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(seed))[:size]
    out.write(view[0][keep], view[1][keep])
    return out


def sweep_run(run_dir: str | Path, grid: MbPASweep, split: str = "valid", *, data: str | None = None,
              omniglot: str | None = None, data_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Every MbPA setting of ``grid`` over a finished run's final network and memory, on ``split``
    of every task; writes ``mbpa-sweep-<split>.json`` into the run and returns it. The memory
    is only read (a test set is never written into it)."""
    cfg, model, memory, tasks = load_run(run_dir, data, omniglot, data_dir, progress)
    base_memory = rekeyed(memory, model) if grid.rekey else memory
    n, seed = tasks[-1].n_seen, cfg.seeds[0]
    limit = grid.eval_examples or cfg.eval_examples
    rows = []
    plain = accuracies(model, tasks, n, split, {"base": None}, limit, seed)["base"]
    settings = list(itertools.product(grid.size, grid.k, grid.steps, grid.lr, grid.l2))
    for size, k, steps, lr, l2 in tqdm(settings, desc="mbpa sweep", disable=not progress):
        ad = LocalAdaptation(k=k, steps=steps, lr=lr, l2=l2, eps=grid.eps)
        mem = _subsampled(base_memory, size, ad, seed)
        t0 = time.perf_counter()
        acc = accuracies(model, tasks, n, split, {"+mbpa": mem}, limit, seed)["+mbpa"]
        rows.append({"size": len(mem), "k": k, "steps": steps, "lr": lr, "l2": l2, "eps": grid.eps,
                     "average_accuracy": sum(acc) / len(acc), "per_task": acc, "seconds": time.perf_counter() - t0})
    # Sweeps accumulate: rows of earlier calls stay unless this call measured the same setting again.
    # One file per split, key kind and sample size: rows measured on other samples never mix.
    name = (f"mbpa-sweep-{split}" + ("-rekey" if grid.rekey else "")
            + (f"-n{limit}" if limit != cfg.eval_examples else ""))
    earlier = RunFolder(run_dir).read_result(name) or {}
    ident = ("size", "k", "steps", "lr", "l2", "eps")
    mine = {tuple(r.get(k, 1e-3) for k in ident) for r in rows}
    rows = [r for r in earlier.get("rows", []) if tuple(r.get(k, 1e-3) for k in ident) not in mine] + rows
    record = {"name": name, "split": split, "rekey": grid.rekey, "eval_examples": limit,
              "base": {"average_accuracy": sum(plain) / len(plain),
                                                             "per_task": plain}, "rows": rows,
              "method": cfg.method[0], "scenario": cfg.scenario[0], "seed": seed}
    RunFolder(run_dir).write_result(name, record)
    return record
