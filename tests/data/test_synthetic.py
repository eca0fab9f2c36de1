from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from fastbind.data import SyntheticConfig, generate_synthetic, load_corpus, token_nll
from fastbind.data.synthetic import SyntheticLanguage, language
from fastbind.errors import UserError

TINY = SyntheticConfig(
    train_tokens=6_000, valid_tokens=400, test_tokens=400,
    background_vocab=12, num_topics=3, topic_words=4, topic_skip_top=2, entity_pool=6,
    bigram_successors=2, mean_sentence_length=4, mean_sentences_per_document=3,
    w_new_entity=0.1, w_repeat_entity=0.2, w_cue=0.08, cue_words=3,
)
SMALL = SyntheticConfig(train_tokens=30_000, valid_tokens=3_000, test_tokens=3_000,
                        background_vocab=2_000, entity_pool=3_000, num_topics=10)


def reference_distributions(lang: SyntheticLanguage, tok: np.ndarray) -> np.ndarray:
    """Slow, obviously-correct next-token distributions, one token at a time.

    Walks the stream keeping only what an observer sees: header state, topic, the set of
    entities seen in the current document, and the previous token. Returns ``(N, size)``.
    """
    cfg = lang.cfg
    out = np.zeros((len(tok), lang.size))
    state, topic, seen = "start", None, []
    for t, w in enumerate(tok.tolist()):
        p = out[t]
        if state == "start":
            p[lang.eq] = 1.0
        elif state == "eq1":
            p[lang.topic0 : lang.topic0 + cfg.num_topics] = 1.0 / cfg.num_topics
        elif state == "topic":
            p[lang.eq] = 1.0
        elif state == "eq2":
            p[lang.eos] = 1.0
        else:
            if state == "header_eos":
                go_on = 1.0
            elif state == "body_eos":
                p[lang.eq] = lang.q_end
                go_on = 1.0 - lang.q_end
            else:  # after a word
                p[lang.eos] = lang.q_eos
                go_on = 1.0 - lang.q_eos
            mix = lang.mix if seen else lang.mix_empty
            pw = np.zeros(lang.size)
            if state == "word" and tok[t - 1] >= lang.cue0:  # after a cue: one of its entities
                for e in range(cfg.entity_pool):
                    if lang.entity_cue[e] == tok[t - 1] - lang.cue0:
                        pw[lang.ent0 + e] = lang.p_entity[e] / lang.p_cue[lang.entity_cue[e]]
            else:
                pw[lang.bg0 : lang.ent0] += mix[0] * lang.p_background + mix[1] * lang.p_topic[topic]
                for j in range(cfg.bigram_successors):
                    pw[lang.bg0 + lang.successors[tok[t - 1], j]] += mix[2] * lang.p_successor[j]
                pw[lang.ent0 : lang.cue0] += mix[3] * lang.p_entity
                for e in seen:
                    pw[e] += mix[4] / len(seen)
                pw[lang.cue0 :] += mix[5] * lang.p_cue
            p += go_on * pw
        # observe w
        if w == lang.eq and state in ("start", "body_eos"):
            state, seen = "eq1", []
        elif state == "eq1":
            state, topic = "topic", w - lang.topic0
        elif state == "topic":
            state = "eq2"
        elif state == "eq2":
            state = "header_eos"
        elif w == lang.eos:
            state = "body_eos"
        else:
            state = "word"
            if lang.ent0 <= w < lang.cue0 and w not in seen:
                seen.append(w)
    return out


def test_exact_nll_matches_reference_and_sampler_is_calibrated():
    lang = language(TINY, seed=3)
    tok = lang.sample(TINY.train_tokens, np.random.default_rng(5))
    P = reference_distributions(lang, tok)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    ref = -np.log(P[np.arange(len(tok)), tok])
    np.testing.assert_allclose(lang.nll(tok), ref, rtol=0, atol=1e-9)
    # The sampler draws from the distribution nll() scores: observed (prev, next) pair counts
    # match the summed predicted probabilities (a chi-square over well-filled cells).
    expected = np.zeros((lang.size, lang.size))
    np.add.at(expected, tok[:-1], P[1:])
    observed = np.zeros_like(expected)
    np.add.at(observed, (tok[:-1], tok[1:]), 1.0)
    cells = expected > 5
    chi2 = (((observed - expected) ** 2)[cells] / expected[cells]).sum()
    assert chi2 / cells.sum() < 1.5, chi2 / cells.sum()


