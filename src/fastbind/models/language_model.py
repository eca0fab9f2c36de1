"""What every language-model family shares: the embedding, the output layer and its post-step update.

A family (:mod:`fastbind.models.lstm_lm`, :mod:`fastbind.models.fwm_lm`, ...) subclasses
:class:`LanguageModel`: its ``__init__`` builds the embedding (``super().__init__``), then its
trunk, then calls :meth:`LanguageModel._build_output` with the trunk's width; its ``forward``
ends with :meth:`LanguageModel._readout`. The output layer follows the ``model`` settings
(:class:`fastbind.models.registry.ModelConfig`): a plain or Hebbian softmax (Rae et al. 2018),
full or adaptive (Grave et al. 2017), optionally tied to the embedding. Recipes then treat
every family alike: ``forward`` gives :class:`LMOutput`, :meth:`~LanguageModel.memorize` is the
post-step update, :meth:`~LanguageModel.output_layer` feeds the evaluation-time memories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.layers.hebbian_adaptive import HebbianAdaptiveSoftmax
from fastbind.layers.hebbian_softmax import HebbianSoftmax

if TYPE_CHECKING:
    from fastbind.models.registry import ModelConfig

__all__ = ["LMOutput", "LanguageModel", "State", "detach_state"]

# The recurrent state a family carries across chunks, e.g. (h, c) for arch=lstm, (h, c, F) for arch=fwm.
State = tuple[torch.Tensor, ...]


class LMOutput(NamedTuple):
    logits: torch.Tensor  # (B, L, V)
    state: State  # the family's state after the chunk
    hidden: torch.Tensor  # (B, L, d_out), pre-dropout input to the output layer
    fwm_norm: torch.Tensor | None = None  # (B, L) ‖F‖ before each clip, arch=fwm only (detached)
    nll: torch.Tensor | None = None  # (B, L) −log p(target), when forward was given targets (0 where ignored)


class LanguageModel(nn.Module):
    """Base of the language-model families: token ids ``(B, L)`` in, :class:`LMOutput` out.

    When ``tied`` and the trunk's width differs from ``emb_dim``, a linear projection maps the
    trunk's output to ``emb_dim`` so the output layer can share the embedding matrix;
    ``hidden`` in :class:`LMOutput` is then the projected vector (the output layer's input).

    ``softmax="adaptive"`` makes the output layer a
    :class:`~fastbind.layers.hebbian_adaptive.HebbianAdaptiveSoftmax` (memorizing when
    ``head="hebbian"``, never when ``head="softmax"``). Its full distribution is never formed
    in training: ``forward(x, state, targets=y)`` returns ``nll`` and no logits. Without
    targets ``logits`` holds the full log-probabilities (their softmax is the same distribution).
    """

    # True: the family carries a state across chunks (an LSTM's (h, c)) and is evaluated as a
    # stream of chunks; False: it sees only the tokens of one forward and is evaluated through
    # sliding windows (:func:`fastbind.evaluation.windows`).
    recurrent: bool = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.check(cfg.vocab_size)
        self.cfg = cfg
        # Modules are registered in the order of the original LSTM language model (embedding,
        # trunk, projection, output layer): it fixes the random initialisation, the state_dict
        # and the optimizer's parameter order, so runs saved before the families split still load.
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        if cfg.emb_init == "uniform":  # else nn.Embedding's own N(0, 1), drawn above
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def _build_output(self, width: int) -> None:
        """The projection (tied, ``width != emb_dim``) and the output layer, for a trunk of ``width``."""
        cfg = self.cfg
        d_out = cfg.emb_dim if cfg.tied else width
        self.proj = nn.Linear(width, d_out) if cfg.tied and width != cfg.emb_dim else nn.Identity()
        self.d_out = d_out
        hebbian = cfg.head == "hebbian"
        if cfg.softmax == "adaptive":
            self.head: nn.Module = HebbianAdaptiveSoftmax(
                d_out, cfg.vocab_size, list(cfg.cutoffs), div_value=cfg.div_value, head_bias=True,
                gamma=cfg.gamma if hebbian else 0.0, T=cfg.T if hebbian else 0, objective=cfg.objective,
                memorize_tails=cfg.memorize_tails)
            nn.init.zeros_(self.head.head.bias)
            return
        tied_weight = self.embedding.weight if cfg.tied else None
        if hebbian:
            self.head = HebbianSoftmax(d_out, cfg.vocab_size, gamma=cfg.gamma, T=cfg.T, weight=tied_weight,
                                       objective=cfg.objective)
        elif cfg.head_init == "xavier":  # the FWM authors' catbAbI output layer
            self.head = nn.Linear(d_out, cfg.vocab_size, bias=False)
            nn.init.xavier_normal_(self.head.weight)
            return
        else:
            self.head = nn.Linear(d_out, cfg.vocab_size)
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
        """The state at the start of a stream (zeros)."""
        raise NotImplementedError

    def replicate_state(self, state: State, row: int, n: int) -> State:
        """The state of batch row ``row`` repeated ``n`` times (each tensor along its batch dimension).

        The batch dimension of each state tensor is the one in which ``init_state(1)`` and
        ``init_state(2)`` differ, so every family is served without knowing its layout.
        """
        one, two = self.init_state(1), self.init_state(2)
        out = []
        for t, a, b in zip(state, one, two):
            dim = next(d for d in range(a.dim()) if a.shape[d] != b.shape[d])
            if not 0 <= row < t.shape[dim]:
                raise ValueError(f"row {row} is outside a state of batch {t.shape[dim]}")
            out.append(t.narrow(dim, row, 1).repeat_interleave(n, dim=dim))
        return tuple(out)

    def _embed(self, x: torch.Tensor, dropout: float) -> torch.Tensor:
        """Embeddings ``(B, L, emb_dim)`` of token ids ``x (B, L)``, with (input) dropout."""
        if x.dim() != 2:
            raise ValueError(f"x must be (batch, length) token ids, got shape {tuple(x.shape)}")
        return F.dropout(self.embedding(x), dropout, self.training)

    def _readout(self, out: torch.Tensor, state: State, targets: torch.Tensor | None, dropout: float,
                 fwm_norm: torch.Tensor | None = None) -> LMOutput:
        """The output layer on the trunk's output ``out (B, L, width)`` (dropout between them).

        With ``targets (B, L)`` the output also holds ``nll (B, L)``; an adaptive softmax then
        computes only what the targets need and returns ``logits=None``.
        """
        hidden = self.proj(out)  # (B, L, d_out), what memorize sees
        dropped = F.dropout(hidden, dropout, self.training)
        if self.is_adaptive:
            B, L, d = dropped.shape
            if targets is not None:  # only the head and the targets' clusters are computed
                nll = -self.head(dropped.reshape(B * L, d), targets.reshape(B * L)).output.view(B, L)
                return LMOutput(None, state, hidden, fwm_norm, nll)
            return LMOutput(self.head.log_prob(dropped.reshape(B * L, d)).view(B, L, -1), state, hidden, fwm_norm)
        logits = self.head(dropped)  # (B, L, V)
        nll = None
        if targets is not None:
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half/bf16 logits: float32 loss
            nll = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        return LMOutput(logits, state, hidden, fwm_norm, nll)

    @torch.no_grad()
    def memorize(self, hidden: torch.Tensor, y: torch.Tensor, *, count_only: bool = False) -> None:
        """The post-step update of the output layer; call it after ``optimizer.step()``.

        A Hebbian head mixes each target class's mean ``hidden`` into its row
        (:meth:`HebbianSoftmax.memorize`); with ``count_only`` it only counts the classes
        (a warm-up in which rows are not yet memorized, :meth:`HebbianSoftmax.count`). A
        plain softmax head does nothing. Targets equal to ``-100`` (the loss's ignore index)
        are skipped, so it memorizes exactly what the loss trained on.

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
