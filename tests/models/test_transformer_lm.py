"""arch=transformer: causality, rotary positions, sliding-window evaluation against full-context scoring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastbind.buckets import BucketedNLL
from fastbind.errors import BadSetting
from fastbind.evaluation import collect_stream, evaluate, window_spans
from fastbind.models.registry import ModelConfig, TransformerConfig
from fastbind.models.transformer_lm import TransformerLM, rotary_tables

V = 40


def make(seed: int = 0, model: dict | None = None, **tf) -> TransformerLM:
    torch.manual_seed(seed)
    settings = {"context": 32, "heads": 2, "dropout": 0.0, **tf}
    return TransformerLM(ModelConfig(vocab_size=V, emb_dim=16, **(model or {})), TransformerConfig(**settings)).eval()


@pytest.mark.parametrize("tf", [{}, {"positions": "learned"}, {"mlp": "swiglu", "blocks": 3},
                                {"width": 24, "bias": True}])
def test_a_change_at_t_changes_no_output_before_t(tf):
    m = make(**tf)
    x = torch.randint(0, V, (2, 20))
    t = 11
    x2 = x.clone()
    x2[:, t] = (x[:, t] + 1) % V
    a, b = m(x), m(x2)
    torch.testing.assert_close(a.logits[:, :t], b.logits[:, :t], rtol=0, atol=0)
    torch.testing.assert_close(a.hidden[:, :t], b.hidden[:, :t], rtol=0, atol=0)
    assert not torch.allclose(a.logits[:, t], b.logits[:, t])  # it does change position t


def test_shapes_state_and_hidden_is_the_final_norm_output():
    m = make()
    x = torch.randint(0, V, (3, 9))
    out = m(x, targets=torch.randint(0, V, (3, 9)))
    assert out.logits.shape == (3, 9, V) and out.hidden.shape == (3, 9, 16) and out.state == ()
    assert m.init_state(3) == () and m.recurrent is False
    torch.testing.assert_close(out.logits, F.linear(out.hidden, m.head.weight, m.head.bias))
    # the hidden vector is the final LayerNorm's output: zero mean and unit variance per position
    torch.testing.assert_close(out.hidden.mean(-1), torch.zeros(3, 9), atol=1e-5, rtol=0)


def test_nll_is_the_cross_entropy_of_the_logits():
    m = make()
    x, y = torch.randint(0, V, (2, 7)), torch.randint(0, V, (2, 7))
    out = m(x, targets=y)
    ref = F.cross_entropy(out.logits.reshape(-1, V), y.reshape(-1), reduction="none").view(2, 7)
    torch.testing.assert_close(out.nll, ref)


def test_rotary_attention_depends_only_on_relative_positions():
    # rotating q at position m and k at position n gives a dot product that depends on m - n only
    cos, sin = rotary_tables(20, 8)
    from fastbind.models.transformer_lm import _rotate
    q, k = torch.randn(8), torch.randn(8)
    def dot(m, n):
        qm = _rotate(q.view(1, 1, 1, 8), cos[m : m + 1], sin[m : m + 1]).flatten()
        kn = _rotate(k.view(1, 1, 1, 8), cos[n : n + 1], sin[n : n + 1]).flatten()
        return float(qm @ kn)
    assert dot(5, 2) == pytest.approx(dot(13, 10), abs=1e-5)
    assert dot(0, 0) == pytest.approx(float(q @ k), abs=1e-5)


def test_context_and_state_are_checked():
    m = make()
    with pytest.raises(ValueError, match="longer than the context of 32"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="no state"):
        m(torch.zeros(1, 3, dtype=torch.long), (torch.zeros(1),))
    with pytest.raises(ValueError, match="batch, length"):
        m(torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("key,value,match", [("blocks", 0, "blocks"), ("heads", 0, "heads"),
                                             ("context", 0, "context"), ("positions", "alibi", "positions"),
                                             ("mlp", "relu", "mlp"), ("mlp_ratio", 0.0, "mlp_ratio"),
                                             ("dropout", 1.0, "dropout"), ("width", -1, "width")])
def test_bad_settings_name_the_key(key, value, match):
    with pytest.raises(BadSetting, match=match):
        TransformerConfig(**{key: value})


def test_heads_must_divide_the_width_and_rotary_needs_even_heads():
    with pytest.raises(BadSetting, match="do not divide"):
        make(heads=3)
    with pytest.raises(BadSetting, match="even head width"):
        make(heads=16)  # head width 1


@pytest.mark.parametrize("n,window,stride", [(1, 4, 2), (7, 4, 2), (8, 4, 4), (30, 8, 3), (5, 10, 10), (9, 3, 1)])
def test_window_spans_score_every_target_once_with_the_stated_context(n, window, stride):
    spans = window_spans(n, window, stride)
    scored = [t for a, c, b in spans for t in range(c, b)]
    assert scored == list(range(n))
    for a, c, b in spans:
        assert 0 <= a <= c < b <= n and b - a <= window
        for t in range(c, b):  # target t sees inputs a..t
            assert t - a >= min(t, window - stride)
    with pytest.raises(ValueError, match="stride"):
        window_spans(5, 4, 5)


def _full_context_scores(m, tokens):
    out = m(tokens[:-1].view(1, -1), targets=tokens[1:].view(1, -1))
    return out.hidden[0], -out.nll[0]


@pytest.mark.parametrize("model", [{}, {"softmax": "adaptive", "cutoffs": (10, 20)}])
def test_windowed_evaluation_equals_full_context_scoring_when_the_window_covers_the_text(model):
    m = make(model=model)
    tokens = torch.randint(0, V, (30,))
    H, Y, LP = collect_stream(m, tokens, bptt=7, device=torch.device("cpu"), window=32, stride=16)
    h_ref, lp_ref = _full_context_scores(m, tokens)
    torch.testing.assert_close(LP, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(H, h_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(Y, tokens[1:])


def test_windowed_evaluation_scores_each_target_with_its_window_context():
    m = make()
    tokens = torch.randint(0, V, (61,))
    window, stride = 16, 5
    _, _, LP = collect_stream(m, tokens, bptt=7, device=torch.device("cpu"), window=window, stride=stride)
    ref = torch.empty(60)
    for a, c, b in window_spans(60, window, stride):  # slow: one forward per window, read by hand
        _, lp = _full_context_scores(m, tokens[a : b + 1])
        ref[c:b] = lp[c - a :]
    torch.testing.assert_close(LP, ref, rtol=1e-5, atol=1e-5)
    # a target late in the text really was scored with a truncated context (not the whole prefix)
    _, lp_full = _full_context_scores(make(context=64), tokens)
    assert not torch.allclose(lp_full[window:], LP[window:], atol=1e-4)
    torch.testing.assert_close(lp_full[:window], LP[:window], rtol=1e-5, atol=1e-5)


def test_batched_windowed_evaluate_equals_the_per_row_stream():
    m = make()
    tokens = torch.randint(0, V, (81,))
    acc = BucketedNLL.from_counts(torch.ones(V), (10,))
    res = evaluate(m, tokens, batch_size=2, bptt=5, acc=acc, device=torch.device("cpu"), window=12, stride=4)
    rows = tokens[:80].view(2, 40)
    nll = 0.0
    for r in rows:
        _, _, lp = collect_stream(m, r, bptt=5, device=torch.device("cpu"), window=12, stride=4)
        nll -= float(lp.double().sum())
    assert res["tokens"] == 78
    assert res["ppl"] == pytest.approx(math.exp(nll / 78), rel=1e-5)


def test_hebbian_head_memorizes_the_final_norm_output():
    m = make(model={"head": "hebbian", "gamma": 0.1, "T": 10})
    out = m(torch.randint(0, V, (2, 4)))
    m.memorize(out.hidden.detach(), torch.full((2, 4), 7))
    torch.testing.assert_close(m.head.weight[7], out.hidden.detach().reshape(-1, 16).mean(0))