@pytest.mark.parametrize(
    "perturb", ["mix", "mix_empty", "repeat", "successors", "topics", "entities", "cues", "q_eos", "q_end"]
)
def test_sampler_matches_scorer(perturb):
    """A proper-scoring check: the generator's own parameters give its samples the lowest
    NLL, so any mismatch between sample() and nll() (here simulated by perturbing one
    parameter of the scorer) shows up as a higher mean NLL."""
    cfg = SyntheticConfig(train_tokens=100_000, background_vocab=50, num_topics=3, topic_words=8, topic_skip_top=5,
                          entity_pool=30, bigram_successors=2, mean_sentence_length=6, mean_sentences_per_document=4,
                          w_new_entity=0.1, w_repeat_entity=0.2, w_cue=0.05, cue_words=4)
    lang = language(cfg, seed=3)
    tok = lang.sample(cfg.train_tokens, np.random.default_rng(5))
    base = lang.nll(tok).mean()
    shift = {"mix": [0.02, 0, -0.02, 0, 0, 0], "mix_empty": [0.02, 0, -0.02, 0, 0, 0],
             "repeat": [0, 0, 0, 0.02, -0.02, 0]}
    if perturb in ("mix", "mix_empty"):
        setattr(lang, perturb, getattr(lang, perturb) + np.array(shift[perturb]))
    elif perturb == "repeat":
        lang.mix = lang.mix + np.array(shift["repeat"])
    elif perturb == "successors":
        lang.successors = lang.successors[:, ::-1].copy()
    elif perturb == "topics":
        lang.p_topic = lang.p_topic[::-1].copy()
    elif perturb == "entities":
        lang.p_entity = np.roll(lang.p_entity, 1)
    elif perturb == "cues":
        lang.entity_cue = np.roll(lang.entity_cue, 1)
    else:
        setattr(lang, perturb, getattr(lang, perturb) * 1.05)
    assert lang.nll(tok).mean() > base


def test_uniform_entropy_by_hand():
    """Background only, uniform over n types, one topic: every factor has a closed form."""
    n, q_eos, q_end = 7, 1 / 5, 1 / 4
    cfg = SyntheticConfig(
        train_tokens=5_000, valid_tokens=500, test_tokens=500, background_vocab=n, background_zipf=0.0,
        num_topics=1, entity_pool=0, w_background=1.0, w_topic=0.0, w_bigram=0.0, w_new_entity=0.0,
        w_repeat_entity=0.0, w_cue=0.0, mean_sentence_length=1 / q_eos, mean_sentences_per_document=1 / q_end,
    )
    c = generate_synthetic(cfg, seed=11)
    for split in ("train", "valid", "test"):
        toks = c.vocab.decode(c.split(split))
        N = len(toks)
        docs = toks.count("topic_0")
        words = sum(t.startswith("w") for t in toks)
        body_eos = toks.count("<eos>") - docs  # one header <eos> per document
        later_sentences = body_eos - docs  # sentences that are not the first of their document
        by_hand = (
            (docs - 1) * -math.log(q_end)  # "=" starting every document but the first
            + body_eos * -math.log(q_eos)  # a sentence ends after a word
            + later_sentences * -math.log(1 - q_end)  # a document goes on after a sentence
            + (words - body_eos) * -math.log(1 - q_eos)  # a sentence goes on after a word
            + words * math.log(n)  # the word itself
        ) / N
        assert c.entropy[split] == pytest.approx(by_hand, rel=1e-12)
        nll = token_nll(c, split, cfg, seed=11)
        is_word = torch.tensor([t.startswith("w") for t in toks])
        first_words = torch.tensor([i >= 4 and toks[i - 1] == "<eos>" and toks[i - 2] == "=" for i in range(N)])
        assert torch.allclose(nll[first_words], torch.tensor(math.log(n), dtype=torch.float64))
        assert nll[is_word].min() >= math.log(n) - 1e-12


def test_determinism_and_seed_sensitivity():
    a, b, c = (generate_synthetic(SMALL, seed=s) for s in (7, 7, 8))
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split), b.split(split))
        assert not torch.equal(a.split(split)[:1000], c.split(split)[:1000])
    assert a.vocab == b.vocab and a.entropy == b.entropy
    assert a.entropy != c.entropy
    fields = ("train_tokens", "valid_tokens", "test_tokens", "background_vocab", "entity_pool", "num_topics")
    via_spec = load_corpus("synthetic", seed=7, **{k: getattr(SMALL, k) for k in fields})
    assert torch.equal(via_spec.train, a.train)


