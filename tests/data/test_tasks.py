"""Task sequences: permutations fixed by seed, class groups disjoint and covering, exact imbalance."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fastbind.data.tasks import class_split_tasks, imbalanced_tasks, permuted_tasks


def _images(classes: int = 10, per_class: int = 30, test_per_class: int = 5, size: int = 6):
    g = torch.Generator().manual_seed(0)
    n, m = classes * per_class, classes * test_per_class
    # Each image is distinct (its first pixels spell its index), so rows can be traced back.
    train = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=g)
    train[:, 0, 0], train[:, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    test = torch.randint(0, 256, (m, size, size), dtype=torch.uint8, generator=g)
    return SimpleNamespace(train_images=train, train_labels=torch.arange(n) % classes,
                           test_images=test, test_labels=torch.arange(m) % classes)


def _row_ids(x: torch.Tensor) -> set[int]:
    return set((x[:, 0, 0].long() + 256 * x[:, 0, 1].long()).tolist())


def test_permutations_fixed_by_seed_and_different_per_task():
    data = _images()
    a = permuted_tasks(data, 4, train=50, valid=10, seed=3)
    b = permuted_tasks(data, 4, train=50, valid=10, seed=3)
    c = permuted_tasks(data, 4, train=50, valid=10, seed=4)
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta.train_x, tb.train_x) and torch.equal(ta.test_x, tb.test_x)
    assert not torch.equal(a[0].test_x, c[0].test_x)
    flat = data.test_images.reshape(data.test_images.shape[0], -1)
    perms = []
    for t in a:
        # Each task's test set is the whole test set under one permutation of the pixels.
        tx = t.test_x.reshape(t.test_x.shape[0], -1)
        perm = torch.tensor([int((flat == tx[:, [j]]).all(0).nonzero()[0]) for j in range(tx.shape[1])])
        assert torch.equal(tx, flat[:, perm])
        assert sorted(perm.tolist()) == list(range(flat.shape[1]))
        perms.append(perm)
        assert torch.equal(t.test_y, data.test_labels)
        assert t.train_x.shape[0] == 50 and t.valid_x.shape[0] == 10 and t.n_seen == 10
    assert len({tuple(p.tolist()) for p in perms}) == 4
    assert not torch.equal(perms[0], torch.arange(perms[0].numel()))  # the first task is permuted too


def test_permuted_train_and_valid_are_disjoint():
    data = _images(size=6)
    flat = data.train_images.reshape(data.train_images.shape[0], -1)
    (t,) = permuted_tasks(data, 1, train=200, valid=50, seed=0)
    # Undo the permutation through the test set, then trace rows back to their index.
    tx = t.test_x.reshape(t.test_x.shape[0], -1)
    ref = data.test_images.reshape(data.test_images.shape[0], -1)
    perm = torch.tensor([int((ref == tx[:, [j]]).all(0).nonzero()[0]) for j in range(tx.shape[1])])
    inv = torch.argsort(perm)
    tr = t.train_x.reshape(200, -1)[:, inv].reshape(-1, 6, 6)
    va = t.valid_x.reshape(50, -1)[:, inv].reshape(-1, 6, 6)
    assert not _row_ids(tr) & _row_ids(va)
    assert len(_row_ids(tr)) == 200
    ids = torch.tensor(sorted(_row_ids(tr)))
    assert torch.equal(data.train_labels[ids].sort().values, t.train_y.sort().values)
    assert torch.equal(flat[ids].sum(), tr.reshape(200, -1).sum())


@pytest.mark.parametrize("classes,tasks", [(10, 5), (10, 3), (11, 4), (7, 7)])
def test_class_groups_disjoint_covering_and_even(classes, tasks):
    data = _images(classes=classes)
    seq = class_split_tasks(data, tasks, valid_fraction=0.2, seed=1)
    sizes = [len(t.classes) for t in seq]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    covered = [c for t in seq for c in t.classes]
    assert covered == list(range(classes))  # in order of arrival, each once
    for i, t in enumerate(seq):
        assert t.n_seen == t.classes[-1] + 1 == sum(sizes[: i + 1])
        for y in (t.train_y, t.valid_y, t.test_y):
            assert set(y.tolist()) == set(t.classes)
        assert torch.bincount(t.valid_y)[list(t.classes)].tolist() == [6] * len(t.classes)  # 20% of 30
        assert not _row_ids(t.train_x) & _row_ids(t.valid_x)
    # The relabelling is one seeded order of the original classes: images keep their class together.
    orig = {}
    for t in seq:
        for x_id, y in zip(sorted(_row_ids(t.train_x)), t.train_y[torch.argsort(
                t.train_x[:, 0, 0].long() + 256 * t.train_x[:, 0, 1].long())].tolist(), strict=True):
            orig.setdefault(y, set()).add(int(data.train_labels[x_id]))
    assert all(len(v) == 1 for v in orig.values())
    assert class_split_tasks(data, tasks, seed=1)[0].classes == seq[0].classes
    with pytest.raises(ValueError, match="tasks must lie in"):
        class_split_tasks(data, classes + 1)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_imbalanced_counts_are_exact(n):
    data = _images(classes=10, per_class=30)
    old, new = imbalanced_tasks(data, old=8, new_examples=n, valid_fraction=0.1, seed=2)
    assert old.classes == tuple(range(8)) and new.classes == (8, 9)
    assert old.n_seen == 8 and new.n_seen == 10 and new.balanced and not old.balanced
    assert torch.bincount(old.train_y, minlength=10).tolist() == [27] * 8 + [0, 0]
    assert torch.bincount(new.train_y, minlength=10).tolist() == [27] * 8 + [n, n]
    assert torch.equal(new.train_x[new.train_y < 8], old.train_x)  # interleaved with the same old data
    assert torch.bincount(old.valid_y, minlength=10).tolist() == [3] * 8 + [0, 0]
    assert torch.bincount(new.valid_y, minlength=10).tolist() == [0] * 8 + [3, 3]
    assert set(old.test_y.tolist()) == set(range(8)) and set(new.test_y.tolist()) == {8, 9}
    assert not _row_ids(new.train_x) & _row_ids(new.valid_x)
    with pytest.raises(ValueError, match="new_examples must lie in"):
        imbalanced_tasks(data, new_examples=28)
