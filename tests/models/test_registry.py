"""The model registry: arch picks a family, old keys and old saved configs still reach their settings."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from fastbind.errors import UserError
from fastbind.lm import LMTrainConfig
from fastbind.models.fwm_lm import FWMConfig, FWMLSTMLM
from fastbind.models.language_model import LanguageModel
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.registry import FAMILIES, Family, ModelConfig, build_lm
from fastbind.recipes.catbabi import CatbAbIConfig
from fastbind.training.config import from_dict, parse_cli, to_dict


def sections(arch: str = "lstm", **model) -> SimpleNamespace:
    return SimpleNamespace(model=ModelConfig(arch=arch, emb_dim=8, **model), lstm=LSTMConfig(hidden=12),
                           fwm=FWMConfig(size=3, hops=2))


def test_arch_picks_the_family_and_its_sections():
    lstm, fwm = build_lm(sections("lstm"), 30), build_lm(sections("fwm"), 30)
    assert type(lstm) is LSTMLM and type(fwm) is FWMLSTMLM
    assert fwm.fwm.s == 3 and fwm.lstm.hidden_size == 12 and fwm.cfg.vocab_size == 30
    with pytest.raises(UserError, match="arch=fwm is not supported here"):
        build_lm(SimpleNamespace(model=ModelConfig(arch="fwm"), lstm=LSTMConfig()), 30)


def test_parameter_layout_is_the_one_of_saved_runs():
    # The state_dict keys (and the optimizer's parameter order) of runs saved before the families
    # were split: embedding, LSTM, memory, LayerNorm, tied projection, output layer.
    torch.manual_seed(0)
    m = build_lm(SimpleNamespace(model=ModelConfig(arch="fwm", emb_dim=8, tied=True, head="hebbian"),
                                 lstm=LSTMConfig(hidden=12, layer_norm=True), fwm=FWMConfig(size=3, hops=2)), 30)
    lstm = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    fwm = ["fwm.W_write.weight", "fwm.W_write.bias", "fwm.W_read.weight", "fwm.W_read.bias", "fwm.out.weight",
           "fwm.out.bias"]
    tail = ["norm.weight", "norm.bias", "proj.weight", "proj.bias"]
    assert list(m.state_dict()) == ["embedding.weight", *lstm, *fwm, *tail, "head.weight", "head.bias", "head.counts"]
    assert [n for n, _ in m.named_parameters()] == ["embedding.weight", *lstm, *fwm, *tail, "head.bias"]
    assert m.head.weight is m.embedding.weight


def test_every_model_key_users_type_still_works():
    cfg, _ = parse_cli(["arch=fwm", "hidden=32", "emb_dim=16", "head=hebbian", "T=5", "gamma=0.5", "tied=true",
                        "objective=ip", "softmax=full", "div_value=2", "cutoffs=[3,7]", "model.fwm_size=4",
                        "model.fwm_hops=2", "model.fwm_residual=false", "model.layers=2", "model.dropout=0.1",
                        "model.input_dropout=0.2", "model.layer_norm=true"], LMTrainConfig)
    assert (cfg.model.arch, cfg.model.emb_dim, cfg.model.head, cfg.model.T, cfg.model.gamma) == ("fwm", 16, "hebbian",
                                                                                                 5, 0.5)
    assert (cfg.model.tied, cfg.model.objective, cfg.model.div_value, cfg.model.cutoffs) == (True, "ip", 2.0, (3, 7))
    assert cfg.lstm == LSTMConfig(hidden=32, layers=2, input_dropout=0.2, dropout=0.1, layer_norm=True)
    assert cfg.fwm == FWMConfig(size=4, hops=2, residual=False)
    again, _ = parse_cli(["model.hidden=24", "lstm.layers=3", "fwm.size=5"], LMTrainConfig)
    assert (again.lstm.hidden, again.lstm.layers, again.fwm.size) == (24, 3, 5)
    cb, _ = parse_cli(["arch=lstm", "hidden=16", "emb_dim=8", "model.fwm_size=4", "model.fwm_residual=true"],
                      CatbAbIConfig)
    assert (cb.model.arch, cb.lstm.hidden, cb.model.emb_dim, cb.fwm.size, cb.fwm.residual) == ("lstm", 16, 8, 4, True)


@pytest.mark.parametrize("cls", [LMTrainConfig, CatbAbIConfig])
def test_configs_saved_with_one_model_section_load(cls):
    # config.json and checkpoint configs written before the split: every setting under "model".
    old = {"model": {"vocab_size": 0, "arch": "fwm", "emb_dim": 16, "hidden": 24, "layers": 2, "input_dropout": 0.1,
                     "dropout": 0.2, "layer_norm": True, "tied": False, "head": "hebbian", "gamma": 0.2, "T": 7,
                     "objective": "l2", "fwm_size": 4, "fwm_hops": 2, "fwm_residual": False, "softmax": "full",
                     "cutoffs": [], "div_value": 4.0, "memorize_tails": True}}
    cfg = from_dict(cls, old)
    assert cfg.model == ModelConfig(arch="fwm", emb_dim=16, head="hebbian", gamma=0.2, T=7)
    assert cfg.lstm == LSTMConfig(hidden=24, layers=2, input_dropout=0.1, dropout=0.2, layer_norm=True)
    assert cfg.fwm == FWMConfig(size=4, hops=2, residual=False)
    assert from_dict(cls, to_dict(cfg)) == cfg


@dataclass
class BagConfig:
    scale: float = 1.0


class BagLM(LanguageModel):
    """A toy family (each position sees its own embedding, scaled): what a new family adds."""

    def __init__(self, model: ModelConfig, bag: BagConfig) -> None:
        super().__init__(model)
        self.scale = bag.scale
        self._build_output(model.emb_dim)

    def init_state(self, batch_size, device=None):
        return ()

    def forward(self, x, state=None, targets=None):
        return self._readout(self.scale * self._embed(x, 0.0), (), targets, 0.0)


def test_a_new_family_is_a_class_a_section_and_an_entry(monkeypatch):
    monkeypatch.setitem(FAMILIES, "bag", Family(BagLM, ("bag",)))
    cfg = SimpleNamespace(model=ModelConfig(arch="bag", emb_dim=6, head="hebbian", T=5, gamma=0.5),
                          bag=BagConfig(scale=2.0))
    m = build_lm(cfg, 11)
    x, y = torch.randint(0, 11, (2, 3)), torch.randint(0, 11, (2, 3))
    out = m(x, targets=y)
    torch.testing.assert_close(out.hidden, 2.0 * m.embedding(x))
    m.memorize(out.hidden.detach(), y)
    assert int(m.head.counts.sum()) == 6
