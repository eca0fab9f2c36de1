"""MbPA against a per-query reference: autograd gradient descent on a copy of the layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastbind import MbPA



def reference_adapted_logits(h, entries, W, b, k, steps, lr, l2, eps):
    """Logits of one query h (d,) after `steps` plain gradient steps on the MbPA loss."""
    if not entries:
        return h @ W.T + (0 if b is None else b)
    dist = [float(((h - hk) ** 2).sum()) for hk, _ in entries]
    nearest = sorted(range(len(entries)), key=lambda i: dist[i])[:k]
    w = torch.tensor([1.0 / (eps + dist[i]) for i in nearest], dtype=torch.float64)
    w = w / w.sum()
    H = torch.stack([entries[i][0] for i in nearest])
    Y = torch.tensor([entries[i][1] for i in nearest])
    Wa = W.detach().clone().requires_grad_(True)
    ba = None if b is None else b.detach().clone().requires_grad_(True)
    for _ in range(steps):
        logits = H @ Wa.T + (0 if ba is None else ba)
        loss = (w * F.cross_entropy(logits, Y, reduction="none")).sum() + l2 * ((Wa - W) ** 2).sum()
        params = [Wa]
        if ba is not None:
            loss = loss + l2 * ((ba - b) ** 2).sum()
            params.append(ba)
        grads = torch.autograd.grad(loss, params)
        Wa = (Wa - lr * grads[0]).detach().requires_grad_(True)
        if ba is not None:
            ba = (ba - lr * grads[1]).detach().requires_grad_(True)
    return (h @ Wa.T + (0 if ba is None else ba)).detach()


def reference_log_probs(chunks, W, b, size, **hp):
    past, out = [], []
    for h, y in chunks:
        for t in range(h.shape[0]):
            logits = reference_adapted_logits(h[t], past[-size:], W, b, **hp)
            out.append(float(logits.log_softmax(0)[y[t]]))
            past.append((h[t], int(y[t])))
    return torch.tensor(out, dtype=torch.float64)


def make_problem(lengths, d, V, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    chunks = [(torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, V, (n,), generator=g))
              for n in lengths]
    return W, b, chunks


LENGTHS = [4, 11, 0, 1, 9, 6]

# (d, size, k): k below the window; k above 2d (the H (Hᵀ C) branch of several steps);
# k larger than anything ever stored.
SHAPES = [(5, 7, 3), (3, 9, 8), (6, 20, 64)]


@pytest.mark.parametrize(("d", "size", "k"), SHAPES)
@pytest.mark.parametrize("bias", [True, False])
# One step with and without the stored base distributions (the cache exists only for one step).
@pytest.mark.parametrize(("steps", "base_cache_bytes"), [(1, 1 << 30), (1, 0), (2, 1 << 30), (3, 1 << 30)])
def test_log_prob_matches_autograd_reference(d, size, k, steps, bias, base_cache_bytes):
    hp = dict(k=k, steps=steps, lr=0.3, l2=0.5, eps=1e-3)
    W, b, chunks = make_problem(LENGTHS, d, V=7, seed=d + steps, bias=bias)
    mbpa = MbPA(size=size, base_cache_bytes=base_cache_bytes, **hp)
    got = torch.cat([mbpa.log_prob(h, y, W, b) for h, y in chunks])
    want = reference_log_probs(chunks, W, b, size, **hp)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert len(mbpa) == min(size, sum(LENGTHS))


@pytest.mark.parametrize("steps", [1, 2])
def test_blocked_computation_matches_reference(steps):
    # A 1-byte budget forces one query per block, one neighbour row per block, etc.
    hp = dict(k=4, steps=steps, lr=0.5, l2=0.1, eps=1e-2)
    W, b, chunks = make_problem([5, 8, 3], d=4, V=6, seed=11)
    mbpa = MbPA(size=6, budget_bytes=1, **hp)
    got = torch.cat([mbpa.log_prob(h, y, W, b) for h, y in chunks])
    torch.testing.assert_close(got, reference_log_probs(chunks, W, b, 6, **hp), rtol=1e-9, atol=1e-10)


def test_base_cache_grows_wraps_and_follows_the_layer():
    # size > 64 so the store grows (64 -> 150 slots) before it wraps; the layer then changes
    # in place (an optimizer-like update), is replaced by another tensor, and entries are
    # written without a layer: each time the cached distributions must follow.
    hp = dict(k=10, steps=1, lr=0.4, l2=0.5, eps=1e-3)
    W, b, chunks = make_problem([40, 50, 70, 30, 45], d=3, V=5, seed=21)
    cached, plain = MbPA(size=150, **hp), MbPA(size=150, base_cache_bytes=0, **hp)
    got, want = [], []
    for i, (h, y) in enumerate(chunks):
        if i == 2:
            W.add_(0.3 * torch.randn_like(W))
            b.mul_(0.5)
        if i == 3:
            W = W.flip(0).contiguous()
        if i == 4:
            cached.write(h[:5], y[:5])
            plain.write(h[:5], y[:5])
            h, y = h[5:], y[5:]
        got.append(cached.log_prob(h, y, W, b))
        want.append(plain.log_prob(h, y, W, b))
    assert cached._probs is not None and cached._probs.shape == (150, 5)
    torch.testing.assert_close(torch.cat(got), torch.cat(want), rtol=1e-9, atol=1e-10)
    q = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(cached.logits(q, W, b), plain.logits(q, W, b), rtol=1e-9, atol=1e-10)
    assert MbPA(size=150, base_cache_bytes=150 * 5 * 8 - 1, **hp)._use_base_cache(5, q) is False


@pytest.mark.parametrize("steps", [1, 2])
def test_mask_scores_a_subset_and_keeps_the_stream(steps):
    hp = dict(k=5, steps=steps, lr=0.3, l2=0.5, eps=1e-3)
    W, b, chunks = make_problem([9, 12, 7, 10], d=4, V=6, seed=13)
    full, sub = MbPA(size=15, **hp), MbPA(size=15, **hp)
    for i, (h, y) in enumerate(chunks):
        mask = torch.arange(h.shape[0]) % 3 == i % 3
        if i == 3:
            mask[:] = False
        want = full.log_prob(h, y, W, b)
        got = sub.log_prob(h, y, W, b, mask=mask)
        torch.testing.assert_close(got[mask], want[mask], rtol=1e-9, atol=1e-10)
        assert torch.isnan(got[~mask]).all()
    assert len(sub) == len(full) == 15


@pytest.mark.parametrize("mask", [torch.ones(3, dtype=torch.bool), torch.ones(4), [True] * 4])
def test_bad_mask_raises(mask):
    with pytest.raises(ValueError, match="mask"):
        MbPA(size=4, k=2).log_prob(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(5, 3),
                                   mask=mask)


def test_first_query_is_the_unadapted_model_and_adaptation_helps_repeats():
    W, b, _ = make_problem([], d=4, V=5, seed=2)
    h = torch.randn(1, 4, dtype=torch.float64)
    y = torch.tensor([3])
    mbpa = MbPA(size=10, k=8, steps=1, lr=1.0, l2=0.0)
    first = mbpa.log_prob(h, y, W, b)
    torch.testing.assert_close(first, (h @ W.T + b).log_softmax(1)[:, 3])
    second = mbpa.log_prob(h, y, W, b)  # the same example again: its label becomes likelier
    assert second > first


def test_base_weights_are_never_modified():
    W, b, chunks = make_problem([6, 6], d=4, V=6, seed=5)
    W0, b0 = W.clone(), b.clone()
    versions = (W._version, b._version)
    for steps in (1, 2):
        mbpa = MbPA(size=8, k=4, steps=steps)
        for h, y in chunks:
            mbpa.log_prob(h, y, W, b)
        mbpa.logits(chunks[0][0], W, b)
    assert torch.equal(W, W0) and torch.equal(b, b0)
    assert (W._version, b._version) == versions


@pytest.mark.parametrize("steps", [1, 2])
def test_logits_reads_all_of_memory_and_appends_nothing(steps):
    hp = dict(k=5, steps=steps, lr=0.3, l2=0.5, eps=1e-3)
    W, b, chunks = make_problem([7, 6], d=4, V=6, seed=7)
    mbpa = MbPA(size=9, **hp)
    q = torch.randn(4, 4, dtype=torch.float64)
    torch.testing.assert_close(mbpa.logits(q, W, b), q @ W.T + b)  # empty memory: the model
    entries = []
    for h, y in chunks:
        mbpa.log_prob(h, y, W, b)
        entries.extend((h[t], int(y[t])) for t in range(h.shape[0]))
    got = mbpa.logits(q, W, b)
    assert got.shape == (4, 6) and len(mbpa) == 9
    want = torch.stack([reference_adapted_logits(q[i], entries[-9:], W, b, **hp) for i in range(4)])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_reset_clears():
    W, b, chunks = make_problem([5, 5], d=3, V=4, seed=9)
    mbpa = MbPA(size=8, k=3)
    first = mbpa.log_prob(*chunks[0], W, b)
    mbpa.log_prob(*chunks[1], W, b)
    mbpa.reset()
    assert len(mbpa) == 0
    torch.testing.assert_close(mbpa.log_prob(*chunks[0], W, b), first)


def test_works_for_any_classifier_stream_in_float32():
    # A 3-class problem whose model is wrong: MbPA should fix it from memory.
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 4
    y = torch.randint(0, 3, (60,))
    h = centers[y] + 0.1 * torch.randn(60, 8)
    W = torch.roll(centers, 1, 0) * 0.2  # predicts the wrong class for every cluster
    mbpa = MbPA(size=100, k=10, steps=1, lr=1.0, l2=0.0)
    mbpa.write(h[:30], y[:30])
    lp = mbpa.log_prob(h[30:], y[30:], W, None)
    plain = (h[30:] @ W.T).log_softmax(1).gather(1, y[30:, None])[:, 0]
    assert lp.dtype == torch.float32
    assert (lp > plain).all()


def _call(mbpa, h=None, y=None, W=None, b=None):
    h = torch.randn(4, 3) if h is None else h
    y = torch.zeros(4, dtype=torch.long) if y is None else y
    W = torch.randn(5, 3) if W is None else W
    return mbpa.log_prob(h, y, W, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"h": torch.randn(4)}, "2-D"),
        ({"y": torch.zeros(3, dtype=torch.long)}, "shape"),
        ({"y": torch.zeros(4)}, "integer"),
        ({"y": torch.tensor([0, 1, 5, 2])}, r"\[0, 5\)"),
        ({"y": torch.tensor([0, -1, 2, 2])}, r"\[0, 5\)"),
        ({"W": torch.randn(5, 4)}, "weight"),
        ({"W": torch.randn(5)}, "weight"),
        ({"W": torch.randn(5, 3, dtype=torch.float64)}, "dtype"),
        ({"W": torch.empty(5, 3, device="meta")}, "device"),
        ({"b": torch.randn(4)}, "bias"),
        ({"b": torch.randn(5, dtype=torch.float64)}, "bias"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(MbPA(size=4, k=2), **kwargs)


def test_mismatch_with_stored_entries_raises():
    mbpa = MbPA(size=4, k=2)
    _call(mbpa, y=torch.tensor([0, 1, 4, 2]))
    with pytest.raises(ValueError, match="d=6"):
        _call(mbpa, h=torch.randn(4, 6), W=torch.randn(5, 6))
    with pytest.raises(ValueError, match="dtype"):
        _call(mbpa, h=torch.randn(4, 3, dtype=torch.float64), W=torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="outside"):
        _call(mbpa, y=torch.zeros(4, dtype=torch.long), W=torch.randn(3, 3))  # stored label 4, 3 classes


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"k": 0}, {"k": -2}, {"steps": 0}, {"steps": 1.5}, {"lr": 0.0},
                                    {"l2": -0.1}, {"eps": 0.0}, {"knn_backend": "annoy"},
                                    {"base_cache_bytes": -1}, {"base_cache_bytes": 1.5}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        MbPA(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    from fastbind import NeuralCache

    W, b, chunks = make_problem([5, 9], d=4, V=6, seed=4)
    results = {}
    for device in ("cpu", "cuda"):
        mbpa, cache = MbPA(size=6, k=4, steps=2), NeuralCache(size=6, theta=0.5)
        Wd, bd = W.to(device), b.to(device)
        results[device] = torch.cat([torch.stack([mbpa.log_prob(h.to(device), y.to(device), Wd, bd),
                                                  cache.log_prob(h.to(device), y.to(device))]).cpu()
                                     for h, y in chunks], 1)
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-9, atol=1e-10)
