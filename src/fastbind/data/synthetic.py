"""A synthetic long-tailed corpus whose true next-token distribution is known exactly.

The generator writes a stream of *documents*. Each starts with a header line
``= topic_k = <eos>`` (like WikiText's `` = Title = `` lines), then has a geometric number of
sentences, each a geometric number of words followed by ``<eos>``. Every body word is drawn
from a mixture of five components:

======================  =============================================================
background              Zipf over ``background_vocab`` word types ``w0, w1, ...``
topic                   Zipf over the ``topic_words`` words of the document's topic
bigram                  one of ``bigram_successors`` fixed successors of the previous
                        token (weights decaying by ``bigram_decay``): local structure
new entity              Zipf over a large pool of entity types ``E0, E1, ...`` (most of
                        them rare: they appear in few documents)
repeat entity           uniform over the entities already seen in this document, so an
                        entity recurs within its document and then vanishes
cue                     one of ``cue_words`` cue tokens ``C0, C1, ...`` (like "mr." or "the
                        river"); every entity belongs to one cue, and the word after a cue
                        is an entity of that cue (drawn by popularity), so a rare entity is
                        partly predictable from the token before it, as in real text
======================  =============================================================

While a document has no entity yet, the repeat component is unavailable and the other
weights are renormalised. A cue's probability is the total popularity of its entities, so
entities reached through cues follow the same popularity as new-entity draws. The word slot
right after an emitted cue belongs to the cue (its own draw is ignored); a cue that ends its
sentence simply has no entity. Because the topic is announced in the header, the entity set is
visible in the document so far, and the bigram needs only the previous token,
``p_gen(w_t | history)`` is exactly computable from the observable history
(:meth:`SyntheticLanguage.nll`). The mean ``-log p_gen`` over a split, reported as
``Corpus.entropy[split]`` in nats/token, is the irreducible cross-entropy of that split: no
model can do better in expectation, so ``model loss - entropy`` is the model's excess loss.

Conventions for the few tokens not covered by the mixture: the first token of a split (the
``=`` of the first header) has probability 1; after a body ``<eos>`` the document ends
(next token ``=``) with probability ``1/mean_sentences_per_document``; the topic token has
probability ``1/num_topics``; the rest of the header is deterministic; after a word,
``<eos>`` comes with probability ``1/mean_sentence_length``; the first sentence of a
document is never empty and never ends the document before it starts.

The vocabulary is the full generator vocabulary (``<eos>``, a reserved ``<unk>`` that is
never generated, ``=``, the topic tokens, background words and every entity of the pool),
ordered like a real corpus's: specials first, then by descending training count. So every
valid/test token has an id, including entities never seen in training (train count 0).

Everything is vectorised with numpy over whole splits (the only loop is over the length of
the longest run of consecutive bigram draws); the default 1.5M/100k/100k-token corpus takes
a few seconds.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fastbind.data.corpus import SPLITS, Corpus
from fastbind.data.vocab import EOS, UNK, Vocabulary
from fastbind.errors import BadSetting, UserError

# Mixture components, in the order of the weight vector; CUED marks the word slot after a cue.
BACKGROUND, TOPIC, BIGRAM, NEW_ENTITY, REPEAT_ENTITY, CUE = range(6)
CUED = 6


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and shape of the synthetic corpus (defaults: ~1.5M/100k/100k tokens, ~30k types).

    Attributes:
        train_tokens, valid_tokens, test_tokens: approximate split sizes; each split is
            whole documents, stopping at the first document end at or past the target.
        background_vocab: number of background word types.
        background_zipf: Zipf exponent of the background distribution (0 = uniform).
        num_topics: number of topics (uniform prior).
        topic_words: words per topic, drawn without replacement from the background words
            outside the ``topic_skip_top`` most frequent ones.
        topic_skip_top: the most frequent background words that no topic uses.
        topic_zipf: Zipf exponent inside a topic.
        entity_pool: number of entity types.
        entity_zipf: Zipf exponent of entity popularity.
        bigram_successors: successors per previous token (drawn from the background dist.).
        bigram_decay: successor ``j`` has weight proportional to ``bigram_decay ** j``.
        cue_words: number of cue tokens (each entity belongs to one, drawn uniformly).
        w_background, w_topic, w_bigram, w_new_entity, w_repeat_entity, w_cue: mixture
            weights (normalised to sum 1).
        mean_sentence_length: mean words per sentence (geometric, >= 1).
        mean_sentences_per_document: mean sentences per document (geometric, >= 1).
    """

    train_tokens: int = 1_500_000
    valid_tokens: int = 100_000
    test_tokens: int = 100_000
    background_vocab: int = 10_000
    background_zipf: float = 1.1
    num_topics: int = 50
    topic_words: int = 200
    topic_skip_top: int = 100
    topic_zipf: float = 1.0
    entity_pool: int = 20_000
    entity_zipf: float = 0.8
    bigram_successors: int = 3
    bigram_decay: float = 0.5
    w_background: float = 0.45
    w_topic: float = 0.25
    w_bigram: float = 0.2
    w_new_entity: float = 0.03
    w_repeat_entity: float = 0.1
    w_cue: float = 0.1
    cue_words: int = 100
    mean_sentence_length: float = 20.0
    mean_sentences_per_document: float = 80.0

    def __post_init__(self) -> None:  # bad values fail while a command line is read, before any generation
        for name in ("train_tokens", "valid_tokens", "test_tokens", "background_vocab", "num_topics",
                     "bigram_successors", "mean_sentence_length", "mean_sentences_per_document"):
            if not getattr(self, name) >= 1:
                raise BadSetting(name, "must be >= 1")
        for name in ("entity_pool", "topic_skip_top", "background_zipf", "topic_zipf", "entity_zipf",
                     "w_background", "w_topic", "w_bigram", "w_new_entity", "w_repeat_entity", "w_cue"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if not 0 < self.bigram_decay <= 1:
            raise BadSetting("bigram_decay", "must lie in (0, 1]")
        if self.w_cue > 0 and self.cue_words < 1:
            raise BadSetting("cue_words", "must be >= 1 while w_cue > 0")
        if sum(self.weights[:REPEAT_ENTITY]) == 0:  # repeats and cues need entities that something introduced
            name = "w_repeat_entity" if self.w_repeat_entity else "w_cue" if self.w_cue else "w_background"
            raise BadSetting(name, "needs one of w_background, w_topic, w_bigram, w_new_entity > 0")
        if self.entity_pool == 0 and (self.w_new_entity or self.w_repeat_entity or self.w_cue):
            raise BadSetting("entity_pool", "must be > 0 while w_new_entity, w_repeat_entity or w_cue is > 0")
        top = self.background_vocab - min(self.topic_skip_top, self.background_vocab - 1)
        if self.w_topic > 0 and not 0 < self.topic_words <= top:
            raise BadSetting("topic_words", f"must lie in [1, {top}] (background_vocab - topic_skip_top)")

    @property
    def weights(self) -> tuple[float, float, float, float, float, float]:
        """The raw mixture weights in component order."""
        return (self.w_background, self.w_topic, self.w_bigram, self.w_new_entity, self.w_repeat_entity, self.w_cue)


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def _sample(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: index i with cdf[i-1] <= u < cdf[i]."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _segment_first(seg: np.ndarray, flag: np.ndarray, n_seg: int) -> np.ndarray:
    """Per segment, the first index where ``flag`` holds (``len(flag)`` if none).

    ``seg`` is non-decreasing, so the first flagged index of a segment is found with one
    ``np.unique`` over the flagged positions.
    """
    first = np.full(n_seg, len(flag), dtype=np.int64)
    idx = np.flatnonzero(flag)
    s, where = np.unique(seg[idx], return_index=True)
    first[s] = idx[where]
    return first


def _cue_slots(comp: np.ndarray, adjacent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which word slots emit a cue and which are taken by the cue before them.

    A slot whose draw is ``CUE`` emits a cue unless the slot before it emitted one (then it
    is that cue's entity). In a run of adjacent ``CUE`` draws the 1st, 3rd, … emit cues and
    the 2nd, 4th, … are entities; the slot after a run whose last slot emitted a cue is an
    entity too. Vectorised over runs.

    Returns:
        ``(emits, forced)`` boolean masks over the slots.
    """
    is_cue = comp == CUE
    cont = np.zeros(len(comp), dtype=bool)
    cont[1:] = adjacent[1:] & is_cue[:-1] & is_cue[1:]
    start = is_cue & ~cont
    run_start = np.maximum.accumulate(np.where(start, np.arange(len(comp)), 0))
    k = np.arange(len(comp)) - run_start  # position inside the run
    emits = is_cue & (k % 2 == 0)
    forced = np.zeros(len(comp), dtype=bool)
    forced[1:] = adjacent[1:] & emits[:-1]
    return emits, forced


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: ``keys[i]`` is the first occurrence of its value."""
    out = np.zeros(len(keys), dtype=bool)
    _, where = np.unique(keys, return_index=True)
    out[where] = True
    return out


class SyntheticLanguage:
    """The generator's fixed parameters (drawn once from the seed), a sampler, and exact NLL.

    Generator ids (``gid``): ``0 = <eos>``, ``1 = "="``, then ``num_topics`` topic tokens,
    then the background words (by Zipf rank), then the entities (by popularity rank), then
    the cue tokens (only when ``w_cue > 0``).

    Args:
        cfg: the configuration.
        rng: generator for the parameters (topic word sets, bigram successors).
    """

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        K, V, M = cfg.num_topics, cfg.background_vocab, cfg.entity_pool
        self.eos, self.eq = 0, 1
        self.topic0 = 2
        self.bg0 = self.topic0 + K
        self.ent0 = self.bg0 + V
        self.cue0 = self.ent0 + M
        C = cfg.cue_words if cfg.w_cue > 0 else 0
        self.size = self.cue0 + C
        self.tokens: list[str] = (
            [EOS, "="] + [f"topic_{k}" for k in range(K)] + [f"w{i}" for i in range(V)] + [f"E{i}" for i in range(M)]
            + [f"C{i}" for i in range(C)]
        )
        self.p_background = _zipf(V, cfg.background_zipf)
        self.p_entity = _zipf(M, cfg.entity_zipf) if M else np.zeros(0)
        self.p_topic_rank = _zipf(max(cfg.topic_words, 1), cfg.topic_zipf)
        skip = min(cfg.topic_skip_top, V - 1)
        self.topic_table = np.zeros((K, 1), dtype=np.int64)  # (K, topic_words) background indices
        self.p_topic = np.zeros((K, V))  # dense topic distributions, for scoring
        if cfg.w_topic > 0:
            self.topic_table = np.stack(
                [skip + rng.choice(V - skip, size=cfg.topic_words, replace=False) for _ in range(K)]
            )
            # Words within a row are distinct, so a put (not an add) gives each its probability.
            ranks = np.broadcast_to(self.p_topic_rank, self.topic_table.shape)
            np.put_along_axis(self.p_topic, self.topic_table, ranks, axis=1)
        self.successors = rng.choice(  # (size, S) background indices, drawn from the background dist.
            V, size=(self.size, cfg.bigram_successors), p=self.p_background
        )
        beta = cfg.bigram_decay ** np.arange(cfg.bigram_successors, dtype=np.float64)
        self.p_successor = beta / beta.sum()
        # Each entity's cue; a cue's prior is its entities' total popularity.
        self.entity_cue = rng.integers(0, C, size=M) if C else np.zeros(M, dtype=np.int64)
        self.p_cue = np.bincount(self.entity_cue, weights=self.p_entity, minlength=C) if C else np.zeros(0)
        self.p_given_cue = self.p_entity / np.maximum(self.p_cue[self.entity_cue], 1e-300) if C else np.zeros(M)
        self.cue_order = np.argsort(self.entity_cue, kind="stable")  # entities grouped by cue
        self.cue_start = np.concatenate([[0], np.cumsum(np.bincount(self.entity_cue, minlength=C))])
        w = np.asarray(cfg.weights, dtype=np.float64)
        self.mix = w / w.sum()  # when the document has seen an entity
        w0 = w.copy()
        w0[REPEAT_ENTITY] = 0.0
        self.mix_empty = w0 / w0.sum()  # before its first entity
        self.q_eos = 1.0 / cfg.mean_sentence_length
        self.q_end = 1.0 / cfg.mean_sentences_per_document

    # ------------------------------------------------------------------ sampling
    def _layout(self, n_tokens: int, rng: np.random.Generator):
        """Sample document/sentence lengths; whole documents until ``n_tokens`` is reached."""
        mean_doc = 4 + self.cfg.mean_sentences_per_document * (self.cfg.mean_sentence_length + 1)
        n_docs = int(n_tokens / mean_doc * 1.2) + 8
        while True:
            n_sent = rng.geometric(self.q_end, size=n_docs)
            sent_len = rng.geometric(self.q_eos, size=int(n_sent.sum()))  # words, >= 1
            doc_of_sent = np.repeat(np.arange(n_docs), n_sent)
            doc_len = 4 + np.bincount(doc_of_sent, weights=sent_len + 1, minlength=n_docs).astype(np.int64)
            ends = np.cumsum(doc_len)
            if ends[-1] >= n_tokens:
                break
            n_docs *= 2  # rare: redraw with more documents
        D = int(np.searchsorted(ends, n_tokens)) + 1
        S = int(n_sent[:D].sum())
        return D, n_sent[:D], sent_len[:S], doc_of_sent[:S], int(ends[D - 1])

    def sample(self, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Sample whole documents until at least ``n_tokens`` tokens.

        Returns:
            ``(N,)`` int64 generator ids, ``N >= n_tokens``.
        """
        cfg = self.cfg
        D, n_sent, sent_len, doc_of_sent, T = self._layout(n_tokens, rng)
        tok = np.full(T, -1, dtype=np.int64)
        # Header of document d sits at 4*d + (tokens of all earlier sentences).
        seg = sent_len + 1
        sent_cum = np.cumsum(seg)
        sent_before_doc = np.concatenate([[0], np.cumsum(np.bincount(doc_of_sent, weights=seg, minlength=D))[:-1]])
        hdr = 4 * np.arange(D) + sent_before_doc.astype(np.int64)
        topics = rng.integers(0, cfg.num_topics, size=D)
        tok[hdr] = self.eq
        tok[hdr + 1] = self.topic0 + topics
        tok[hdr + 2] = self.eq
        tok[hdr + 3] = self.eos
        sent_end = sent_cum + 4 * (doc_of_sent + 1) - 1  # position of each sentence's <eos>
        tok[sent_end] = self.eos
        word_pos = np.flatnonzero(tok < 0)
        W = len(word_pos)
        doc_w = np.searchsorted(hdr, word_pos, side="right") - 1  # document of each word

        # Component choice: one uniform per word, read through the "no entity yet" weights
        # up to and including the document's first entity, through the full weights after.
        u = rng.random(W)
        adjacent = np.zeros(W, dtype=bool)  # slot j follows slot j-1 directly (same sentence)
        adjacent[1:] = word_pos[1:] == word_pos[:-1] + 1
        c_empty = _sample(np.cumsum(self.mix_empty), u)
        c_full = _sample(np.cumsum(self.mix), u)
        emits, forced = _cue_slots(c_empty, adjacent)
        first_ent = _segment_first(doc_w, forced | ((c_empty == NEW_ENTITY) & ~forced), D)
        comp = np.where(np.arange(W) <= first_ent[doc_w], c_empty, c_full)
        emits, forced = _cue_slots(comp, adjacent)
        comp = np.where(forced, CUED, np.where(emits, CUE, comp))

        words = np.full(W, -1, dtype=np.int64)
        m = comp == BACKGROUND
        words[m] = self.bg0 + _sample(np.cumsum(self.p_background), rng.random(int(m.sum())))
        m = comp == TOPIC
        ranks = _sample(np.cumsum(self.p_topic_rank), rng.random(int(m.sum())))
        words[m] = self.bg0 + self.topic_table[topics[doc_w[m]], ranks]
        m_new = comp == NEW_ENTITY
        words[m_new] = self.ent0 + _sample(np.cumsum(self.p_entity), rng.random(int(m_new.sum())))
        m_cue = comp == CUE
        words[m_cue] = self.cue0 + _sample(np.cumsum(self.p_cue), rng.random(int(m_cue.sum())))
        m_cued = comp == CUED
        if m_cued.any():
            # an entity of the previous slot's cue, by popularity: inverse CDF inside the cue's block
            c = words[np.flatnonzero(m_cued) - 1] - self.cue0
            cdf = np.cumsum(self.p_entity[self.cue_order])
            lo = np.concatenate([[0.0], np.cumsum(self.p_cue)])[c]
            i = np.searchsorted(cdf, lo + rng.random(len(c)) * self.p_cue[c], side="right")
            i = np.clip(i, self.cue_start[c], self.cue_start[c + 1] - 1)
            words[m_cued] = self.ent0 + self.cue_order[i]
        m_rep = comp == REPEAT_ENTITY
        if m_rep.any():
            # Distinct entities of each document in order of first appearance; only new-entity
            # and cued draws can introduce one, so their first occurrences (per document) list them all.
            new_idx = np.flatnonzero(m_new | m_cued)
            intro = np.zeros(W, dtype=bool)
            intro[new_idx[_first_occurrence(doc_w[new_idx] * self.size + words[new_idx])]] = True
            distinct = words[intro]  # grouped by document, in order
            n_intro_before = np.cumsum(intro) - intro  # exclusive prefix count, global
            doc_start = n_intro_before[_segment_first(doc_w, np.ones(W, dtype=bool), D)]
            rep_idx = np.flatnonzero(m_rep)
            d = doc_w[rep_idx]
            n_seen = n_intro_before[rep_idx] - doc_start[d]  # >= 1 by construction
            j = np.floor(rng.random(len(rep_idx)) * n_seen).astype(np.int64)
            words[rep_idx] = distinct[doc_start[d] + j]
        tok[word_pos] = np.where(comp == BIGRAM, -1, words)

        # Bigram draws depend on the previous token, which may itself be a bigram draw:
        # resolve run by run, vectorised over all positions whose predecessor is known.
        bi = word_pos[comp == BIGRAM]
        choice = _sample(np.cumsum(self.p_successor), rng.random(len(bi)))
        while len(bi):
            ready = tok[bi - 1] >= 0
            tok[bi[ready]] = self.bg0 + self.successors[tok[bi[ready] - 1], choice[ready]]
            bi, choice = bi[~ready], choice[~ready]
        return tok

    # ------------------------------------------------------------------ exact scoring
    def nll(self, tok: np.ndarray) -> np.ndarray:
        """Exact ``-log p_gen(w_t | w_<t)`` for every position of a sampled split.

        Uses only the observable tokens: the topic from the header, the entities seen so far
        in the document, the previous token and the position in the sentence/document.

        Args:
            tok: ``(N,)`` generator ids, starting at a document header.

        Returns:
            ``(N,)`` float64 negative log-probabilities in nats.
        """
        tok = np.asarray(tok, dtype=np.int64)
        T = len(tok)
        if T == 0 or tok[0] != self.eq:
            raise UserError("a synthetic split must start with a document header")
        K = self.cfg.num_topics
        logp = np.zeros(T)
        is_topic = (tok >= self.topic0) & (tok < self.topic0 + K)
        hdr = np.flatnonzero(is_topic) - 1  # each header: "=" topic "=" <eos>
        D = len(hdr)
        topics = tok[hdr + 1] - self.topic0
        logp[hdr[1:]] = math.log(self.q_end)
        logp[hdr + 1] = -math.log(K)
        in_header = np.zeros(T, dtype=bool)
        for k in range(4):
            in_header[hdr + k] = True
        body_eos = (tok == self.eos) & ~in_header
        logp[body_eos] = math.log(self.q_eos)

        word_pos = np.flatnonzero(~in_header & ~body_eos)
        W = len(word_pos)
        prev = tok[word_pos - 1]
        after_header = np.zeros(T, dtype=bool)
        first_body = hdr + 4
        first_body = first_body[first_body < T]
        after_header[first_body] = True
        cont = np.where(
            after_header[word_pos], 0.0, np.where(prev == self.eos, math.log1p(-self.q_end), math.log1p(-self.q_eos))
        )

        w = tok[word_pos]
        doc_w = np.searchsorted(hdr, word_pos, side="right") - 1
        is_bg = (w >= self.bg0) & (w < self.ent0)
        is_ent = (w >= self.ent0) & (w < self.cue0)
        is_cue = w >= self.cue0
        bg = np.where(is_bg, w - self.bg0, 0)
        ent = np.where(is_ent, w - self.ent0, 0)
        # Entities seen in the document before t: count distinct earlier entity tokens.
        ent_idx = np.flatnonzero(is_ent)
        first = np.zeros(W, dtype=bool)
        first[ent_idx[_first_occurrence(doc_w[ent_idx] * self.size + w[ent_idx])]] = True
        n_before = np.cumsum(first) - first
        doc_first_word = _segment_first(doc_w, np.ones(W, dtype=bool), D)
        n_seen = n_before - n_before[doc_first_word][doc_w]  # every document has a word
        seen_before = is_ent & ~first  # w itself already in the document's entity set

        mix = np.where((n_seen > 0)[:, None], self.mix, self.mix_empty)  # (W, 5)
        p = mix[:, BACKGROUND] * np.where(is_bg, self.p_background[bg], 0.0)
        p += mix[:, TOPIC] * np.where(is_bg, self.p_topic[topics[doc_w], bg], 0.0)
        succ_hit = self.successors[prev] == np.where(is_bg, bg, -1)[:, None]  # (W, S)
        p += mix[:, BIGRAM] * (succ_hit * self.p_successor).sum(axis=1)
        if self.cfg.entity_pool:
            p += mix[:, NEW_ENTITY] * np.where(is_ent, self.p_entity[ent], 0.0)
            p += mix[:, REPEAT_ENTITY] * np.where(seen_before, 1.0 / np.maximum(n_seen, 1), 0.0)
        if len(self.p_cue):
            p += mix[:, CUE] * np.where(is_cue, self.p_cue[np.where(is_cue, w - self.cue0, 0)], 0.0)
            # the word after a cue is one of the cue's entities, whatever the mixture says
            after_cue = prev >= self.cue0
            own = is_ent & (self.entity_cue[ent] == prev - self.cue0)
            p = np.where(after_cue, np.where(own, self.p_given_cue[ent], 0.0), p)
        with np.errstate(divide="ignore"):
            logp[word_pos] = cont + np.log(p)
        return -logp


def generate(cfg: SyntheticConfig | None = None, seed: int = 0, *, verbose: bool = False) -> Corpus:
    """Generate the synthetic corpus.

    Args:
        cfg: sizes and shape (default :class:`SyntheticConfig`).
        seed: everything (parameters and the three splits) is a function of it.
        verbose: print the generation time.

    Returns:
        A :class:`Corpus` named ``"synthetic"`` whose ``entropy`` maps each split to the mean
        ``-log p_gen(w_t | history)`` in nats/token: the irreducible cross-entropy (a
        perfect model's loss), to compare a trained model's loss against.
    """
    cfg = cfg or SyntheticConfig()
    t0 = time.perf_counter()
    ss = np.random.SeedSequence(seed)
    param_seq, *split_seqs = ss.spawn(1 + len(SPLITS))
    lang = SyntheticLanguage(cfg, np.random.default_rng(param_seq))
    sizes = {"train": cfg.train_tokens, "valid": cfg.valid_tokens, "test": cfg.test_tokens}
    gids = {s: lang.sample(sizes[s], np.random.default_rng(q)) for s, q in zip(SPLITS, split_seqs, strict=True)}
    entropy = {s: float(lang.nll(gids[s]).mean()) for s in SPLITS}
    counts = np.bincount(gids["train"], minlength=lang.size)
    train_counts = Counter(dict(zip(lang.tokens, counts.tolist(), strict=True)))
    vocab = Vocabulary.build(train_counts, min_count=0, specials=(EOS,), unk=UNK)
    to_vocab = np.asarray([vocab.stoi[t] for t in lang.tokens], dtype=np.int64)
    corpus = Corpus.from_arrays("synthetic", vocab, {s: to_vocab[gids[s]] for s in SPLITS}, entropy=entropy)
    if verbose:
        print(f"synthetic corpus ({asdict(cfg)}) generated in {time.perf_counter() - t0:.2f}s: {corpus}")
    return corpus


def language(cfg: SyntheticConfig | None = None, seed: int = 0) -> SyntheticLanguage:
    """The :class:`SyntheticLanguage` that :func:`generate` uses for ``(cfg, seed)``."""
    cfg = cfg or SyntheticConfig()
    param_seq = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))[0]
    return SyntheticLanguage(cfg, np.random.default_rng(param_seq))


def token_nll(corpus: Corpus, split: str, cfg: SyntheticConfig | None = None, seed: int = 0) -> torch.Tensor:
    """Per-token ``-log p_gen`` of a generated corpus's split, as a ``(N,)`` float64 tensor.

    ``cfg``/``seed`` must be the ones the corpus was generated with; useful to break the
    irreducible loss down by frequency bucket.
    """
    lang = language(cfg, seed)
    index = {t: g for g, t in enumerate(lang.tokens)}
    to_gid = np.asarray([index.get(t, -1) for t in corpus.vocab.itos], dtype=np.int64)
    gids = to_gid[corpus.split(split).numpy()]
    if (gids < 0).any():
        raise UserError("the corpus has tokens this synthetic configuration never generates")
    return torch.from_numpy(lang.nll(gids))
