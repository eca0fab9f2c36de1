"""The FWM-LSTM family (arch=fwm): state, the memory's read, the authors' forget gate, gradients."""

import pytest
import torch

from fastbind.models.fwm_lm import FWMConfig, FWMLSTMLM
from fastbind.models.language_model import detach_state
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.registry import ModelConfig


def fwm_model(residual: bool = True, **lstm) -> FWMLSTMLM:
    torch.manual_seed(0)
    return FWMLSTMLM(ModelConfig(vocab_size=30, arch="fwm", emb_dim=12),
                     LSTMConfig(**{"hidden": 12, "input_dropout": 0.0, "dropout": 0.0, **lstm}),
                     FWMConfig(size=4, hops=2, residual=residual))


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
    m = fwm_model(residual=True).eval()
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
    lstm_only = LSTMLM(ModelConfig(vocab_size=30, emb_dim=12), LSTMConfig(hidden=12))
    with pytest.raises(ValueError, match=r"\(h, c, F\)"):
        m(x, lstm_only.init_state(2))
    with pytest.raises(ValueError, match=r"\(h, c\)"):
        lstm_only(x, m.init_state(2))
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(vocab_size=30, arch="gru")


def test_fwm_model_gradients_match_finite_differences():
    torch.manual_seed(5)
    m = FWMLSTMLM(ModelConfig(vocab_size=7, arch="fwm", emb_dim=3),
                  LSTMConfig(hidden=3, input_dropout=0.0, dropout=0.0), FWMConfig(size=2, hops=2)).double()
    m.fwm.chunk = 2  # two blocks over the 4 steps
    x, y = torch.randint(0, 7, (2, 4)), torch.randint(0, 7, (2, 4))
    names = [n for n, _ in m.named_parameters()]

    def loss(*params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (x,), {"targets": y})
        return out.nll.sum() + out.state[2].pow(2).sum()

    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-6)
