"""Word-level LSTM language model with a softmax or Hebbian Softmax output layer.

The paper's language models (Rae et al. 2018, section 4.2): embedding → input dropout →
1..n LSTM layers (optional LayerNorm on the output) → output dropout → output layer, input
and output embeddings optionally tied. ``forward`` returns the logits, the new recurrent
state and, for :meth:`HebbianSoftmax.memorize` and the evaluation-time memories, the hidden
states *before* output dropout.

``arch="fwm"`` puts a :class:`~fastbind.layers.fast_weights.FastWeightMemory` on the last LSTM
layer's output (Schlag et al. 2021: the read is added to the LSTM output and never fed back
into the LSTM); the state then carries the fast weights as a third tensor, and the LSTM's
forget-gate bias starts at 1 as in the authors' cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.layers.fast_weights import FastWeightMemory
from fastbind.layers.hebbian_adaptive import HebbianAdaptiveSoftmax
from fastbind.layers.hebbian_softmax import HebbianSoftmax

# (h, c), each (layers, B, hidden); arch=fwm appends the fast weights F (B, s, r, t).
State = tuple[torch.Tensor, ...]


@dataclass
class LMConfig:
    """Model settings (``vocab_size`` is taken from the data when 0)."""

    vocab_size: int = 0
    arch: Literal["lstm", "fwm"] = "lstm"  # fwm: a Fast Weight Memory on the LSTM output
    emb_dim: int = 256
    hidden: int = 256
    layers: int = 1
    input_dropout: float = 0.3  # on embeddings, before the LSTM (the paper's "input dropout")
    dropout: float = 0.3  # on LSTM outputs, before the output layer
    layer_norm: bool = False
    tied: bool = False  # untied measured better for both heads (docs/RESULTS.md, PTB screen)
    head: Literal["softmax", "hebbian"] = "softmax"
    gamma: float | Literal["auto"] = 0.05  # Hebbian γ; auto = 1/N_min of the training counts
    T: int | Literal["auto"] = 100  # Hebbian T; auto = N_min × the run's epochs
    objective: Literal["l2", "ip", "svm", "smax"] = "l2"
    fwm_size: int = 32  # arch=fwm: s = r = t of the fast-weight tensor
    fwm_hops: int = 3  # arch=fwm: sequential reads
    fwm_residual: bool = True  # arch=fwm: add the read to the LSTM output
    softmax: Literal["full", "adaptive"] = "full"  # adaptive: an adaptive softmax (Grave et al. 2017) as output layer
    cutoffs: tuple[int, ...] = ()  # softmax=adaptive: class ids where tail clusters start; () = from the counts
    div_value: float = 4.0  # softmax=adaptive: each tail cluster's projection is this much smaller
    memorize_tails: bool = True  # softmax=adaptive, head=hebbian: also memorize tail classes (False: head classes only)


class LMOutput(NamedTuple):
    logits: torch.Tensor  # (B, L, V)
    state: State  # (h, c) each (layers, B, hidden), + F (B, s, r, t) for arch=fwm
    hidden: torch.Tensor  # (B, L, d_out), pre-dropout input to the output layer
    fwm_norm: torch.Tensor | None = None  # (B, L) ‖F‖ before each clip, arch=fwm only (detached)
    nll: torch.Tensor | None = None  # (B, L) −log p(target), when forward was given targets (0 where ignored)


class LSTMLM(nn.Module):
    """LSTM language model.

    When ``tied`` and ``hidden != emb_dim`` a linear projection maps the LSTM output to
    ``emb_dim`` so the output layer can share the embedding matrix; ``hidden`` in
    :class:`LMOutput` is then the projected vector (the output layer's input).

    ``softmax="adaptive"`` makes the output layer a
    :class:`~fastbind.layers.hebbian_adaptive.HebbianAdaptiveSoftmax` (memorizing when
    ``head="hebbian"``, never when ``head="softmax"``). Its full distribution is never formed
    in training: ``forward(x, state, targets=y)`` returns ``nll`` and no logits. Without
    targets ``logits`` holds the full log-probabilities (their softmax is the same distribution).
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("LMConfig.vocab_size must be set (> 0)")
        if cfg.layers < 1:
            raise ValueError(f"layers must be >= 1, got {cfg.layers}")
        self.cfg = cfg
        V = cfg.vocab_size
        self.embedding = nn.Embedding(V, cfg.emb_dim)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        if cfg.arch == "fwm":
            self.fwm: FastWeightMemory | None = FastWeightMemory(
                cfg.hidden, cfg.fwm_size, cfg.fwm_size, cfg.fwm_size, cfg.fwm_hops, residual=cfg.fwm_residual)
            with torch.no_grad():  # the authors' cell adds 1 to the forget gate's pre-activation
                for k in range(cfg.layers):
                    getattr(self.lstm, f"bias_ih_l{k}")[cfg.hidden:2 * cfg.hidden].fill_(1.0)
                    getattr(self.lstm, f"bias_hh_l{k}")[cfg.hidden:2 * cfg.hidden].zero_()
        elif cfg.arch == "lstm":
            self.fwm = None
        else:
            raise ValueError(f"arch must be 'lstm' or 'fwm', got {cfg.arch!r}")
        self.norm = nn.LayerNorm(cfg.hidden) if cfg.layer_norm else nn.Identity()
        d_out = cfg.emb_dim if cfg.tied else cfg.hidden
        self.proj = nn.Linear(cfg.hidden, d_out) if cfg.tied and cfg.hidden != cfg.emb_dim else nn.Identity()
        self.d_out = d_out
        tied_weight = self.embedding.weight if cfg.tied else None
        if cfg.head not in ("softmax", "hebbian"):
            raise ValueError(f"head must be 'softmax' or 'hebbian', got {cfg.head!r}")
        if cfg.softmax == "adaptive":
            if cfg.tied:
                raise ValueError("tied embeddings need softmax=full (an adaptive softmax has no (V, d) matrix to share)")
            if not cfg.cutoffs:
                raise ValueError("softmax=adaptive needs cutoffs (fastbind.lm.resolve_auto sets them from the counts)")
            hebbian = cfg.head == "hebbian"
            if hebbian and "auto" in (cfg.gamma, cfg.T):
                raise ValueError("gamma/T 'auto' must be resolved from the training counts first "
                                 "(fastbind.lm.resolve_auto)")
            if cfg.objective not in ("l2", "ip"):
                raise ValueError(f"softmax=adaptive supports objective l2 or ip, got {cfg.objective!r}")
            self.head = HebbianAdaptiveSoftmax(d_out, V, list(cfg.cutoffs), div_value=cfg.div_value, head_bias=True,
                                               gamma=cfg.gamma if hebbian else 0.0, T=cfg.T if hebbian else 0,
                                               objective=cfg.objective, memorize_tails=cfg.memorize_tails)
            nn.init.zeros_(self.head.head.bias)
            return
        if cfg.softmax != "full":
            raise ValueError(f"softmax must be 'full' or 'adaptive', got {cfg.softmax!r}")
        if cfg.head == "hebbian":
            if "auto" in (cfg.gamma, cfg.T):
                raise ValueError("gamma/T 'auto' must be resolved from the training counts first "
                                 "(fastbind.lm.resolve_auto)")
            self.head: nn.Module = HebbianSoftmax(d_out, V, gamma=cfg.gamma, T=cfg.T, weight=tied_weight,
                                                  objective=cfg.objective)
        else:
            self.head = nn.Linear(d_out, V)
            if tied_weight is not None:
                self.head.weight = tied_weight
        nn.init.zeros_(self.head.bias)

    @property
    def is_hebbian(self) -> bool:
        return self.cfg.head == "hebbian"

    @property
    def is_adaptive(self) -> bool:
        return isinstance(self.head, HebbianAdaptiveSoftmax)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero recurrent state ``(h0, c0)``, each ``(layers, B, hidden)`` (+ empty ``F`` for arch=fwm)."""
        p = next(self.parameters())
        z = torch.zeros(self.cfg.layers, batch_size, self.cfg.hidden, device=device or p.device, dtype=p.dtype)
        if self.fwm is not None:
            return z, z.clone(), self.fwm.init_state(batch_size, device or p.device, p.dtype)
        return z, z.clone()

    def forward(self, x: torch.Tensor, state: State | None = None, targets: torch.Tensor | None = None) -> LMOutput:
        """Next-token logits for token ids ``x (B, L)``; ``state`` carries across chunks.

        With ``targets (B, L)`` the output also holds ``nll (B, L)``; an adaptive softmax then
        computes only what the targets need and returns ``logits=None``.
        """
        if x.dim() != 2:
            raise ValueError(f"x must be (batch, length) token ids, got shape {tuple(x.shape)}")
        e = F.dropout(self.embedding(x), self.cfg.input_dropout, self.training)  # (B, L, emb)
        if state is not None and len(state) != (3 if self.fwm is not None else 2):
            raise ValueError(f"state must be {'(h, c, F)' if self.fwm is not None else '(h, c)'}, "
                             f"got {len(state)} tensors")
        out, hc = self.lstm(e, None if state is None else (state[0], state[1]))  # (B, L, hidden)
        norm = None
        if self.fwm is not None:
            out, fw, norm = self.fwm(out, None if state is None else state[2])  # (B, L, hidden)
            new_state: State = (*hc, fw)
        else:
            new_state = hc
        hidden = self.proj(self.norm(out))  # (B, L, d_out), what memorize sees
        dropped = F.dropout(hidden, self.cfg.dropout, self.training)
        if self.is_adaptive:
            B, L, d = dropped.shape
            if targets is not None:  # only the head and the targets' clusters are computed
                nll = -self.head(dropped.reshape(B * L, d), targets.reshape(B * L)).output.view(B, L)
                return LMOutput(None, new_state, hidden, norm, nll)
            return LMOutput(self.head.log_prob(dropped.reshape(B * L, d)).view(B, L, -1), new_state, hidden, norm)
        logits = self.head(dropped)  # (B, L, V)
        nll = None
        if targets is not None:
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half/bf16 logits: float32 loss
            nll = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        return LMOutput(logits, new_state, hidden, norm, nll)

    @torch.no_grad()
    def memorize(self, hidden: torch.Tensor, y: torch.Tensor, *, count_only: bool = False) -> None:
        """The post-step update of the output layer; call it after ``optimizer.step()``.

        A Hebbian head mixes each target class's mean ``hidden`` into its row
        (:meth:`HebbianSoftmax.memorize`); with ``count_only`` it only counts the classes
        (a warm-up in which rows are not yet memorized, :meth:`HebbianSoftmax.count`). A
        plain softmax head does nothing.

        Args:
            hidden: ``LMOutput.hidden`` ``(B, L, d_out)``, the pre-dropout output-layer input.
            y: Targets ``(B, L)``.
            count_only: Count the classes without changing any weight.
        """
        if not self.is_hebbian:
            return
        if count_only:
            self.head.count(y)
        else:
            self.head.memorize(hidden, y)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W (V, d_out), b (V,) or None)`` of the output layer, for cache/MbPA evaluators.

        Raises:
            ValueError: for an adaptive softmax, which has no single ``(V, d)`` matrix (MbPA
                adapts a full softmax output layer).
        """
        if self.is_adaptive:
            raise ValueError("MbPA adapts a full softmax output layer; this model has softmax=adaptive")
        return self.head.weight, self.head.bias


def detach_state(state: State | None) -> State | None:
    """Cut the graph between chunks (truncated backpropagation through time)."""
    return None if state is None else tuple(t.detach() for t in state)
