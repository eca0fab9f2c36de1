import pytest
import torch

from fastbind import HebbianSoftmax
from fastbind.models.lstm_lm import LMConfig, LSTMLM, detach_state


def make(**kw):
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=50, emb_dim=16, hidden=16, **kw)
    return LSTMLM(cfg)


def test_shapes_and_tying():
    m = make()
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
    m = make(head="hebbian", gamma=0.1, T=10)
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


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="vocab_size"):
        LSTMLM(LMConfig())
    with pytest.raises(ValueError, match="head"):
        LSTMLM(LMConfig(vocab_size=5, head="adaptive"))
    with pytest.raises(ValueError, match="batch, length"):
        make()(torch.zeros(4, dtype=torch.long))
