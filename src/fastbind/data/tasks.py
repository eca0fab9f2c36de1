"""Task sequences for continual learning: tasks seen one after another.

A :class:`Task` holds its own train / validation / test split of images (uint8 ``(N, H, W)``,
ink 255) with labels already in the learner's label space. Labels are numbered in order of
arrival, so after task ``t`` the classes seen so far are exactly ``[0, n_seen)`` and a
class-incremental head scores only those rows. The validation split is carved out of the
task's training data (never out of the test set), for choosing hyper-parameters.

Three streams (Sprechmann et al. 2018's experiments, on the data sets at hand):

* :func:`permuted_tasks` — every task is the same 10-way problem on images whose pixels are
  shuffled by a fixed permutation drawn from the seed (one per task, all different; the
  first task is permuted too). Each task draws its own ``train`` + ``valid`` examples from
  the training images, and tests on the whole (permuted) test set.
* :func:`class_split_tasks` — class-incremental: the classes, in a seeded random order, split
  into ``tasks`` groups as evenly as possible (the first groups take the remainder).
* :func:`imbalanced_tasks` — ``old`` classes with all their data, then the remaining classes
  with only ``new_examples`` training images each, learnt interleaved with the old classes'
  data (task 2's training set holds both; its batches are drawn class-balanced, so the new
  classes keep their share of every batch while having few distinct examples). Task 2's
  validation and test splits hold the new classes only; task 1's the old ones.

Nothing here loops over examples or classes in Python beyond the tasks themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["ImageData", "Task", "class_split_tasks", "imbalanced_tasks", "permuted_tasks"]


class ImageData(Protocol):
    """What the builders read: :class:`fastbind.data.idx.ImageSet` or :class:`fastbind.data.omniglot.Omniglot`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@dataclass
class Task:
    """One task of a sequence (see the module docstring)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[int, ...]  # the labels this task's validation and test sets cover
    n_seen: int  # classes the head scores once this task has arrived: [0, n_seen)
    balanced: bool = False  # draw training batches class-balanced instead of by shuffled epochs

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {name!r}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def _check(data: ImageData) -> int:
    n_classes = int(data.train_labels.max()) + 1
    if data.train_images.dim() != 3 or data.train_images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, H, W), got {data.train_images.dtype} "
                         f"{tuple(data.train_images.shape)}")
    return n_classes


def _held_out(labels: torch.Tensor, per_class: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random ``bool`` mask picking ``per_class[c]`` examples of every class ``c`` of ``labels``."""
    order = torch.randperm(labels.shape[0], generator=g)
    by_class = order[torch.argsort(labels[order], stable=True)]  # shuffled within each class
    counts = torch.bincount(labels, minlength=per_class.shape[0])
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_class)
    rank[by_class] = torch.arange(labels.shape[0]) - start[labels[by_class]]  # place within its class
    return rank < per_class[labels]


def _mask_within(among: torch.Tensor, labels: torch.Tensor, per_class: torch.Tensor,
                 g: torch.Generator) -> torch.Tensor:
    """:func:`_held_out` restricted to the rows where ``among`` is True (False elsewhere)."""
    rows = among.nonzero()[:, 0]
    mask = torch.zeros_like(among)
    mask[rows] = _held_out(labels[rows], per_class, g)
    return mask


def permuted_tasks(data: ImageData, tasks: int, *, train: int = 10000, valid: int = 1000,
                   seed: int = 0) -> list[Task]:
    """``tasks`` permuted-pixel tasks of ``train`` training and ``valid`` validation images each."""
    n_classes = _check(data)
    N = data.train_images.shape[0]
    if tasks < 1 or train < 1 or valid < 0 or train + valid > N:
        raise ValueError(f"need tasks >= 1 and 1 <= train + valid <= {N}, got tasks={tasks}, "
                         f"train={train}, valid={valid}")
    H, W = data.train_images.shape[1:]
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(tasks):
        perm = torch.randperm(H * W, generator=g)
        pick = torch.randperm(N, generator=g)[: train + valid]

        def permuted(x: torch.Tensor, perm: torch.Tensor = perm) -> torch.Tensor:
            return x.reshape(x.shape[0], -1)[:, perm].reshape(x.shape)

        tr, va = pick[:train], pick[train:]
        out.append(Task(f"permutation {t + 1}", permuted(data.train_images[tr]), data.train_labels[tr].clone(),
                        permuted(data.train_images[va]), data.train_labels[va].clone(),
                        permuted(data.test_images), data.test_labels.clone(),
                        classes=tuple(range(n_classes)), n_seen=n_classes))
    return out


