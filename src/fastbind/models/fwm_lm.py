"""FWM-LSTM language model (``arch=fwm``): an LSTM with a Fast Weight Memory on its output.

Schlag et al. 2021: a :class:`~fastbind.layers.fast_weights.FastWeightMemory` reads the last
LSTM layer's output; the read is added to that output (``fwm.residual``) or replaces it, and is
never fed back into the LSTM. The state carries the fast weights as a third tensor,
``(h, c, F)``, and the LSTM's forget-gate bias starts at 1 as in the authors' cell. Its
settings are the ``lstm`` section (:class:`~fastbind.models.lstm_lm.LSTMConfig`) and the ``fwm``
section (:class:`FWMConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from fastbind.errors import BadSetting
from fastbind.layers.fast_weights import FastWeightMemory
from fastbind.models.language_model import LanguageModel, LMOutput, State
from fastbind.models.lstm_lm import LSTMConfig, lstm_zero_state, single_bias

if TYPE_CHECKING:
    from fastbind.models.registry import ModelConfig

__all__ = ["FWMConfig", "FWMLSTMLM"]


@dataclass
class FWMConfig:
    """The ``fwm`` section: the Fast Weight Memory of ``arch=fwm``."""

    size: int = 32  # s = r = t of the fast-weight tensor
    hops: int = 3  # sequential reads
    residual: bool = True  # add the read to the LSTM output (False: the output is the read alone)
    proj_bias: Literal["zero", "torch"] = "zero"  # write/read projections' biases: zero, or nn.Linear's U(±1/√hidden) (the authors')

    def __post_init__(self) -> None:
        for name in ("size", "hops"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        if self.proj_bias not in ("zero", "torch"):
            raise BadSetting("proj_bias", f"{self.proj_bias!r} is not one of zero, torch")


class FWMLSTMLM(LanguageModel):
    """LSTM language model with a Fast Weight Memory between the LSTM and the output layer."""

    def __init__(self, model: ModelConfig, lstm: LSTMConfig, fwm: FWMConfig) -> None:
        super().__init__(model)
        self.lstm_cfg, self.fwm_cfg = lstm, fwm
        H = lstm.hidden
        self.lstm = nn.LSTM(model.emb_dim, H, num_layers=lstm.layers, batch_first=True)
        self.fwm = FastWeightMemory(H, fwm.size, fwm.size, fwm.size, fwm.hops, residual=fwm.residual,
                                    proj_bias=fwm.proj_bias)
        if lstm.bias == "single":
            single_bias(self.lstm)
        else:
            with torch.no_grad():  # the authors' cell adds 1 to the forget gate's pre-activation
                for k in range(lstm.layers):
                    getattr(self.lstm, f"bias_ih_l{k}")[H:2 * H].fill_(1.0)
                    getattr(self.lstm, f"bias_hh_l{k}")[H:2 * H].zero_()
        self.norm = nn.LayerNorm(H) if lstm.layer_norm else nn.Identity()
        self._build_output(H)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero state ``(h0, c0, F0)``: ``(layers, B, hidden)`` twice and empty fast weights ``(B, s, r, t)``."""
        p = next(self.parameters())
        return *lstm_zero_state(self.lstm_cfg, batch_size, p, device), self.fwm.init_state(
            batch_size, device or p.device, p.dtype)

    def forward(self, x: torch.Tensor, state: State | None = None, targets: torch.Tensor | None = None) -> LMOutput:
        """As :meth:`LSTMLM.forward`; the output also holds ``fwm_norm (B, L)``, ‖F‖ before each clip."""
        e = self._embed(x, self.lstm_cfg.input_dropout)  # (B, L, emb)
        if state is not None and len(state) != 3:
            raise ValueError(f"state must be (h, c, F), got {len(state)} tensors")
        out, hc = self.lstm(e, None if state is None else (state[0], state[1]))  # (B, L, hidden)
        out, fw, norm = self.fwm(out, None if state is None else state[2])  # (B, L, hidden)
        return self._readout(self.norm(out), (*hc, fw), targets, self.lstm_cfg.dropout, norm)
