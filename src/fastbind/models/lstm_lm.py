"""Word-level LSTM language model (``arch=lstm``) with a softmax or Hebbian Softmax output layer.

The paper's language models (Rae et al. 2018, section 4.2): embedding → input dropout →
1..n LSTM layers (optional LayerNorm on the output) → output dropout → output layer, input
and output embeddings optionally tied. ``forward`` returns the logits, the new recurrent
state ``(h, c)`` and, for :meth:`HebbianSoftmax.memorize` and the evaluation-time memories,
the hidden states *before* output dropout. Its settings are the ``lstm`` section
(:class:`LSTMConfig`); the embedding and the output layer are the ``model`` section's
(:class:`fastbind.models.registry.ModelConfig`, shared by every family).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from fastbind.errors import BadSetting
from fastbind.models.language_model import LanguageModel, LMOutput, State

if TYPE_CHECKING:
    from fastbind.models.registry import ModelConfig

__all__ = ["LSTMConfig", "LSTMLM", "lstm_zero_state", "single_bias"]


@dataclass
class LSTMConfig:
    """The ``lstm`` section: the recurrent network of ``arch=lstm`` (and of ``arch=fwm``)."""

    hidden: int = 256
    layers: int = 1
    input_dropout: float = 0.3  # on embeddings, before the LSTM (the paper's "input dropout")
    dropout: float = 0.3  # on LSTM outputs, before the output layer
    layer_norm: bool = False  # LayerNorm on the LSTM output
    # torch: nn.LSTM's two bias vectors, each U(±1/√hidden); single: one bias vector at 0 with the
    # forget gate's at 1 (the FWM authors' cell, which adds 1 to the forget gate in its forward)
    bias: Literal["torch", "single"] = "torch"

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        if self.bias not in ("torch", "single"):
            raise BadSetting("bias", f"{self.bias!r} is not one of torch, single")
        for name in ("input_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:  # 1 would drop everything
                raise BadSetting(name, f"must lie in [0, 1), got {getattr(self, name)}")


def lstm_zero_state(lstm: LSTMConfig, batch_size: int, like: torch.Tensor,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero ``(h0, c0)``, each ``(layers, B, hidden)``, of ``like``'s dtype (and device unless given)."""
    z = torch.zeros(lstm.layers, batch_size, lstm.hidden, device=device or like.device, dtype=like.dtype)
    return z, z.clone()


def single_bias(lstm: nn.LSTM, forget: float = 1.0) -> None:
    """Give ``lstm`` one trainable bias vector per layer: zero, its forget gate at ``forget``.

    ``nn.LSTM`` adds two bias vectors (``bias_ih``, ``bias_hh``), so each gate's bias moves
    twice as fast under Adam as a single one would. Here ``bias_ih`` holds the bias and
    ``bias_hh`` stays at zero, frozen (``requires_grad=False``).
    """
    H = lstm.hidden_size
    with torch.no_grad():
        for k in range(lstm.num_layers):
            b_ih, b_hh = getattr(lstm, f"bias_ih_l{k}"), getattr(lstm, f"bias_hh_l{k}")
            b_ih.zero_()
            b_ih[H:2 * H].fill_(forget)  # gate order i, f, g, o
            b_hh.zero_()
            b_hh.requires_grad_(False)


class LSTMLM(LanguageModel):
    """LSTM language model; the output layer as in :class:`LanguageModel`."""

    def __init__(self, model: ModelConfig, lstm: LSTMConfig) -> None:
        super().__init__(model)
        self.lstm_cfg = lstm
        self.lstm = nn.LSTM(model.emb_dim, lstm.hidden, num_layers=lstm.layers, batch_first=True)
        if lstm.bias == "single":
            single_bias(self.lstm)
        self.norm = nn.LayerNorm(lstm.hidden) if lstm.layer_norm else nn.Identity()
        self._build_output(lstm.hidden)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero recurrent state ``(h0, c0)``, each ``(layers, B, hidden)``."""
        return lstm_zero_state(self.lstm_cfg, batch_size, next(self.parameters()), device)

    def forward(self, x: torch.Tensor, state: State | None = None, targets: torch.Tensor | None = None) -> LMOutput:
        """Next-token logits for token ids ``x (B, L)``; ``state`` carries across chunks.

        With ``targets (B, L)`` the output also holds ``nll (B, L)``; an adaptive softmax then
        computes only what the targets need and returns ``logits=None``.
        """
        e = self._embed(x, self.lstm_cfg.input_dropout)  # (B, L, emb)
        if state is not None and len(state) != 2:
            raise ValueError(f"state must be (h, c), got {len(state)} tensors")
        out, hc = self.lstm(e, None if state is None else (state[0], state[1]))  # (B, L, hidden)
        return self._readout(self.norm(out), hc, targets, self.lstm_cfg.dropout)