def test_structure_and_vocabulary():
    c = generate_synthetic(SMALL, seed=1)
    v = c.vocab
    assert v.itos[:2] == ["<eos>", "<unk>"] and len(v) == 2 + 1 + 10 + 2_000 + 3_000 + 100  # ... + entities + cues
    counts = c.train_counts
    assert int(counts[v.unk_id]) == 0 and int(counts.sum()) == len(c.train)
    assert (counts[2:-1] >= counts[3:]).all()  # frequency-ordered ids, like a real corpus
    toks = v.decode(c.train[:4])
    assert toks[0] == "=" and toks[1].startswith("topic_") and toks[2:] == ["=", "<eos>"]
    for split in ("train", "valid", "test"):
        s = c.split(split)
        assert s.dtype == torch.int64 and int(s.max()) < len(v)
        assert v.decode(s[-1:]) == ["<eos>"]  # splits are whole documents
        assert abs(len(s) - getattr(SMALL, f"{split}_tokens")) < 2_000
    # Entities: recur within documents, and many valid entities were never seen in training.
    valid_entities = {t for t in v.decode(c.valid) if t.startswith("E")}
    unseen = [e for e in valid_entities if int(counts[v.stoi[e]]) == 0]
    assert len(unseen) > 0.2 * len(valid_entities)
    assert all(math.isfinite(x) and 2 < x < 10 for x in c.entropy.values())
    assert float(token_nll(c, "valid", SMALL, seed=1).mean()) == pytest.approx(c.entropy["valid"])


def test_default_corpus_is_long_tailed():
    t0 = time.perf_counter()
    c = generate_synthetic(seed=0)
    elapsed = time.perf_counter() - t0
    print(f"default synthetic corpus in {elapsed:.2f}s: {c}")
    assert 1_400_000 < len(c.train) < 1_600_000 and 90_000 < len(c.valid) < 110_000
    counts = c.train_counts.numpy()
    seen = counts[counts > 0]
    assert len(seen) > 10_000
    assert (seen < 100).mean() > 0.8  # most types are rare
    # no handful of types dominates: the 10 most frequent hold 29% of WikiText-2's and 31% of PTB's training tokens
    assert np.sort(counts)[::-1][:10].sum() < 0.3 * counts.sum()


def test_config_validation():
    with pytest.raises(UserError, match="train_tokens"):
        SyntheticConfig(train_tokens=0)
    with pytest.raises(UserError, match="entity_pool"):
        SyntheticConfig(entity_pool=0)
    with pytest.raises(UserError, match="w_repeat_entity"):
        SyntheticConfig(w_background=0, w_topic=0, w_bigram=0, w_new_entity=0, w_repeat_entity=1)
    with pytest.raises(UserError, match="unknown option.*nope"):
        load_corpus("synthetic", nope=1)


def test_the_word_after_a_cue_is_drawn_from_the_cues_entities_by_popularity():
    cfg = SyntheticConfig(train_tokens=200_000, background_vocab=30, num_topics=2, topic_words=5, topic_skip_top=2,
                          entity_pool=20, w_cue=0.2, cue_words=4, mean_sentence_length=8)
    lang = language(cfg, seed=1)
    tok = lang.sample(cfg.train_tokens, np.random.default_rng(2))
    prev_cue = np.flatnonzero(tok[:-1] >= lang.cue0)
    nxt = tok[prev_cue + 1]
    word = nxt != lang.eos  # a cue that ends its sentence has no entity
    assert word.any() and ((nxt[word] >= lang.ent0) & (nxt[word] < lang.cue0)).all()
    cue, ent = tok[prev_cue[word]] - lang.cue0, nxt[word] - lang.ent0
    assert (lang.entity_cue[ent] == cue).all()  # always one of the cue's own entities
    observed = np.zeros(cfg.entity_pool)
    np.add.at(observed, ent, 1.0)
    expected = np.bincount(cue, minlength=cfg.cue_words)[lang.entity_cue] * lang.p_given_cue
    cells = expected > 5
    chi2 = (((observed - expected) ** 2)[cells] / expected[cells]).sum()
    assert cells.sum() >= 8 and chi2 / cells.sum() < 2.0, chi2 / cells.sum()
    # cue tokens appear in proportion to their entities' total popularity
    cues = np.bincount(tok[tok >= lang.cue0] - lang.cue0, minlength=cfg.cue_words)
    np.testing.assert_allclose(cues / cues.sum(), lang.p_cue, atol=0.02)


def test_cue_slots_match_a_sequential_walk():
    """Runs of adjacent cue draws alternate cue, entity, cue, ...; a slot after an emitted cue is its entity."""
    from fastbind.data.synthetic import CUE, _cue_slots

    rng = np.random.default_rng(0)
    comp = np.where(rng.random(2000) < 0.4, CUE, 0)
    adjacent = rng.random(2000) < 0.8
    adjacent[0] = False
    emits, forced = _cue_slots(comp, adjacent)
    want_e, want_f = np.zeros(2000, dtype=bool), np.zeros(2000, dtype=bool)
    for j in range(2000):
        want_f[j] = adjacent[j] and want_e[j - 1]
        want_e[j] = comp[j] == CUE and not want_f[j]
    assert np.array_equal(emits, want_e) and np.array_equal(forced, want_f)
