"""Corpus statistics against slow, obviously-correct loops."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from fastbind.data import SyntheticConfig, generate_synthetic
from fastbind.data.statistics import context_gain, corpus_statistics, document_ids, rare_recurrence, type_growth


def _stream(n: int, V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, V + 1)
    return rng.choice(V, size=n, p=p / p.sum())


def test_document_ids_start_at_top_level_headers_only():
    eos, eq = 0, 1
    #        = T = <eos> a b <eos> = = S = = <eos> c <eos> = U = <eos> d
    toks = [1, 5, 1, 0, 6, 7, 0, 1, 1, 8, 1, 1, 0, 9, 0, 1, 5, 1, 0, 6]
    assert document_ids(np.array(toks), eos, eq).tolist() == [0] * 15 + [1] * 5
    assert document_ids(np.array([3, 4, 0]), eos, eq) is None
    assert document_ids(np.array(toks), eos, None) is None


def test_rare_recurrence_matches_a_loop():
    toks = _stream(3000, 200, 0)
    rare = np.zeros(200, dtype=bool)
    rare[50:] = True
    docs = np.repeat(np.arange(10), 300)
    got = rare_recurrence(toks, rare, 40, docs)
    hits_w = hits_d = n = 0
    for t, w in enumerate(toks.tolist()):
        if not rare[w]:
            continue
        n += 1
        earlier = [s for s in range(t) if toks[s] == w]
        hits_w += bool(earlier) and t - earlier[-1] <= 40
        hits_d += bool(earlier) and docs[earlier[-1]] == docs[t]
    assert got["rare_tokens"] == n
    assert got["in_window"] == pytest.approx(hits_w / n) and got["in_document"] == pytest.approx(hits_d / n)
    assert rare_recurrence(toks, rare, 40, None)["in_document"] is None


def test_type_growth_and_heaps_exponent():
    toks = _stream(5000, 3000, 1)
    got = type_growth(toks, (10, 100, 1000, 10_000))
    want = {n: len(set(toks[:n].tolist())) for n in (10, 100, 1000)}
    assert got["types"] == want  # 10,000 is past the end: left out
    assert got["heaps_beta"] == pytest.approx({"10-100": math.log(want[100] / want[10]) / math.log(10),
                                               "100-1000": math.log(want[1000] / want[100]) / math.log(10)})


def _witten_bell_reference(train, test, rare):
    """Dictionary-based interpolated Witten-Bell over rare-word events, one event at a time."""
    ev = lambda t: [(t[i - 2], t[i - 1], t[i]) for i in range(2, len(t)) if rare[t[i]]]  # noqa: E731
    tr, te = ev(train.tolist()), ev(test.tolist())
    R = int(rare.sum())
    uni = Counter(w for _, _, w in tr)
    tables = []
    for order in (1, 2):
        joint, total, succ = Counter(), Counter(), defaultdict(set)
        for a, b, w in tr:
            c = (b,) if order == 1 else (a, b)
            joint[c + (w,)] += 1
            total[c] += 1
            succ[c].add(w)
        tables.append((joint, total, succ))
    nll_u = nll_c = 0.0
    for a, b, w in te:
        p = (uni[w] + 1) / (len(tr) + R)
        nll_u -= math.log(p)
        for order, (joint, total, succ) in zip((1, 2), tables, strict=True):
            c = (b,) if order == 1 else (a, b)
            if total[c]:
                p = (joint[c + (w,)] + len(succ[c]) * p) / (total[c] + len(succ[c]))
        nll_c -= math.log(p)
    return len(te), nll_u / len(te), nll_c / len(te)


def test_context_gain_matches_a_dictionary_witten_bell():
    rng = np.random.default_rng(2)
    train, test = _stream(4000, 60, 3), _stream(800, 60, 4)
    # make rare words partly predictable: word 40 + k tends to follow word k
    follow = rng.random(len(train)) < 0.3
    train[1:][follow[1:] & (train[:-1] < 20)] = 40 + train[:-1][follow[1:] & (train[:-1] < 20)]
    rare = np.zeros(60, dtype=bool)
    rare[30:] = True
    got = context_gain(train, test, rare)
    n, u, c = _witten_bell_reference(train, test, rare)
    assert got["events"] == n
    assert got["unigram_nats"] == pytest.approx(u, rel=1e-12) and got["context_nats"] == pytest.approx(c, rel=1e-12)
    assert got["gain_nats"] == pytest.approx(u - c, rel=1e-9)


def test_cues_make_rare_entities_predictable_from_context():
    """The generator's cue component is what gives the synthetic corpus a positive context gain."""
    small = dict(train_tokens=200_000, valid_tokens=2_000, test_tokens=40_000, background_vocab=3_000,
                 entity_pool=4_000, num_topics=10)
    with_cues = corpus_statistics(generate_synthetic(SyntheticConfig(**small), seed=0))
    without = corpus_statistics(generate_synthetic(SyntheticConfig(**small, w_cue=0.0), seed=0))
    assert with_cues["context_gain"]["gain_nats"] > without["context_gain"]["gain_nats"] + 0.2
    shares = with_cues["bucket_share"]
    assert list(shares) == [">10K", "1K-10K", "100-1K", "<100"] and sum(shares.values()) == pytest.approx(1.0)
    assert with_cues["rare_recurrence"]["in_document"] is not None  # synthetic documents have headers
