"""Ring storage and windowed nearest-neighbour search."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from fastbind import MbPA
from fastbind.memory import knn
from fastbind.memory.knn import RingStore, search



def brute_force(queries, keys, k, positions=None, lo=None, hi=None):
    """Per query: sort the candidates by distance, keep k; pad with inf."""
    dists, idxs = [], []
    kk = min(k, keys.shape[0])
    for i, q in enumerate(queries):
        cand = [(float(((q - x) ** 2).sum()), j) for j, x in enumerate(keys)
                if positions is None or lo[i] <= positions[j] < hi[i]]
        cand.sort()
        cand = cand[:kk]
        dists.append([c[0] for c in cand] + [float("inf")] * (kk - len(cand)))
        idxs.append([c[1] for c in cand] + [-1] * (kk - len(cand)))
    return torch.tensor(dists, dtype=torch.float64), torch.tensor(idxs)


def check_against_brute_force(got, want):
    (gd, gi), (wd, wi) = got, want
    assert gd.shape == wd.shape and gi.shape == wi.shape
    real = wi >= 0
    assert torch.equal(torch.isinf(gd), ~real)
    assert torch.equal(gi[real], wi[real])
    torch.testing.assert_close(gd[real], wd[real], rtol=1e-9, atol=1e-9)


def windowed_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    keys = torch.randn(15, 4, generator=g, dtype=torch.float64)
    positions = torch.randperm(15, generator=g) + 100
    lo = torch.tensor([100, 103, 95, 110, 114, 120])
    hi = torch.tensor([104, 115, 101, 112, 130, 125])  # the last window holds nothing
    return q, keys, positions, lo, hi


@pytest.mark.parametrize("k", [1, 3, 15, 40])
@pytest.mark.parametrize("budget", [knn.DEFAULT_BUDGET_BYTES, 1])
def test_torch_search_is_exact(k, budget):
    q, keys, positions, lo, hi = windowed_problem()
    check_against_brute_force(search(q, keys, k, backend="torch", budget_bytes=budget), brute_force(q, keys, k))
    check_against_brute_force(
        search(q, keys, k, positions=positions, lo=lo, hi=hi, backend="torch", budget_bytes=budget),
        brute_force(q, keys, k, positions, lo, hi))


class _FakeFlatL2:
    """A stand-in for faiss.IndexFlatL2 (numpy brute force), to test the FAISS glue code."""

    def __init__(self, d):
        self.x = np.zeros((0, d), dtype=np.float32)

    def add(self, x):
        assert x.dtype == np.float32
        self.x = np.concatenate([self.x, x])

    def search(self, q, k):
        d2 = ((q[:, None, :] - self.x[None]) ** 2).sum(-1)
        idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d2, idx, 1), idx


@pytest.mark.parametrize("k", [2, 5])
def test_faiss_path_filters_the_window_exactly(monkeypatch, k):
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatL2=_FakeFlatL2))
    assert knn.faiss_available()
    q, keys, positions, lo, hi = windowed_problem(seed=1)
    got = search(q, keys, k, positions=positions, lo=lo, hi=hi, backend="faiss")
    want = brute_force(q, keys, k, positions, lo, hi)
    (gd, gi), (wd, wi) = got, want
    real = wi >= 0
    assert torch.equal(torch.isinf(gd), ~real) and torch.equal(gi[real], wi[real])
    torch.testing.assert_close(gd[real], wd[real], rtol=1e-5, atol=1e-5)  # FAISS works in float32
    # "auto" switches to FAISS only for large memories.
    monkeypatch.setattr(knn, "FAISS_MIN_KEYS", 10)
    gd2, gi2 = search(q, keys, k, positions=positions, lo=lo, hi=hi)
    assert gd2.dtype == torch.float64 and torch.equal(gi2[real], wi[real])


def test_requesting_faiss_without_faiss_raises_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    monkeypatch.setattr(knn, "FAISS_MIN_KEYS", 1)
    q, keys, *_ = windowed_problem()
    with pytest.raises(ImportError, match="faiss"):
        search(q, keys, 3, backend="faiss")
    check_against_brute_force(search(q, keys, 3, backend="auto"), brute_force(q, keys, 3))
    with pytest.raises(ImportError, match="faiss"):
        MbPA(knn_backend="faiss")
    MbPA(knn_backend="auto")


def test_search_bad_input():
    q = torch.randn(2, 3)
    with pytest.raises(ValueError, match="share d"):
        search(q, torch.randn(5, 4), 2)
    with pytest.raises(ValueError, match="k must"):
        search(q, torch.randn(5, 3), 0)
    with pytest.raises(ValueError, match="together"):
        search(q, torch.randn(5, 3), 2, positions=torch.arange(5))
    with pytest.raises(ValueError, match="backend"):
        search(q, torch.randn(5, 3), 2, backend="annoy")


def test_ring_store_keeps_the_last_size_entries_with_their_positions():
    store = RingStore(5)
    assert store.view() is None and len(store) == 0
    written = []
    for n in [2, 0, 1, 4, 9, 3]:
        h = torch.randn(n, 2)
        y = torch.randint(0, 100, (n,))
        store.append(h, y)
        written.extend(zip(h, y.tolist()))
        keys, vals, pos = store.view()
        assert len(store) == min(5, len(written)) == keys.shape[0]
        by_age = pos.argsort()
        expected = written[-5:]
        assert pos[by_age].tolist() == list(range(len(written) - len(expected), len(written)))
        assert torch.equal(keys[by_age], torch.stack([e[0] for e in expected]))
        assert vals[by_age].tolist() == [e[1] for e in expected]
    store.reset()
    assert len(store) == 0 and store.view() is None
