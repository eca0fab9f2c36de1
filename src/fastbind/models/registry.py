"""The language-model families: ``arch`` → the settings sections it reads + its model class.

Every family shares the ``model`` section (:class:`ModelConfig`: vocabulary, embedding width,
output layer) and reads its own sections of the recipe's config, named in its
:data:`FAMILIES` entry (``arch=lstm``: ``lstm``; ``arch=fwm``: ``lstm`` and ``fwm``). A recipe
config carries the ``model`` section and the sections of the families it can run;
:func:`build_lm` picks the family. A new family is a file in ``models/`` (its settings
section and a :class:`~fastbind.models.language_model.LanguageModel` subclass), an entry
here, and its section in the configs of the recipes that can run it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from fastbind.errors import BadSetting, UserError
from fastbind.models.fwm_lm import FWMConfig, FWMLSTMLM
from fastbind.models.language_model import LanguageModel
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.transformer_lm import TransformerConfig, TransformerLM

__all__ = ["FAMILIES", "Family", "FWMConfig", "LSTMConfig", "MODEL_RENAMED", "ModelConfig", "TransformerConfig",
           "build_lm", "default_bptt"]


class Family(NamedTuple):
    model: type[LanguageModel]  # called as model(ModelConfig, *sections)
    sections: tuple[str, ...]  # the recipe config's sections it reads, in its constructor's order
    bptt: int = 35  # the default training context (chunk length); 0: the family's ``context`` setting


FAMILIES: dict[str, Family] = {
    "lstm": Family(LSTMLM, ("lstm",)),
    "fwm": Family(FWMLSTMLM, ("lstm", "fwm")),  # a Fast Weight Memory on the LSTM output
    "transformer": Family(TransformerLM, ("transformer",), bptt=0),  # decoder-only, pre-norm
}

# Keys of the single model section of earlier versions (command lines, config.json, checkpoints),
# for a recipe config's RENAMED table.
MODEL_RENAMED: dict[str, str] = {
    "model.hidden": "lstm.hidden",
    "model.layers": "lstm.layers",
    "model.input_dropout": "lstm.input_dropout",
    "model.dropout": "lstm.dropout",
    "model.layer_norm": "lstm.layer_norm",
    "model.fwm_size": "fwm.size",
    "model.fwm_hops": "fwm.hops",
    "model.fwm_residual": "fwm.residual",
}

_OBJECTIVES = ("l2", "ip", "svm", "smax")


@dataclass
class ModelConfig:
    """The ``model`` section: what every family shares (``vocab_size`` is taken from the data when 0)."""

    vocab_size: int = 0
    arch: str = "lstm"  # the model family: lstm | fwm (an LSTM with a Fast Weight Memory on its output) | transformer
    emb_dim: int = 256
    tied: bool = False  # share embedding and output matrix; the default follows docs/RESULTS.md (PTB screen)
    head: Literal["softmax", "hebbian"] = "softmax"
    gamma: float | Literal["auto"] = 0.05  # Hebbian γ; auto = 1/N_min of the training counts
    T: int | Literal["auto"] = 100  # Hebbian T; auto = N_min × the run's epochs
    objective: Literal["l2", "ip", "svm", "smax"] = "l2"
    softmax: Literal["full", "adaptive"] = "full"  # adaptive: an adaptive softmax (Grave et al. 2017) as output layer
    cutoffs: tuple[int, ...] = ()  # softmax=adaptive: class ids where tail clusters start; () = from the counts
    div_value: float = 4.0  # softmax=adaptive: each tail cluster's projection is this much smaller
    memorize_tails: bool = True  # softmax=adaptive, head=hebbian: also memorize tail classes (False: head classes only)
    emb_init: Literal["uniform", "normal"] = "uniform"  # uniform: U(±0.1); normal: N(0, 1) (PyTorch's, the FWM authors')
    head_init: Literal["default", "xavier"] = "default"  # default: PyTorch's weight, zero bias; xavier: Xavier-normal, no bias (the FWM authors')

    def __post_init__(self) -> None:
        if self.vocab_size < 0:
            raise BadSetting("vocab_size", f"must be >= 0 (0: from the data), got {self.vocab_size}")
        if self.arch not in FAMILIES:
            raise BadSetting("arch", f"{self.arch!r} is not one of {', '.join(FAMILIES)}")
        if self.emb_dim < 1:
            raise BadSetting("emb_dim", f"must be >= 1, got {self.emb_dim}")
        for name, choices in (("head", ("softmax", "hebbian")), ("softmax", ("full", "adaptive")),
                              ("objective", _OBJECTIVES), ("emb_init", ("uniform", "normal")),
                              ("head_init", ("default", "xavier"))):
            if getattr(self, name) not in choices:
                raise BadSetting(name, f"{getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.gamma != "auto" and (isinstance(self.gamma, str) or not 0.0 < self.gamma <= 1.0):
            raise BadSetting("gamma", f"must lie in (0, 1] or be auto, got {self.gamma}")
        if self.T != "auto" and (isinstance(self.T, str) or self.T < 0):
            raise BadSetting("T", f"must be >= 0 (0: never memorize) or auto, got {self.T}")
        c = list(self.cutoffs)
        if c and (c[0] < 1 or any(b <= a for a, b in zip(c, c[1:]))):
            raise BadSetting("cutoffs", f"must be positive and increasing, got {c}")
        if not self.div_value > 0:
            raise BadSetting("div_value", f"must be > 0, got {self.div_value}")

    def check(self, vocab_size: int) -> None:
        """Settings that do not go together, and cutoffs beyond the vocabulary: one-line errors.

        Apart from ``__post_init__`` because it compares several keys (a command line sets
        them one at a time) and needs the vocabulary size.
        """
        if vocab_size <= 0:
            raise UserError(f"vocab_size must be set (> 0), got {vocab_size}")
        if self.head == "hebbian" and "auto" in (self.gamma, self.T):
            raise UserError("gamma/T 'auto' must be resolved from the training counts first (fastbind.lm.resolve_auto)")
        if self.head_init == "xavier" and (self.head != "softmax" or self.softmax != "full" or self.tied):
            raise UserError("head_init=xavier needs head=softmax, softmax=full and tied=false (a bias-free linear output layer)")
        if self.softmax != "adaptive":
            return
        if self.tied:
            raise UserError("tied=true needs softmax=full (an adaptive softmax has no (V, d) matrix to share)")
        if not self.cutoffs:
            raise UserError("softmax=adaptive needs cutoffs (fastbind.lm.resolve_auto sets them from the counts)")
        if self.cutoffs[-1] >= vocab_size:
            raise UserError(f"cutoffs {list(self.cutoffs)} must all lie below the vocabulary size ({vocab_size})")
        if self.objective not in ("l2", "ip"):
            raise UserError(f"softmax=adaptive supports objective l2 or ip, got {self.objective!r}")


def default_bptt(cfg: Any) -> int:
    """The training context of ``cfg``'s family when ``cfg.bptt`` is 0: 35 for the recurrent
    families (the paper's chunk), ``transformer.context`` for a transformer."""
    family = FAMILIES[cfg.model.arch]
    return family.bptt or getattr(cfg, family.sections[0]).context


def build_lm(cfg: Any, vocab_size: int) -> LanguageModel:
    """The untrained model of a recipe config for a vocabulary of ``vocab_size`` types.

    ``cfg`` has a ``model`` section (:class:`ModelConfig`) and the sections its family reads
    (``cfg.lstm``, ``cfg.fwm`` ...).

    Raises:
        UserError: settings that do not go together, or a family whose sections ``cfg`` lacks.
    """
    family = FAMILIES[cfg.model.arch]
    missing = [name for name in family.sections if not hasattr(cfg, name)]
    if missing:
        raise UserError(f"arch={cfg.model.arch} is not supported here (no {missing[0]!r} settings)")
    return family.model(replace(cfg.model, vocab_size=vocab_size), *(getattr(cfg, name) for name in family.sections))
