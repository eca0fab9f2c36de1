"""Decoder-only transformer language model (``arch=transformer``).

The usual modern shape: token embedding → (a projection when ``transformer.width`` differs from
``model.emb_dim``) → ``blocks`` pre-norm blocks, each ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``
with causal :func:`torch.nn.functional.scaled_dot_product_attention`, rotary (Su et al. 2021) or
learned positions and a GELU or SwiGLU MLP → a final LayerNorm → dropout → the output layer of
the ``model`` section (softmax or Hebbian, full or adaptive, optionally tied; see
:class:`~fastbind.models.language_model.LanguageModel`).

``LMOutput.hidden`` is the final norm's output (projected to ``emb_dim`` when tied and the
widths differ): the vector the output layer reads, which :meth:`memorize` and the
evaluation-time memories see.

A transformer has no state across chunks: ``init_state`` is ``()`` and every forward sees only
the tokens it is given (at most ``transformer.context``). Training reads chunks of ``bptt``
tokens (the training context); evaluation slides a window over the text so that every target is
scored once with a stated context (:func:`fastbind.evaluation.windows`).

Its settings are the ``transformer`` section (:class:`TransformerConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.errors import BadSetting
from fastbind.models.language_model import LanguageModel, LMOutput, State

if TYPE_CHECKING:
    from fastbind.models.registry import ModelConfig

__all__ = ["TransformerConfig", "TransformerLM", "mlp_hidden", "rotary_tables"]


@dataclass
class TransformerConfig:
    """The ``transformer`` section: the body of ``arch=transformer``."""

    blocks: int = 2
    heads: int = 4
    width: int = 0  # residual-stream width; 0 = model.emb_dim
    context: int = 128  # longest input (positions); the default training context (bptt=0)
    positions: Literal["rotary", "learned"] = "rotary"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_ratio: float = 4.0  # MLP hidden width ÷ width (swiglu: two input matrices of that width)
    dropout: float = 0.1  # on the embeddings, each block's residual branches and before the output layer
    attn_dropout: float = 0.0  # on the attention weights
    bias: bool = False  # biases in the blocks' linear layers

    def __post_init__(self) -> None:
        for name in ("blocks", "heads", "context"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        if self.width < 0:
            raise BadSetting("width", f"must be >= 1, or 0 for model.emb_dim, got {self.width}")
        if self.positions not in ("rotary", "learned"):
            raise BadSetting("positions", f"{self.positions!r} is not one of rotary, learned")
        if self.mlp not in ("gelu", "swiglu"):
            raise BadSetting("mlp", f"{self.mlp!r} is not one of gelu, swiglu")
        if not self.mlp_ratio > 0:
            raise BadSetting("mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise BadSetting(name, f"must lie in [0, 1), got {getattr(self, name)}")

    def check(self, emb_dim: int) -> int:
        """The residual width for ``emb_dim``; BadSetting when the heads do not divide it (or
        rotary positions get an odd head width)."""
        width = self.width or emb_dim
        if width % self.heads:
            raise BadSetting("heads", f"{self.heads} heads do not divide the width {width}")
        if self.positions == "rotary" and (width // self.heads) % 2:
            raise BadSetting("heads", f"rotary positions need an even head width, got {width // self.heads}")
        return width


def mlp_hidden(width: int, ratio: float) -> int:
    """The MLP's hidden width: ``round(ratio · width)``, at least 1."""
    return max(1, round(ratio * width))


def rotary_tables(length: int, head_dim: int, base: float = 10000.0,
                  device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(length, head_dim)``: the rotation angles ``t · base^(−2i/head_dim)``
    of position ``t``, each repeated for the two halves the rotation pairs (dimension ``i`` with
    ``i + head_dim/2``)."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x (B, H, L, hd)``: pairs ``(x_i, x_{i+hd/2})`` rotated by each position's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Block(nn.Module):
    """One pre-norm block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, cfg: TransformerConfig) -> None:
        super().__init__()
        self.heads, self.cfg = cfg.heads, cfg
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=cfg.bias)
        self.attn_out = nn.Linear(width, width, bias=cfg.bias)
        self.norm2 = nn.LayerNorm(width)
        hidden = mlp_hidden(width, cfg.mlp_ratio)
        self.mlp_in = nn.Linear(width, (2 if cfg.mlp == "swiglu" else 1) * hidden, bias=cfg.bias)
        self.mlp_out = nn.Linear(hidden, width, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, L, W = x.shape
        p = self.cfg.dropout if self.training else 0.0
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = _rotate(q, *rotary), _rotate(k, *rotary)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.cfg.attn_dropout if self.training else 0.0)
        x = x + F.dropout(self.attn_out(a.transpose(1, 2).reshape(B, L, W)), p, self.training)
        u = self.mlp_in(self.norm2(x))
        if self.cfg.mlp == "swiglu":
            gate, up = u.chunk(2, dim=-1)
            u = F.silu(gate) * up
        else:
            u = F.gelu(u)
        return x + F.dropout(self.mlp_out(u), p, self.training)


class TransformerLM(LanguageModel):
    """Decoder-only transformer language model; the output layer as in :class:`LanguageModel`.

    Initialisation: the blocks' linear layers N(0, 0.02), the residual branches' output layers
    N(0, 0.02/√(2·blocks)) (GPT-2), learned positions N(0, 0.02); the embedding and the output
    layer as for every family.
    """

    recurrent = False

    def __init__(self, model: ModelConfig, transformer: TransformerConfig) -> None:
        super().__init__(model)
        self.tf_cfg = transformer
        width = transformer.check(model.emb_dim)
        self.width, self.context = width, transformer.context
        self.inp = nn.Linear(model.emb_dim, width, bias=False) if width != model.emb_dim else nn.Identity()
        self.pos = nn.Embedding(transformer.context, width) if transformer.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(width, transformer) for _ in range(transformer.blocks))
        self.norm = nn.LayerNorm(width)
        for name, p in self.named_parameters():
            if name.startswith(("blocks.", "inp.", "pos.")) and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * transformer.blocks) if name.endswith(("attn_out.weight", "mlp_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.startswith("blocks.") and name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)
        cos, sin = rotary_tables(transformer.context, width // transformer.heads)
        self.register_buffer("rot_cos", cos, persistent=False)
        self.register_buffer("rot_sin", sin, persistent=False)
        self._build_output(width)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """``()``: a transformer carries nothing across chunks."""
        return ()

    def forward(self, x: torch.Tensor, state: State | None = None, targets: torch.Tensor | None = None) -> LMOutput:
        """Next-token logits for token ids ``x (B, L)``, ``L <= transformer.context``; ``state`` must be
        None or ``()``. With ``targets (B, L)`` the output also holds ``nll (B, L)``."""
        if state:
            raise ValueError("a transformer carries no state across chunks: pass state=None")
        L = x.shape[-1]
        if L > self.context:
            raise ValueError(f"input of {L} tokens is longer than the context of {self.context} (transformer.context)")
        e = self.inp(self._embed(x, 0.0))  # (B, L, width); dropout after the positions
        if self.pos is not None:
            e = e + self.pos.weight[:L]
        h = F.dropout(e, self.tf_cfg.dropout, self.training)
        rotary = (self.rot_cos[:L], self.rot_sin[:L]) if self.pos is None else None
        for block in self.blocks:
            h = block(h, rotary)
        return self._readout(self.norm(h), (), targets, self.tf_cfg.dropout)
