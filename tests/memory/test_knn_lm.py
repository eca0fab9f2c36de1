"""kNN-LM: the on-disk datastore, its tiled exact search, FAISS index and p_kNN."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastbind.memory import KNNLM, knn_distribution, knn_log_prob, recall_at_k
from fastbind.memory import knn_lm as knn_lm_module
from fastbind.memory.knn import DEFAULT_BUDGET_BYTES


def make_data(n=53, d=6, vocab=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, vocab, (n,), generator=g)


def write_store(path, keys, values, dtype="float32", chunks=None, **kwargs):
    n, d = keys.shape
    bounds = [0, *(chunks or []), n]
    with KNNLM.build(path, n, d, dtype, **kwargs) as w:
        for a, b in itertools.pairwise(bounds):
            w.add(keys[a:b], values[a:b])
    return KNNLM.load(path)


def brute_force(queries, keys, k):
    """Full float64 distance matrix, stable sort, first k (distances, rows)."""
    d2 = ((queries.double()[:, None, :] - keys.double()[None]) ** 2).sum(-1)
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k]
    return torch.gather(d2, 1, order), order


def reference_log_prob(query, keys, values, target, k, tau):
    """One query, in plain Python: softmax of -d/τ over the k nearest, mass on the target."""
    d2 = sorted((float(((query.double() - x.double()) ** 2).sum()), int(v)) for x, v in zip(keys, values))[:k]
    weights = [math.exp(-(d - d2[0][0]) / tau) for d, _ in d2]
    mass = sum(w for w, (_, v) in zip(weights, d2) if v == target)
    return math.log(mass / sum(weights)) if mass > 0 else float("-inf")


# ---------------------------------------------------------------------------- p_kNN


@pytest.mark.parametrize("k", [1, 3, 8, 20])
@pytest.mark.parametrize("tau", [0.5, 1.0, 10.0])
def test_knn_log_prob_matches_a_per_query_reference(tmp_path, k, tau):
    keys, values = make_data(n=40, d=5, vocab=6, seed=1)
    store = write_store(tmp_path / "ds", keys, values)
    g = torch.Generator().manual_seed(2)
    queries = torch.randn(9, 5, generator=g, dtype=torch.float64)
    # Targets: the nearest neighbour's value, a random in-vocabulary value, or one never stored.
    y = torch.tensor([int(values[brute_force(queries[i:i + 1], keys, 1)[1][0, 0]]) if i % 3 == 0
                      else (7 if i % 3 == 1 else int(torch.randint(0, 6, (1,), generator=g))) for i in range(9)])
    dist, vals = store.search(queries, 20)  # once at the largest k, then swept
    got = knn_log_prob(dist, vals, y, k, tau)
    want = torch.tensor([reference_log_prob(queries[i], keys, values, int(y[i]), k, tau) for i in range(9)],
                        dtype=torch.float64)
    assert got.dtype == torch.float32 and got.shape == (9,)
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    assert bool(torch.isneginf(got[1::3]).all())  # value 7 is not in the datastore
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite].double(), want[finite], rtol=1e-4, atol=1e-4)
    # The same lists in float64 give the reference to rounding.
    dist64, idx = brute_force(queries, keys, 20)
    got64 = knn_log_prob(dist64, values[idx], y, k, tau)
    torch.testing.assert_close(got64[finite], want[finite], rtol=1e-10, atol=1e-10)


def test_knn_log_prob_handles_missing_neighbours_and_far_queries():
    dist = torch.tensor([[1.0, 2.0, float("inf")], [float("inf")] * 3, [1e4, 1e4 + 1, 1e4 + 2]], dtype=torch.float64)
    values = torch.tensor([[3, 4, 3], [3, 3, 3], [5, 6, 5]])
    got = knn_log_prob(dist, values, torch.tensor([3, 3, 5]), 3, 1.0)
    torch.testing.assert_close(got[0], -torch.log1p(torch.exp(torch.tensor(-1.0, dtype=torch.float64))))
    assert torch.isneginf(got[1])  # no neighbour at all
    # 1e4 apart from 0 but not from each other: no underflow.
    want = math.log((1 + math.exp(-2)) / (1 + math.exp(-1) + math.exp(-2)))
    assert got[2].item() == pytest.approx(want, rel=1e-12)


def test_knn_distribution_equals_knn_log_prob():
    g = torch.Generator().manual_seed(3)
    dist = torch.sort(torch.rand(8, 12, generator=g, dtype=torch.float64) * 5, dim=1).values
    dist[2, 9:] = float("inf")  # a row with only 9 neighbours
    dist[5] = float("inf")  # a row with none
    values = torch.randint(0, 7, (8, 12), generator=g)
    values[2, 9:] = -1
    for k, tau in [(1, 1.0), (5, 0.3), (12, 4.0)]:
        lp = knn_distribution(dist, values, 7, k, tau)
        assert lp.shape == (8, 7)
        for y in range(7):
            yy = torch.full((8,), y)
            torch.testing.assert_close(lp[:, y], knn_log_prob(dist, values, yy, k, tau), rtol=1e-12, atol=1e-12)
        sums = lp.exp().sum(1)
        torch.testing.assert_close(sums[torch.arange(8) != 5], torch.ones(7, dtype=torch.float64))
        assert bool(torch.isneginf(lp[5]).all())


# ---------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("budget", [1, 560, 896, 10_000, DEFAULT_BUDGET_BYTES])
@pytest.mark.parametrize("k", [1, 5, 53, 80])
def test_tiled_search_equals_brute_force(tmp_path, budget, k):
    keys, values = make_data(n=53, d=6, seed=4)
    store = write_store(tmp_path / "ds", keys, values)
    queries = torch.randn(7, 6, generator=torch.Generator().manual_seed(5))
    dist, vals, idx = store.search(queries, k, budget_bytes=budget, return_index=True)
    want_d, want_i = brute_force(queries, keys.float(), min(k, 53))
    assert dist.shape == idx.shape == vals.shape == (7, min(k, 53))
    assert dist.dtype == torch.float32 and idx.dtype == vals.dtype == torch.int64
    assert torch.equal(torch.sort(idx, 1).values, torch.sort(want_i, 1).values)  # same sets
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())  # nearest first
    torch.testing.assert_close(dist.double(), want_d, rtol=1e-5, atol=1e-5)
    assert torch.equal(vals, values[idx])


@pytest.mark.parametrize("budget", [1, 560, 896])
def test_exact_search_reads_each_key_once_in_tiles_bounded_by_the_budget(tmp_path, monkeypatch, budget):
    keys, values = make_data(n=53, d=6, seed=6)
    store = write_store(tmp_path / "ds", keys, values, dtype="float16")
    reads = []
    original = KNNLM._key_rows

    def spy(self, i0, i1, device):
        reads.append((i0, i1))
        return original(self, i0, i1, device)

    monkeypatch.setattr(KNNLM, "_key_rows", spy)
    store.search(torch.randn(4, 6), 3, budget_bytes=budget)
    assert [r for a, b in reads for r in range(a, b)] == list(range(53))
    assert max(b - a for a, b in reads) <= max(1, budget // 2 // (4 * 6 + 4))
    assert len(reads) > 1  # 53 is not one tile (nor a multiple of one) at these budgets


def test_float16_search_is_exact_over_the_rounded_keys(tmp_path):
    keys, values = make_data(n=40, d=6, seed=7)
    store = write_store(tmp_path / "ds", keys, values, dtype="float16")
    queries = torch.randn(5, 6, generator=torch.Generator().manual_seed(8)).half()
    dist, _, idx = store.search(queries, 6, budget_bytes=700, return_index=True)
    want_d, want_i = brute_force(queries, keys.half(), 6)
    assert torch.equal(idx, want_i)
    torch.testing.assert_close(dist.double(), want_d, rtol=1e-5, atol=1e-5)


def test_search_of_no_queries_and_log_prob_convenience(tmp_path):
    keys, values = make_data(n=20, d=4, seed=9)
    store = write_store(tmp_path / "ds", keys, values)
    dist, vals = store.search(torch.zeros(0, 4), 3)
    assert dist.shape == vals.shape == (0, 3)
    q, y = torch.randn(6, 4), torch.randint(0, 10, (6,))
    dist, vals = store.search(q, 8)
    torch.testing.assert_close(store.log_prob(q, y, k=8, temperature=2.0), knn_log_prob(dist, vals, y, 8, 2.0))


# ---------------------------------------------------------------------------- the datastore on disk


@pytest.mark.parametrize("dtype, values_dtype", [("float32", "int64"), ("float16", "int32")])
def test_memmap_round_trip_built_in_chunks(tmp_path, dtype, values_dtype):
    keys, values = make_data(n=53, d=6, seed=10, dtype=torch.float32)
    source = {"run": "runs/wt2-lstm", "step": 1200, "split": "train", "digest": "ab12"}
    store = write_store(tmp_path / "ds", keys, values, dtype, chunks=[7, 7, 27], values_dtype=values_dtype,
                        source=source)
    assert isinstance(store.keys, np.memmap) and isinstance(store.values, np.memmap)
    assert not store.keys.flags.writeable and not store.values.flags.writeable
    assert store.keys.dtype == np.dtype(dtype) and store.values.dtype == np.dtype(values_dtype)
    assert torch.equal(torch.from_numpy(np.array(store.keys)), keys.to(getattr(torch, dtype)))
    assert torch.equal(torch.from_numpy(np.array(store.values, dtype=np.int64)), values)
    assert len(store) == 53 and store.d == 6 and store.source == source
    assert sorted(os.listdir(tmp_path / "ds")) == ["keys.npy", "meta.json", "values.npy"]
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert (meta["n"], meta["d"], meta["dtype"], meta["source"]) == (53, 6, dtype, source)


def test_float16_and_float32_datastores_agree(tmp_path):
    g = torch.Generator().manual_seed(11)
    keys = torch.randn(200, 16, generator=g) * 2
    values = torch.randint(0, 20, (200,), generator=g)
    queries = keys[:30] + 0.3 * torch.randn(30, 16, generator=g)
    y = torch.where(torch.arange(30) % 2 == 0, values[:30], torch.randint(0, 20, (30,), generator=g))
    s32 = write_store(tmp_path / "f32", keys, values, "float32")
    s16 = write_store(tmp_path / "f16", keys, values, "float16")
    d32, v32, i32 = s32.search(queries, 200, return_index=True)
    d16, v16, i16 = s16.search(queries, 200, return_index=True)
    # k = n: the same neighbour set whatever the rounding; a small k: the same sets for this data.
    for k, tau in [(200, 10.0), (200, 50.0), (4, 10.0)]:
        assert torch.equal(torch.sort(i32[:, :k], 1).values, torch.sort(i16[:, :k], 1).values)
        lp32, lp16 = knn_log_prob(d32, v32, y, k, tau), knn_log_prob(d16, v16, y, k, tau)
        assert torch.equal(torch.isneginf(lp32), torch.isneginf(lp16))
        ok = torch.isfinite(lp32)
        torch.testing.assert_close(lp16[ok], lp32[ok], rtol=0, atol=2e-2)


def test_an_unfinished_build_never_loads(tmp_path):
    keys, values = make_data(n=30, d=4, seed=12)
    # A writer never closed (the process died): no meta.json.
    w = KNNLM.build(tmp_path / "a", 30, 4)
    w.add(keys[:30], values[:30])
    with pytest.raises(ValueError, match="meta.json is missing"):
        KNNLM.load(tmp_path / "a")
    # An exception inside the `with`: the partial files go, nothing loads.
    with pytest.raises(RuntimeError, match="boom"), KNNLM.build(tmp_path / "b", 30, 4) as w:
        w.add(keys[:10], values[:10])
        raise RuntimeError("boom")
    assert os.listdir(tmp_path / "b") == []
    with pytest.raises(ValueError, match="meta.json is missing"):
        KNNLM.load(tmp_path / "b")
    # Closing with rows missing.
    w = KNNLM.build(tmp_path / "c", 30, 4)
    w.add(keys[:29], values[:29])
    with pytest.raises(ValueError, match="29 of its n=30"):
        w.close()
    with pytest.raises(ValueError, match="meta.json is missing"):
        KNNLM.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        KNNLM.load(tmp_path / "nowhere")


def test_a_rebuild_keeps_the_old_datastore_until_it_closes(tmp_path):
    keys, values = make_data(n=30, d=4, seed=13)
    path = tmp_path / "ds"
    write_store(path, keys, values)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        KNNLM.build(path, 30, 4)
    w = KNNLM.build(path, 20, 4, overwrite=True)
    w.add(keys[:20], values[:20])
    assert len(KNNLM.load(path)) == 30  # still the old one
    w.abort()
    with pytest.raises(ValueError, match="aborted"):
        w.close()
    assert len(KNNLM.load(path)) == 30 and sorted(os.listdir(path)) == ["keys.npy", "meta.json", "values.npy"]
    w = KNNLM.build(path, 20, 4, overwrite=True)
    w.add(keys[10:30], values[10:30])
    w.close()
    store = KNNLM.load(path)
    assert len(store) == 20 and torch.equal(torch.from_numpy(np.array(store.values, dtype=np.int64)), values[10:30])


def edit_meta(path, **changes):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change, match", [
    ({"n": 31}, "keys.npy"), ({"n": 29}, "keys.npy"), ({"d": 5}, "keys.npy"), ({"dtype": "float16"}, "keys.npy"),
    ({"values_dtype": "int64"}, "values.npy"), ({"n": 0}, "n must be"), ({"n": "30"}, "n must be"),
    ({"format": "other"}, "not a fastbind.knn_lm"), ({"version": 2}, "version"), ({"dtype": "bf16"}, "dtype"),
])
def test_a_meta_that_does_not_match_the_files_is_refused(tmp_path, change, match):
    keys, values = make_data(n=30, d=4, seed=14)
    path = tmp_path / "ds"
    write_store(path, keys, values, values_dtype="int32")
    edit_meta(path, **change)
    with pytest.raises(ValueError, match=match):
        KNNLM.load(path)


def test_truncated_or_unreadable_files_are_refused(tmp_path):
    keys, values = make_data(n=30, d=4, seed=15)
    path = tmp_path / "ds"
    write_store(path, keys, values)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        KNNLM.load(path)
    write_store(path, keys, values, overwrite=True)
    with open(path / "keys.npy", "r+b") as f:
        f.truncate(os.path.getsize(path / "keys.npy") - 8)
    with pytest.raises(ValueError, match="keys.npy cannot be memory-mapped"):
        KNNLM.load(path)


# ---------------------------------------------------------------------------- bad arguments


def test_bad_arguments_name_the_argument(tmp_path):
    keys, values = make_data(n=20, d=4, seed=16)
    store = write_store(tmp_path / "ds", keys, values)
    dist, vals = store.search(torch.randn(3, 4), 5)
    y = torch.tensor([1, 2, 3])
    for kwargs, match in [
        ({"k": 0}, "k must be a positive integer"), ({"k": 6}, "k=6 exceeds the 5"), ({"k": 2.5}, "k must be"),
        ({"temperature": 0.0}, "temperature must be"), ({"temperature": -1.0}, "temperature must be"),
        ({"temperature": float("nan")}, "temperature must be"), ({"temperature": "hot"}, "temperature must be"),
    ]:
        args = {"k": 3, "temperature": 1.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            knn_log_prob(dist, vals, y, args["k"], args["temperature"])
        with pytest.raises(ValueError, match=match):
            knn_distribution(dist, vals, 10, args["k"], args["temperature"])
    with pytest.raises(ValueError, match="values must be an integer"):
        knn_log_prob(dist, vals.float(), y, 3, 1.0)
    with pytest.raises(ValueError, match="values must have the shape"):
        knn_log_prob(dist, vals[:, :2], y, 2, 1.0)
    with pytest.raises(ValueError, match="y must be an integer"):
        knn_log_prob(dist, vals, y.float(), 3, 1.0)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        knn_log_prob(dist, vals, y[:2], 3, 1.0)
    with pytest.raises(ValueError, match="dist must be"):
        knn_log_prob(vals, vals, y, 3, 1.0)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 5\)"):
        knn_distribution(dist, vals + 5, 5, 3, 1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        knn_distribution(dist, vals, 0, 3, 1.0)
    # Search.
    with pytest.raises(ValueError, match="queries have d=5 but the datastore has d=4"):
        store.search(torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match="queries must be a 2-D floating"):
        store.search(torch.ones(3, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="k must be"):
        store.search(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match="backend"):
        store.search(torch.randn(3, 4), 2, backend="annoy")
    with pytest.raises(ValueError, match="budget_bytes"):
        store.search(torch.randn(3, 4), 2, budget_bytes=0)
    with pytest.raises(ValueError, match="k=21 exceeds the n=20"):
        store.log_prob(torch.randn(3, 4), y, k=21)
    # Building.
    for args, kwargs, match in [
        ((0, 4), {}, "n must be"), ((10, 0), {}, "d must be"), ((10, 4, "bfloat16"), {}, "dtype must be"),
        ((10, 4), {"values_dtype": "uint8"}, "values_dtype"), ((10, 4), {"source": {"x": object()}}, "source"),
        ((10, 4), {"source": [1]}, "source must be a dict"),
    ]:
        with pytest.raises(ValueError, match=match):
            KNNLM.build(tmp_path / "new", *args, **kwargs)
    with KNNLM.build(tmp_path / "w", 10, 4, "float16") as w:
        for h, yy, match in [
            (torch.randn(3, 5), torch.arange(3), "h has d=5 but the datastore has d=4"),
            (torch.randn(3, 4), torch.arange(3).float(), "y must be an integer"),
            (torch.randn(3, 4), torch.arange(2), r"y must have shape \(3,\)"),
            (torch.randn(3, 4), torch.tensor([0, -1, 2]), r"y must lie in \[0, "),
            (torch.full((3, 4), 1e6), torch.arange(3), "not finite in float16"),
            (torch.randn(11, 4), torch.arange(11), "exceeds n=10"),
            (torch.ones(3, 4, dtype=torch.int64), torch.arange(3), "h must be a 2-D floating"),
        ]:
            with pytest.raises(ValueError, match=match):
                w.add(h, yy)
        w.add(torch.randn(10, 4), torch.arange(10))
    assert len(KNNLM.load(tmp_path / "w")) == 10
    # recall@k.
    with pytest.raises(ValueError, match="approx_idx must be"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="k=4 exceeds"):
        recall_at_k(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64), k=4)


def test_recall_at_k():
    exact = torch.tensor([[4, 1, 7], [0, 2, 3]])
    approx = torch.tensor([[7, 4, 9], [-1, 3, 2]])
    assert recall_at_k(approx, exact) == pytest.approx(4 / 6)
    assert recall_at_k(approx, exact, k=1) == 0.0
    assert recall_at_k(exact[:, [2, 0, 1]], exact) == 1.0


# ---------------------------------------------------------------------------- FAISS


def test_faiss_is_not_imported_with_the_package():
    code = "import sys, fastbind.memory; assert 'faiss' not in sys.modules, 'faiss imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_the_faiss_backend_without_faiss_raises_import_error(tmp_path, monkeypatch):
    keys, values = make_data(n=20, d=4, seed=17)
    store = write_store(tmp_path / "ds", keys, values)
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match="faiss"):
        store.build_index(2)


@pytest.fixture
def faiss():
    faiss = pytest.importorskip("faiss")
    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield faiss
    faiss.omp_set_num_threads(n)


def clustered_store(path, n=400, d=8, dtype="float32", seed=18):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g) * 4
    keys = centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g)
    values = torch.randint(0, 30, (n,), generator=g)
    return write_store(path, keys, values, dtype), keys, values


def test_faiss_index_is_built_once_and_reloaded(tmp_path, faiss):
    path = tmp_path / "ds"
    store, keys, _ = clustered_store(path)
    queries = keys[:10] + 0.1
    with pytest.raises(ValueError, match="build_index"):
        store.search(queries, 5, backend="faiss")
    assert store.build_index(8) is True and store.index_built
    index_file = path / "faiss.index"
    stamp = index_file.stat().st_mtime_ns
    first = store.search(queries, 5, backend="faiss", nprobe=8)
    # A fresh open finds the saved index: no training, the file untouched, the same answers.
    again = KNNLM.load(path)
    assert again.index_info["nlist"] == 8
    second = again.search(queries, 5, backend="faiss", nprobe=8)
    assert again.build_index(8) is False and not again.index_built
    assert index_file.stat().st_mtime_ns == stamp
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # Other settings rebuild it; a rebuilt datastore drops the index of the old keys.
    assert again.build_index(4) is True and again.index_info["nlist"] == 4
    write_store(path, keys[:300], torch.zeros(300, dtype=torch.int64), overwrite=True)
    fresh = KNNLM.load(path)
    assert fresh.index_info is None
    with pytest.raises(ValueError, match="build_index"):
        fresh.search(queries, 5, backend="faiss")
    with pytest.raises(ValueError, match="nlist=301 exceeds"):
        fresh.build_index(301)
    with pytest.raises(ValueError, match="pq_bytes=3 must divide d=8"):
        fresh.build_index(4, pq_bytes=3)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_faiss_recall_is_one_when_every_list_is_probed(tmp_path, faiss, dtype):
    store, _, _ = clustered_store(tmp_path / "ds", dtype=dtype)
    store.build_index(8, seed=3)
    queries = torch.randn(25, 8, generator=torch.Generator().manual_seed(19)) * 4
    d_ex, v_ex, i_ex = store.search(queries, 10, return_index=True)
    d_ap, v_ap, i_ap = store.search(queries, 10, backend="faiss", nprobe=8, return_index=True)
    assert recall_at_k(i_ap, i_ex) == 1.0
    assert torch.equal(v_ap, v_ex)
    torch.testing.assert_close(d_ap, d_ex, rtol=1e-5, atol=1e-4)
    # One list of eight: approximate, recall below 1 but the lists are still well formed.
    _, _, i_one = store.search(queries, 10, backend="faiss", nprobe=1, return_index=True)
    assert 0.0 < recall_at_k(i_one, i_ex) < 1.0


def test_faiss_distances_are_recomputed_exactly_from_the_stored_keys(tmp_path, faiss):
    store, keys, values = clustered_store(tmp_path / "ds")
    store.build_index(4, pq_bytes=2, pq_bits=4)  # product-quantised codes: FAISS's distances are approximate
    assert store.index_info["kind"] == "IVF4,PQ2x4"
    queries = torch.randn(12, 8, generator=torch.Generator().manual_seed(20)) * 4
    dist, vals, idx = store.search(queries, 6, backend="faiss", nprobe=2, budget_bytes=1, return_index=True)
    ok = idx >= 0
    assert bool(ok[:, 0].all())
    exact = ((queries[:, None, :].double() - keys[idx.clamp_min(0)].double()) ** 2).sum(-1)
    torch.testing.assert_close(dist[ok].double(), exact[ok], rtol=1e-5, atol=1e-5)
    assert bool(torch.isinf(dist[~ok]).all()) and bool((vals[~ok] == -1).all())
    assert torch.equal(vals[ok], values[idx[ok]])
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())  # re-sorted by the exact distances
    assert knn_lm_module.INDEX_FILE in os.listdir(tmp_path / "ds")
