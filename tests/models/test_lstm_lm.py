import pytest
import torch
import torch.nn.functional as F

from fastbind import HebbianSoftmax
from fastbind.models.language_model import detach_state
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.registry import ModelConfig

LSTM_KEYS = {"hidden", "layers", "input_dropout", "dropout", "layer_norm"}


def lstm_lm(**kw) -> LSTMLM:
    """An LSTMLM from the keys of both sections (model and lstm), as a command line sets them."""
    return LSTMLM(ModelConfig(**{k: v for k, v in kw.items() if k not in LSTM_KEYS}),
                  LSTMConfig(**{k: v for k, v in kw.items() if k in LSTM_KEYS}))


def make(**kw):
    torch.manual_seed(0)
    return lstm_lm(vocab_size=50, emb_dim=16, hidden=16, **kw)


def test_shapes_and_tying():
    m = make(tied=True)
    out = m(torch.randint(0, 50, (3, 7)))
    assert out.logits.shape == (3, 7, 50) and out.hidden.shape == (3, 7, 16)
    assert out.state[0].shape == (1, 3, 16)
    assert m.head.weight is m.embedding.weight


@pytest.mark.parametrize("layers,layer_norm", [(1, False), (2, True)])
def test_chunked_with_carried_state_equals_one_pass(layers, layer_norm):
    m = make(layers=layers, layer_norm=layer_norm).eval()
    x = torch.randint(0, 50, (2, 12))
    whole = m(x)
    state, parts = None, []
    for s in range(0, 12, 5):
        o = m(x[:, s : s + 5], state)
        state = detach_state(o.state)
        parts.append(o.logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole.logits, rtol=1e-5, atol=1e-5)


def test_hebbian_head_memorizes_into_tied_embedding():
    m = make(head="hebbian", gamma=0.1, T=10, tied=True)
    assert isinstance(m.head, HebbianSoftmax)
    out = m(torch.randint(0, 50, (2, 4)))
    y = torch.full((2, 4), 7)
    m.memorize(out.hidden.detach(), y)
    torch.testing.assert_close(m.embedding.weight[7], out.hidden.detach().reshape(-1, 16).mean(0))
    assert int(m.head.counts[7]) == 8


def test_untied_and_projection():
    torch.manual_seed(0)
    m = lstm_lm(vocab_size=30, emb_dim=8, hidden=12, tied=False)
    assert m.head.weight is not m.embedding.weight and m(torch.zeros(1, 3, dtype=torch.long)).hidden.shape[-1] == 12
    m = lstm_lm(vocab_size=30, emb_dim=8, hidden=12, tied=True)
    assert m.head.weight is m.embedding.weight and m(torch.zeros(1, 3, dtype=torch.long)).hidden.shape[-1] == 8


def test_defaults_are_the_measured_ones():
    # docs/RESULTS.md, PTB screen: untied, T = 100, γ = 0.05 (the paper's defaults were tied, 500, 0.25).
    cfg = ModelConfig()
    assert (cfg.tied, cfg.T, cfg.gamma, cfg.objective) == (False, 100, 0.05, "l2")
    head = HebbianSoftmax(4, 3)
    assert (head.T, head.gamma, head.objective) == (100, 0.05, "l2")


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="vocab_size"):
        lstm_lm()
    with pytest.raises(ValueError, match="head"):
        lstm_lm(vocab_size=5, head="adaptive")
    with pytest.raises(ValueError, match="batch, length"):
        make()(torch.zeros(4, dtype=torch.long))


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_memorize_count_only_counts_without_touching_weights():
    m = make(head="hebbian", gamma=0.1, T=10, tied=False)
    out = m(torch.randint(0, 50, (2, 4)))
    y = torch.tensor([[3, 3, 5, 9], [3, 5, 5, 5]])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.memorize(out.hidden.detach(), y, count_only=True)
    after = m.state_dict()
    assert torch.equal(after["head.weight"], before["head.weight"])
    assert (int(after["head.counts"][3]), int(after["head.counts"][5]), int(after["head.counts"][9])) == (3, 4, 1)
    assert int(after["head.counts"].sum()) == 8
    # A later memorize treats the counted classes as seen: λ = max(n / (c + n), γ) = 3 / 6 for class 3.
    w3 = m.head.weight[3].clone()
    h = out.hidden.detach()
    m.memorize(h, y)
    mean3 = h[y == 3].mean(0)
    torch.testing.assert_close(m.head.weight[3], 0.5 * mean3 + 0.5 * w3)


