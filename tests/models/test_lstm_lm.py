import pytest
import torch
import torch.nn.functional as F

from fastbind import HebbianSoftmax
from fastbind.models.lstm_lm import LMConfig, LSTMLM, detach_state


def make(**kw):
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=50, emb_dim=16, hidden=16, **kw)
    return LSTMLM(cfg)


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
    m = LSTMLM(LMConfig(vocab_size=30, emb_dim=8, hidden=12, tied=False))
    assert m.head.weight is not m.embedding.weight and m(torch.zeros(1, 3, dtype=torch.long)).hidden.shape[-1] == 12
    m = LSTMLM(LMConfig(vocab_size=30, emb_dim=8, hidden=12, tied=True))
    assert m.head.weight is m.embedding.weight and m(torch.zeros(1, 3, dtype=torch.long)).hidden.shape[-1] == 8


def test_defaults_are_the_measured_ones():
    # docs/RESULTS.md, PTB screen: untied, T = 100, γ = 0.05 (the paper's defaults were tied, 500, 0.25).
    cfg = LMConfig()
    assert (cfg.tied, cfg.T, cfg.gamma, cfg.objective) == (False, 100, 0.05, "l2")
    head = HebbianSoftmax(4, 3)
    assert (head.T, head.gamma, head.objective) == (100, 0.05, "l2")


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="vocab_size"):
        LSTMLM(LMConfig())
    with pytest.raises(ValueError, match="head"):
        LSTMLM(LMConfig(vocab_size=5, head="adaptive"))
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


# --------------------------------------------------------------------------- arch=fwm


def fwm_model(**kw) -> LSTMLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=30, arch="fwm", emb_dim=12, hidden=12, fwm_size=4, fwm_hops=2, input_dropout=0.0,
               dropout=0.0)
    return LSTMLM(LMConfig(**{**cfg, **kw}))


def test_fwm_state_carries_the_fast_weights_and_chunks_equal_one_pass():
    m = fwm_model().eval()
    x = torch.randint(0, 30, (3, 17))
    whole = m(x)
    h, c, fw = whole.state
    assert h.shape == c.shape == (1, 3, 12) and fw.shape == (3, 4, 4, 4)
    assert whole.fwm_norm.shape == (3, 17)
    a = m(x[:, :6])
    b = m(x[:, 6:], detach_state(a.state))
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), whole.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.state[2], fw, rtol=0, atol=1e-6)
    zero = m(x, m.init_state(3))
    torch.testing.assert_close(zero.logits, whole.logits, rtol=0, atol=0)


def test_fwm_adds_the_memory_read_to_the_lstm_output():
    m = fwm_model(fwm_residual=True).eval()
    x = torch.randint(0, 30, (2, 5))
    with torch.no_grad():
        out = m(x)
        z, _ = m.lstm(m.embedding(x))
        read = m.fwm(z).out - z  # what the memory adds
    torch.testing.assert_close(out.hidden, z + read, rtol=0, atol=1e-6)
    assert float(read.abs().max()) > 0
    H = 12  # the authors' cell starts its forget gate at +1
    b_ih, b_hh = m.lstm.bias_ih_l0.detach(), m.lstm.bias_hh_l0.detach()
    assert torch.equal(b_ih[H:2 * H], torch.ones(H)) and float(b_hh[H:2 * H].abs().max()) == 0


def test_fwm_state_of_the_wrong_arity_is_refused():
    m = fwm_model()
    x = torch.randint(0, 30, (2, 5))
    lstm_only = LSTMLM(LMConfig(vocab_size=30, emb_dim=12, hidden=12))
    with pytest.raises(ValueError, match=r"\(h, c, F\)"):
        m(x, lstm_only.init_state(2))
    with pytest.raises(ValueError, match=r"\(h, c\)"):
        lstm_only(x, m.init_state(2))
    with pytest.raises(ValueError, match="arch"):
        LSTMLM(LMConfig(vocab_size=30, arch="gru"))


# --------------------------------------------------------------------------- softmax=adaptive


def adaptive_model(**kw) -> LSTMLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, emb_dim=12, hidden=12, softmax="adaptive", cutoffs=(5, 20), div_value=2.0,
               input_dropout=0.0, dropout=0.0)
    return LSTMLM(LMConfig(**{**cfg, **kw}))


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


def test_fwm_model_gradients_match_finite_differences():
    torch.manual_seed(5)
    m = LSTMLM(LMConfig(vocab_size=7, arch="fwm", emb_dim=3, hidden=3, fwm_size=2, fwm_hops=2,
                        input_dropout=0.0, dropout=0.0)).double()
    m.fwm.chunk = 2  # two blocks over the 4 steps
    x, y = torch.randint(0, 7, (2, 4)), torch.randint(0, 7, (2, 4))
    names = [n for n, _ in m.named_parameters()]

    def loss(*params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (x,), {"targets": y})
        return out.nll.sum() + out.state[2].pow(2).sum()

    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-6)