def _relabel(labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    rank = torch.full((int(labels.max()) + 1,), -1, dtype=torch.int64)
    rank[order] = torch.arange(order.numel())
    return rank[labels]


def _valid_counts(labels: torch.Tensor, n_classes: int, fraction: float) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=n_classes)
    per_class = torch.round(counts.double() * fraction).long()
    if fraction > 0:  # at least one validation example where a class has two or more
        per_class = torch.maximum(per_class, (counts >= 2).long())
    return torch.minimum(per_class, counts - 1).clamp_min(0)


def class_split_tasks(data: ImageData, tasks: int, *, valid_fraction: float = 0.1, seed: int = 0,
                      max_classes: int = 0) -> list[Task]:
    """The classes (the first ``max_classes`` of a seeded order when > 0) in ``tasks`` groups."""
    n_classes = _check(data)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_classes, generator=g)
    if max_classes:
        order = order[:max_classes]
    if not 1 <= tasks <= order.numel():
        raise ValueError(f"tasks must lie in [1, {order.numel()}] (one class per task at least), got {tasks}")
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
    y_tr, y_te = _relabel(data.train_labels, order), _relabel(data.test_labels, order)
    valid = _mask_within(y_tr >= 0, y_tr, _valid_counts(y_tr[y_tr >= 0], order.numel(), valid_fraction), g)
    out, hi = [], 0
    for t, group in enumerate(torch.tensor_split(torch.arange(order.numel()), tasks)):
        lo, hi = int(group[0]), int(group[-1]) + 1
        tr = ((y_tr >= lo) & (y_tr < hi) & ~valid).nonzero()[:, 0]
        va = ((y_tr >= lo) & (y_tr < hi) & valid).nonzero()[:, 0]
        te = ((y_te >= lo) & (y_te < hi)).nonzero()[:, 0]
        out.append(Task(f"classes {lo}-{hi - 1}", data.train_images[tr], y_tr[tr], data.train_images[va], y_tr[va],
                        data.test_images[te], y_te[te], classes=tuple(range(lo, hi)), n_seen=hi))
    return out


def imbalanced_tasks(data: ImageData, *, old: int = 8, new_examples: int = 5, valid_fraction: float = 0.1,
                     seed: int = 0) -> list[Task]:
    """Task 1: ``old`` classes; task 2: the others with ``new_examples`` training images each,
    interleaved with the old classes' training data (class-balanced batches)."""
    n_classes = _check(data)
    if not 1 <= old < n_classes:
        raise ValueError(f"old must lie in [1, {n_classes - 1}], got {old}")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must lie in (0, 1), got {valid_fraction}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_classes, generator=g)
    y_tr, y_te = _relabel(data.train_labels, order), _relabel(data.test_labels, order)
    valid = _held_out(y_tr, _valid_counts(y_tr, n_classes, valid_fraction), g)
    available = int(torch.bincount(y_tr[~valid], minlength=n_classes)[old:].min())
    if not 1 <= new_examples <= available:
        raise ValueError(f"new_examples must lie in [1, {available}] (training images of the scarcest new "
                         f"class), got {new_examples}")
    # new_examples training images of each new class, drawn among those not held out for validation.
    given = _mask_within(~valid, y_tr, torch.where(torch.arange(n_classes) >= old, new_examples, 0), g)
    is_old_tr, is_old_te = y_tr < old, y_te < old
    t1_tr = (is_old_tr & ~valid).nonzero()[:, 0]
    t1_va = (is_old_tr & valid).nonzero()[:, 0]
    t2_tr = ((is_old_tr & ~valid) | given).nonzero()[:, 0]
    t2_va = (~is_old_tr & valid).nonzero()[:, 0]
    te1, te2 = is_old_te.nonzero()[:, 0], (~is_old_te).nonzero()[:, 0]
    x, xt = data.train_images, data.test_images
    return [
        Task(f"old classes 0-{old - 1}", x[t1_tr], y_tr[t1_tr], x[t1_va], y_tr[t1_va], xt[te1], y_te[te1],
             classes=tuple(range(old)), n_seen=old),
        Task(f"new classes {old}-{n_classes - 1} ({new_examples} each)", x[t2_tr], y_tr[t2_tr], x[t2_va],
             y_tr[t2_va], xt[te2], y_te[te2], classes=tuple(range(old, n_classes)), n_seen=n_classes,
             balanced=True),
    ]