def test_memorize_is_the_heads_update():
    a, b = make(head="hebbian", gamma=0.2, T=10), make(head="hebbian", gamma=0.2, T=10)
    out = a(torch.randint(0, 50, (2, 6)))
    y = torch.randint(0, 50, (2, 6))
    a.memorize(out.hidden.detach(), y)
    b.head.memorize(out.hidden.detach(), y)
    assert _states_equal(a.state_dict(), b.state_dict())
    assert not _states_equal(a.state_dict(), make(head="hebbian", gamma=0.2, T=10).state_dict())


@pytest.mark.parametrize("count_only", [False, True])
def test_memorize_is_a_no_op_for_softmax(count_only):
    m = make(head="softmax")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = m(torch.randint(0, 50, (2, 4)))
    m.memorize(out.hidden.detach(), torch.randint(0, 50, (2, 4)), count_only=count_only)
    assert _states_equal(m.state_dict(), before)


# --------------------------------------------------------------------------- softmax=adaptive


def adaptive_model(**kw) -> LSTMLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, emb_dim=12, hidden=12, softmax="adaptive", cutoffs=(5, 20), div_value=2.0,
               input_dropout=0.0, dropout=0.0)
    return lstm_lm(**{**cfg, **kw})


@pytest.mark.parametrize("head", ["softmax", "hebbian"])
def test_adaptive_nll_with_targets_equals_the_full_distribution(head):
    m = adaptive_model(head=head).eval()
    x, y = torch.randint(0, 40, (3, 9)), torch.randint(0, 40, (3, 9))
    with torch.no_grad():
        fast = m(x, targets=y)
        full = m(x)
    assert fast.logits is None and full.logits.shape == (3, 9, 40)
    torch.testing.assert_close(full.logits.exp().sum(-1), torch.ones(3, 9), rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.nll, -full.logits.gather(2, y.unsqueeze(2)).squeeze(2), rtol=0, atol=1e-5)
    # the softmax of the log-probabilities is the same distribution (what evaluators use)
    torch.testing.assert_close(F.log_softmax(full.logits, -1), full.logits, rtol=0, atol=1e-5)


def test_adaptive_memorize_moves_rows_only_for_a_hebbian_head():
    for head, moves in (("hebbian", True), ("softmax", False)):
        m = adaptive_model(head=head)
        before = m.head.tail[0][1].weight.detach().clone()
        x, y = torch.randint(0, 40, (2, 6)), torch.full((2, 6), 7)  # class 7: first tail cluster
        out = m(x, targets=y)
        m.memorize(out.hidden.detach(), y)
        assert (not torch.equal(m.head.tail[0][1].weight, before)) == moves
        assert int(m.head.counts[7]) == (12 if moves else 0)


def test_adaptive_memorize_tails_false_keeps_tail_rows():
    m = adaptive_model(head="hebbian", memorize_tails=False)
    before = m.head.tail[0][1].weight.detach().clone()
    head_before = m.head.head.weight[3].detach().clone()
    x, y = torch.randint(0, 40, (2, 6)), torch.tensor([[7] * 6, [3] * 6])  # a tail class and a head class
    m.memorize(m(x, targets=y).hidden.detach(), y)
    assert torch.equal(m.head.tail[0][1].weight, before)
    assert not torch.equal(m.head.head.weight[3], head_before)


def test_adaptive_settings_are_checked():
    with pytest.raises(ValueError, match="tied"):
        adaptive_model(tied=True)
    with pytest.raises(ValueError, match="cutoffs"):
        adaptive_model(cutoffs=())
    with pytest.raises(ValueError, match="objective"):
        adaptive_model(head="hebbian", objective="svm")
    with pytest.raises(ValueError, match="MbPA"):
        adaptive_model().output_layer()
