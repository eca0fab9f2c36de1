"""NeuralCache against a per-token reference loop (Grave et al. 2016, eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from fastbind import NeuralCache

NEG_INF = float("-inf")



def reference_log_probs(chunks, size, theta):
    """Per token: the last `size` (h, y) written before it, then the formula, then write it."""
    past, out = [], []
    for h, y in chunks:
        for t in range(h.shape[0]):
            visible = past[-size:]
            scores = [theta * float(h[t] @ hk) for hk, _ in visible]
            matching = [s for s, (_, yk) in zip(scores, visible) if yk == int(y[t])]
            if not matching:
                out.append(NEG_INF)
            else:
                out.append(float(torch.logsumexp(torch.tensor(matching, dtype=torch.float64), 0)
                                 - torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0)))
            past.append((h[t], int(y[t])))
    return torch.tensor(out, dtype=torch.float64)


def reference_distribution(h, entries, theta, V):
    """p_cache(. | h_t) with every entry of `entries` visible to every query."""
    out = torch.zeros(h.shape[0], V, dtype=torch.float64)
    for t in range(h.shape[0]):
        if not entries:
            continue
        scores = torch.tensor([theta * float(h[t] @ hk) for hk, _ in entries], dtype=torch.float64)
        p = torch.softmax(scores, 0)
        for pi, (_, yk) in zip(p, entries):
            out[t, yk] += pi
    return out


def make_stream(lengths, d=5, labels=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for n in lengths:
        h = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
        y = torch.randint(0, labels, (n,), generator=g)
        chunks.append((h, y))
    return chunks


# Chunk lengths include an empty chunk, single tokens and chunks longer than the window.
LENGTHS = [3, 10, 0, 1, 12, 5, 7]


@pytest.mark.parametrize("size", [1, 4, 7, 50])
@pytest.mark.parametrize("budget", [None, 1])
def test_log_prob_matches_reference_across_chunks(size, budget):
    chunks = make_stream(LENGTHS, labels=4, seed=size)
    kwargs = {} if budget is None else {"budget_bytes": budget}  # 1 byte: one query per block
    cache = NeuralCache(size=size, theta=0.7, **kwargs)
    got = torch.cat([cache.log_prob(h, y) for h, y in chunks])
    want = reference_log_probs(chunks, size, 0.7)
    assert got.dtype == torch.float64
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    assert torch.isneginf(want).any() and torch.isfinite(want).any()  # both cases exercised
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-10, atol=1e-12)
    assert len(cache) == min(size, sum(LENGTHS))


def test_empty_memory_and_unseen_label_give_minus_inf():
    cache = NeuralCache(size=10, theta=0.3)
    h = torch.randn(4, 3, dtype=torch.float64)
    lp = cache.log_prob(h, torch.tensor([1, 1, 2, 1]))
    assert lp[0] == NEG_INF  # nothing visible yet
    assert lp[1] == 0.0  # one visible entry, with the right label
    assert lp[2] == NEG_INF  # label 2 never seen
    assert -math.inf < lp[3] < 0


def test_large_magnitude_scores_are_stable():
    # Scores span thousands of nats: a naive exp would overflow or underflow.
    chunks = make_stream([6, 9, 4], d=4, labels=3, seed=3, scale=30.0)
    cache = NeuralCache(size=8, theta=1.0)
    got = torch.cat([cache.log_prob(h, y) for h, y in chunks])
    want = reference_log_probs(chunks, 8, 1.0)
    assert not torch.isnan(got).any()
    fin = torch.isfinite(want)
    assert (want[fin] < -100).any()  # some matches lie far below the best entry
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-10, atol=1e-9)


def test_distribution_with_targets_is_causal_and_agrees_with_log_prob():
    chunks = make_stream(LENGTHS, labels=6, seed=1)
    a, b = NeuralCache(size=6, theta=0.5), NeuralCache(size=6, theta=0.5, budget_bytes=1)
    for h, y in chunks:
        lp = a.log_prob(h, y)
        p = b.distribution(h, 6, y)
        assert p.shape == (h.shape[0], 6)
        sums = p.sum(1)
        seen = torch.isfinite(lp) | (sums > 0)
        torch.testing.assert_close(sums[seen], torch.ones_like(sums[seen]))
        torch.testing.assert_close(p.gather(1, y[:, None])[:, 0].log(), lp, rtol=1e-10, atol=1e-12)
    assert len(a) == len(b) == 6


def test_distribution_without_targets_reads_memory_only():
    chunks = make_stream([9, 4], labels=5, seed=2)
    cache = NeuralCache(size=7, theta=0.4)
    q = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(cache.distribution(q, 5), torch.zeros(3, 5, dtype=torch.float64))  # empty: zero rows
    entries = []
    for h, y in chunks:
        cache.log_prob(h, y)
        entries.extend((h[t], int(y[t])) for t in range(h.shape[0]))
    p = cache.distribution(q, 5)
    assert len(cache) == 7  # nothing appended
    torch.testing.assert_close(p, reference_distribution(q, entries[-7:], 0.4, 5), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.sum(1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(cache.distribution(q, 5), p)  # reading twice gives the same


def test_reset_clears_and_frees_the_device_and_dtype():
    cache = NeuralCache(size=5, theta=0.3)
    h = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    first = cache.log_prob(h, y)
    assert len(cache) == 4
    cache.reset()
    assert len(cache) == 0
    torch.testing.assert_close(cache.log_prob(h, y), first)  # as from scratch
    cache.reset()
    assert cache.log_prob(h.float(), y).dtype == torch.float32  # a new dtype is fine after reset


def test_inputs_are_not_kept_alive_by_autograd():
    cache = NeuralCache(size=5, theta=0.3)
    h = torch.randn(4, 3, requires_grad=True)
    lp = cache.log_prob(h, torch.tensor([0, 1, 0, 1]))
    assert not lp.requires_grad


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.log_prob(torch.randn(4), torch.zeros(4, dtype=torch.long)), "2-D"),
        (lambda c: c.log_prob(torch.randn(4, 3), torch.zeros(3, dtype=torch.long)), "shape"),
        (lambda c: c.log_prob(torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long)), "shape"),
        (lambda c: c.log_prob(torch.randn(4, 3), torch.zeros(4)), "integer"),
        (lambda c: c.log_prob(torch.randn(4, 3), torch.zeros(4, dtype=torch.bool)), "integer"),
        (lambda c: c.log_prob(torch.randint(0, 3, (4, 3)), torch.zeros(4, dtype=torch.long)), "floating"),
        (lambda c: c.distribution(torch.randn(4, 3), 0), "num_classes"),
        (lambda c: c.distribution(torch.randn(2, 3), 3, torch.tensor([0, 5])), r"\[0, 3\)"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(NeuralCache(size=4))


def test_mismatch_with_stored_entries_raises():
    cache = NeuralCache(size=4)
    cache.log_prob(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="d=6"):
        cache.log_prob(torch.randn(2, 6), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dtype"):
        cache.log_prob(torch.randn(2, 5, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="device"):
        cache.log_prob(torch.empty(2, 5, device="meta"), torch.empty(2, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="outside"):
        cache.distribution(torch.randn(2, 5), 2)  # stored label 2 needs 3 classes


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": -3}, {"size": 2.5}, {"theta": 0.0}, {"theta": -1.0},
                                    {"budget_bytes": 0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        NeuralCache(**kwargs)
