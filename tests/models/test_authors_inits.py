"""The FWM authors' initialisations as settings: each changes only what it names."""

from __future__ import annotations

import pytest
import torch

from fastbind.errors import UserError
from fastbind.models.fwm_lm import FWMConfig
from fastbind.models.lstm_lm import LSTMConfig
from fastbind.models.registry import ModelConfig, build_lm
from fastbind.recipes.catbabi import CatbAbIConfig


def _model(arch="fwm", model=None, lstm=None, fwm=None, seed=0):
    cfg = CatbAbIConfig(model=ModelConfig(arch=arch, emb_dim=32, **(model or {})),
                        lstm=LSTMConfig(hidden=32, input_dropout=0.0, dropout=0.0, **(lstm or {})),
                        fwm=FWMConfig(size=4, residual=False, **(fwm or {})))
    torch.manual_seed(seed)
    return build_lm(cfg, 500)


def test_default_is_unchanged_and_each_option_touches_only_its_part():
    base = _model().state_dict()
    # (emb_init=normal draws nothing after nn.Embedding's own N(0, 1), so the later modules' draws shift)
    touched = {
        ("model", "head_init", "xavier"): {"head.weight", "head.bias"},
        ("lstm", "bias", "single"): {"lstm.bias_ih_l0", "lstm.bias_hh_l0"},
        ("fwm", "proj_bias", "torch"): {"fwm.W_write.bias", "fwm.W_read.bias"},
    }
    for (section, key, value), names in touched.items():
        sd = _model(**{section: {key: value}}).state_dict()
        changed = {k for k in base if k not in sd or not torch.equal(base[k], sd[k])}
        assert changed == names, (key, changed)


def test_embedding_and_output_layer_initialisations():
    assert _model().embedding.weight.abs().max() <= 0.1
    w = _model(model={"emb_init": "normal"}).embedding.weight
    assert 0.95 < float(w.std()) < 1.05
    head = _model(model={"head_init": "xavier"}).head
    assert head.bias is None
    assert float(head.weight.std()) == pytest.approx((2 / (32 + 500)) ** 0.5, rel=0.05)


@pytest.mark.parametrize("bad", [{"head": "hebbian"}, {"tied": True}])
def test_xavier_head_needs_a_plain_untied_softmax(bad):
    with pytest.raises(UserError, match="head_init=xavier"):
        _model(model={"head_init": "xavier", **bad})


@pytest.mark.parametrize("arch", ["lstm", "fwm"])
def test_single_lstm_bias_is_one_trainable_vector_with_the_forget_gate_at_one(arch):
    m = _model(arch=arch, lstm={"bias": "single"})
    b_ih, b_hh = m.lstm.bias_ih_l0, m.lstm.bias_hh_l0
    assert torch.equal(b_ih[32:64], torch.ones(32)) and not b_ih[:32].any() and not b_ih[64:].any()
    assert not b_hh.any() and not b_hh.requires_grad
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.1)
    x = torch.randint(0, 500, (2, 7))
    torch.nn.functional.cross_entropy(m(x).logits.flatten(0, 1), x.flatten()).backward()
    opt.step()
    assert not b_hh.any() and b_hh.grad is None and b_ih.grad is not None


def test_the_torch_bias_keeps_the_forget_offset_of_the_fwm_family():
    b_ih, b_hh = _model().lstm.bias_ih_l0, _model().lstm.bias_hh_l0
    assert torch.equal(b_ih[32:64], torch.ones(32)) and not b_hh[32:64].any() and b_hh.requires_grad
