"""Statistics of a corpus that decide how much a fast-binding mechanism can help.

They compare the synthetic corpus with real text (``fastbind corpus-stats``), each computed
with a few vectorised numpy passes over the token ids:

* **bucket shares**: the share of test tokens in each training-frequency bucket (Rae et al.
  2018, Table 2's buckets) and the share never seen in training;
* **type–token growth**: distinct types among the first ``n`` training tokens, and the Heaps
  exponent ``β`` of ``types ∝ n^β`` between consecutive ``n``;
* **rare recurrence**: of the test tokens whose word is rare in training (count in
  ``[1, rare)``), the share whose word already occurred in the previous ``window`` tokens,
  and — where the corpus marks documents with WikiText-style `` = Title = `` header lines —
  earlier in the same document. This is what a neural cache can exploit;
* **context gain**: how many nats the previous two tokens take off the entropy of a rare
  word's *identity*, given that the next word is rare. Two models are fitted on the training
  split's rare-word events only — a unigram over rare types (add-one) and an interpolated
  Witten–Bell trigram backing off to it — and compared by cross-entropy on the test split's
  rare-word events. Held-out, so sparse contexts cannot fake a gain. This is what memorizing
  activations (Hebbian Softmax) can exploit: an activation can only point at a word that its
  context predicts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastbind.data.corpus import Corpus
from fastbind.data.vocab import EOS
from fastbind.buckets import DEFAULT_EDGES, bucket_names, class_buckets

__all__ = ["context_gain", "corpus_statistics", "document_ids", "rare_recurrence", "type_growth"]


def document_ids(tokens: np.ndarray, eos: int, eq: int | None) -> np.ndarray | None:
    """Document index of every position, a document starting at each top-level header
    ``= Title =`` at a line start (``=`` after ``<eos>`` or at 0, not followed by another ``=``).
    None when the corpus has no such header (e.g. Penn Treebank)."""
    if eq is None or len(tokens) < 2:
        return None
    t = np.asarray(tokens)
    prev = np.concatenate([[eos], t[:-1]])
    nxt = np.concatenate([t[1:], [eos]])
    start = (t == eq) & (prev == eos) & (nxt != eq)
    if not start.any():
        return None
    return np.cumsum(start) - 1  # positions before the first header get -1


def _previous_occurrence(tokens: np.ndarray) -> np.ndarray:
    """For every position, the index of the previous occurrence of the same token (-1 if none)."""
    order = np.lexsort((np.arange(len(tokens)), tokens))  # by token, then position
    prev = np.full(len(tokens), -1, dtype=np.int64)
    same = tokens[order[1:]] == tokens[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def rare_recurrence(tokens: np.ndarray, rare_mask: np.ndarray, window: int,
                    docs: np.ndarray | None) -> dict[str, float | int | None]:
    """Share of rare-word positions whose word occurred in the previous ``window`` tokens,
    and (with ``docs``) earlier in the same document."""
    tokens = np.asarray(tokens)
    pos = np.flatnonzero(rare_mask[tokens])
    prev = _previous_occurrence(tokens)[pos]
    seen = prev >= 0
    out: dict[str, float | int | None] = {"rare_tokens": int(len(pos))}
    out["in_window"] = float(np.mean(seen & (pos - prev <= window))) if len(pos) else math.nan
    if docs is None:
        out["in_document"] = None
    else:
        out["in_document"] = float(np.mean(seen & (docs[np.maximum(prev, 0)] == docs[pos]) & (docs[pos] >= 0))) \
            if len(pos) else math.nan
    return out


def type_growth(tokens: np.ndarray, points: tuple[int, ...]) -> dict[str, Any]:
    """Distinct types among the first ``n`` tokens for each ``n`` in ``points`` (those the split
    reaches), and the Heaps exponent ``β`` of ``types ∝ n^β`` between each pair of consecutive
    points (``"10000-100000": β``), so corpora of different sizes compare on a common range."""
    tokens = np.asarray(tokens)
    first = np.zeros(len(tokens), dtype=bool)
    first[np.unique(tokens, return_index=True)[1]] = True
    types_upto = np.cumsum(first)
    ns = [n for n in points if n <= len(tokens)]
    types = {int(n): int(types_upto[n - 1]) for n in ns}
    beta = {f"{a}-{b}": math.log(types[b] / types[a]) / math.log(b / a) for a, b in zip(ns, ns[1:])}
    return {"types": types, "heaps_beta": beta}


def _pack(*cols: np.ndarray, base: int) -> np.ndarray:
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for c in cols:
        key = key * base + c.astype(np.int64)
    return key


def _lookup(keys: np.ndarray, table_keys: np.ndarray, table_vals: np.ndarray) -> np.ndarray:
    """``table_vals`` at ``keys`` (0 where a key is absent); ``table_keys`` sorted."""
    if len(table_keys) == 0:
        return np.zeros(len(keys), dtype=np.float64)
    i = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    return np.where(table_keys[i] == keys, table_vals[i], 0).astype(np.float64)


def context_gain(train: np.ndarray, test: np.ndarray, rare_mask: np.ndarray) -> dict[str, float | int]:
    """Nats by which the previous two tokens lower the entropy of a rare word's identity.

    Events are positions ``t >= 2`` whose word is rare. A unigram over the rare types (add-one)
    and an interpolated Witten–Bell model ``p(w | w_{t-1})``, ``p(w | w_{t-2}, w_{t-1})`` built
    on it are fitted on the training events and scored on the test events.

    Returns:
        ``{"events", "unigram_nats", "context_nats", "gain_nats"}`` (per test event).
    """
    V = int(max(train.max(), test.max())) + 1
    rare_types = np.flatnonzero(rare_mask)
    R = len(rare_types)

    def events(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.int64)
        pos = np.flatnonzero(rare_mask[t[2:]]) + 2
        return t[pos - 2], t[pos - 1], t[pos]

    a, b, w = events(train)
    ta, tb, tw = events(test)
    uni = np.bincount(w, minlength=V).astype(np.float64)
    p = (uni[tw] + 1.0) / (len(w) + R)  # add-one over the rare types
    for ctx, tctx in (((b,), (tb,)), ((a, b), (ta, tb))):
        ck = _pack(*ctx, base=V)
        cw = _pack(*ctx, w, base=V)
        c_keys, c_tot = np.unique(ck, return_counts=True)
        cw_keys, cw_cnt = np.unique(cw, return_counts=True)
        # distinct successors of each context (N1+(c ·)): one per distinct (context, word) key
        ctx_of_cw = cw_keys // V
        n1_keys, n1 = np.unique(ctx_of_cw, return_counts=True)
        q = _pack(*tctx, base=V)
        tot = _lookup(q, c_keys, c_tot)
        types = _lookup(q, n1_keys, n1)
        hit = _lookup(_pack(*tctx, tw, base=V), cw_keys, cw_cnt)
        seen = tot > 0
        p = np.where(seen, (hit + types * p) / np.where(seen, tot + types, 1.0), p)
    uni_nats = float(-np.log((uni[tw] + 1.0) / (len(w) + R)).mean()) if len(tw) else math.nan
    ctx_nats = float(-np.log(p).mean()) if len(tw) else math.nan
    return {"events": int(len(tw)), "unigram_nats": uni_nats, "context_nats": ctx_nats,
            "gain_nats": uni_nats - ctx_nats}


def corpus_statistics(corpus: Corpus, *, rare: int = 100, window: int = 2000,
                      points: tuple[int, ...] = (10_000, 100_000, 1_000_000),
                      edges: tuple[int, ...] = DEFAULT_EDGES) -> dict[str, Any]:
    """Every statistic of this module for one corpus (test split against training counts).

    Args:
        corpus: the corpus.
        rare: a word is rare when its training count is in ``[1, rare)``.
        window: look-back of the recurrence statistic, in tokens.
        points: training-prefix lengths for type–token growth.
        edges: frequency-bucket edges.
    """
    train, test = corpus.train.numpy(), corpus.test.numpy()
    counts = corpus.train_counts.numpy()
    eos = corpus.vocab.stoi[EOS]
    eq = corpus.vocab.stoi.get("=")
    bucket = class_buckets(corpus.train_counts, edges).numpy()[test]
    names = bucket_names(edges)
    share = np.bincount(bucket, minlength=len(names)) / len(test)
    rare_mask = (counts >= 1) & (counts < rare)
    rare_mask[eos] = False
    return {
        "name": corpus.name, "train_tokens": int(len(train)), "test_tokens": int(len(test)),
        "types_in_train": int((counts > 0).sum()),
        "bucket_share": {n: float(s) for n, s in zip(names, share, strict=True)},
        "unseen_share": float(np.mean(counts[test] == 0)),
        "type_growth": type_growth(train, points),
        "rare_recurrence": rare_recurrence(test, rare_mask, window, document_ids(test, eos, eq)),
        "context_gain": context_gain(train, test, rare_mask),
        "settings": {"rare": rare, "window": window, "edges": list(edges)},
    }
