"""Hebbian adaptive softmax: Hebbian memorization inside an adaptive softmax.

The adaptive softmax (Grave et al. 2017, ``nn.AdaptiveLogSoftmaxWithLoss``) splits the
classes, in frequency order, into a *head* — the ``cutoffs[0]`` most frequent classes plus
one logit per tail cluster — and tail clusters of rarer classes whose logits come from a
smaller projected space: ``logits_c = U_c (P_c h)`` with ``P_c`` of shape ``(d / div^c, d)``.
``log p(y)`` is the head's log-probability of ``y`` (of its cluster, for a tail class) plus, for
a tail class, its log-probability within the cluster.

What Algorithm 1 of Rae et al. (2018) means here — each class's output row is pulled toward
the mean of the vectors its logit is computed from:

* a **head class** ``i`` (``y < cutoffs[0]``): its head row moves toward ``h̄_i``, exactly as in
  :class:`~fastbind.layers.hebbian_softmax.HebbianSoftmax`;
* a **tail class** ``j`` of cluster ``c``: its row of ``U_c`` moves toward the mean of its
  *projected* activations, ``P_c h̄_j`` (the projection is linear, so the mean of ``P_c h`` is
  ``P_c h̄``). That is the vector its logit is a dot product with, so the memorized row scores
  the class the way a memorized full-softmax row does — in the space the cluster's softmax
  actually lives in. The projection itself keeps learning by gradient descent, so a memorized
  row is re-expressed in the current projection the next time the class is seen, while it is
  below ``T``;
* the **cluster rows** of the head (one per tail cluster) are left to gradient descent. A
  cluster is "seen" whenever any of its classes is — thousands of times an epoch — so its count
  passes ``T`` within the first batch, and Algorithm 1 would only overwrite the trained row once
  with that first batch's mean.

The mixing rate is the Hebbian head's: with ``c_i`` the class's count before the batch and
``n_i`` its occurrences in it, ``λ_i = max(n_i / (c_i + n_i), γ)`` while ``c_i < T``, else 0;
``row ← λ_i w*_i + (1 − λ_i) row`` with ``w* = h̄`` (or ``P_c h̄``) for ``objective="l2"``, or the
maximiser of ``wᵀh̄`` on the ball ``‖w‖ ≤ max_norm`` (``max_norm · h̄/‖h̄‖``) for ``"ip"``.
Counts are per class (``counts (n_classes,)``, in the state_dict). ``memorize_tails=False``
memorizes head classes only (the alternative the measurements compare against).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.adaptive import _ASMoutput

from fastbind.layers.hebbian_softmax import _checked_batch, _checked_labels, _class_means, _counts_of, _gather_batch

__all__ = ["HebbianAdaptiveSoftmax", "default_cutoffs"]


def default_cutoffs(counts: torch.Tensor, shares: Sequence[float] = (0.8, 0.95)) -> list[int]:
    """Cutoffs at the ranks that cover ``shares`` of the training tokens.

    ``counts`` must be in frequency order (class id = rank, as the project's vocabulary is after
    its specials); a cutoff is the number of classes whose tokens make up that share. Cutoffs
    that would coincide or reach ``len(counts)`` are dropped.

    Args:
        counts: ``(V,)`` training occurrences by class id.
        shares: increasing token shares in (0, 1).

    Returns:
        Increasing cutoffs in ``[1, V − 1]`` for ``nn.AdaptiveLogSoftmaxWithLoss``.
    """
    counts = torch.as_tensor(counts).double()
    V = counts.numel()
    if V < 2 or float(counts.sum()) <= 0:
        raise ValueError("counts must hold at least two classes and some occurrences")
    if list(shares) != sorted(shares) or not all(0 < s < 1 for s in shares):
        raise ValueError(f"shares must be increasing values in (0, 1), got {list(shares)}")
    cum = counts.cumsum(0) / counts.sum()
    out: list[int] = []
    for s in shares:
        c = int(torch.searchsorted(cum, torch.tensor(s, dtype=torch.float64))) + 1
        c = min(max(c, 1), V - 1)
        if not out or c > out[-1]:
            out.append(c)
    return out


class HebbianAdaptiveSoftmax(nn.AdaptiveLogSoftmaxWithLoss):
    """``nn.AdaptiveLogSoftmaxWithLoss`` with a post-step Hebbian update of its output rows.

    The interface and the computation of the PyTorch module (``forward(input, target)`` →
    ``(output, loss)``, ``log_prob``, ``predict``; ``head``, ``tail`` and the same parameter
    names, so state_dicts load both ways apart from ``counts``), plus ``counts`` and
    :meth:`memorize`, called after the optimizer step with the activations *before* dropout.
    ``ignore_index`` targets are skipped by ``forward`` (their output is 0 and the loss is the
    mean over the others) and by :meth:`memorize`.

    Args:
        in_features, n_classes, cutoffs, div_value, head_bias: as in
            ``nn.AdaptiveLogSoftmaxWithLoss`` (class ids in frequency order).
        gamma: minimum mixing rate γ ∈ [0, 1].
        T: a class is memorized while its count before the batch is below ``T`` (0 = never).
        objective: ``"l2"`` (``w* = h̄``) or ``"ip"`` (``w* = max_norm · h̄/‖h̄‖``).
        memorize_tails: also memorize tail classes (in their projected space); False
            memorizes the head's classes only.
        ignore_index: target value skipped by ``forward`` and :meth:`memorize`.
        max_norm: the ball of the ``ip`` objective.

    Shapes:
        ``forward``: ``input (N, d)``, ``target (N,)`` → ``output (N,)`` log p(target), loss.
        ``memorize``: ``h (..., d)``, ``y (...)``.

    Example::

        out = HebbianAdaptiveSoftmax(512, V, cutoffs=[2000, 10000], div_value=4.0, gamma=0.05, T=100)
        loss = out(F.dropout(h, 0.3).flatten(0, 1), y.flatten()).loss
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        out.memorize(h.detach(), y)
    """

    counts: torch.Tensor

    def __init__(self, in_features: int, n_classes: int, cutoffs: Sequence[int], div_value: float = 4.0,
                 head_bias: bool = False, *, gamma: float = 0.05, T: int = 100,
                 objective: Literal["l2", "ip"] = "l2", memorize_tails: bool = True, ignore_index: int = -100,
                 max_norm: float = 10.0, device=None, dtype=None) -> None:
        super().__init__(in_features, n_classes, cutoffs, div_value=div_value, head_bias=head_bias, device=device,
                         dtype=dtype)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        if T < 0:
            raise ValueError(f"T must be >= 0, got {T}")
        if objective not in ("l2", "ip"):
            raise ValueError(f"objective must be 'l2' or 'ip' for the adaptive softmax, got {objective!r}")
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.gamma, self.T, self.objective = float(gamma), int(T), objective
        self.memorize_tails, self.ignore_index, self.max_norm = bool(memorize_tails), int(ignore_index), float(max_norm)
        self.register_buffer("counts", torch.zeros(n_classes, dtype=torch.int64, device=self.head.weight.device))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_classes={self.n_classes}, cutoffs={self.cutoffs[:-1]}, "
                f"div_value={self.div_value}, gamma={self.gamma}, T={self.T}, objective={self.objective!r}, "
                f"memorize_tails={self.memorize_tails}")

    def forward(self, input_: torch.Tensor, target_: torch.Tensor):
        """As ``nn.AdaptiveLogSoftmaxWithLoss.forward``; ``ignore_index`` targets output 0 and are
        left out of the loss (all ignored: loss 0)."""
        if target_.dim() != 1:
            return super().forward(input_, target_)
        keep = target_ != self.ignore_index
        if bool(keep.all()):
            return super().forward(input_, target_)
        if input_.dim() != 2 or input_.size(0) != target_.size(0):
            raise RuntimeError(f"input {tuple(input_.shape)} and target {tuple(target_.shape)} do not match "
                               "(need (N, in_features) and (N,))")
        output = input_.new_zeros(target_.shape)
        idx = keep.nonzero().squeeze(1)
        if idx.numel() == 0:
            return _ASMoutput(output, input_.sum() * 0.0)  # a zero loss still connected to the graph
        sub = super().forward(input_.index_select(0, idx), target_.index_select(0, idx))
        return _ASMoutput(output.index_copy(0, idx, sub.output), sub.loss)

    # ------------------------------------------------------------------ memorize
    @torch.no_grad()
    def memorize(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Pull each present class's output row toward its mean activation (after ``optimizer.step()``).

        Args:
            h: activations ``(..., d)``, taken *before* dropout.
            y: integer targets ``(...)``; ``ignore_index`` entries are skipped.

        Raises:
            ValueError: wrong shapes or dtypes, labels out of range, non-finite activations.
                Nothing is changed when it raises.

        Under ``torch.distributed`` every rank calls this with its local batch; the batches are
        all-gathered (traffic proportional to the batch) so every replica applies the same update.
        """
        h, y = self._check(h, y)
        h, y = _gather_batch(h, y)
        if y.numel() == 0:
            return
        classes, n, h_mean = _class_means(h, y)  # sorted (U,), (U,), (U, d)
        c = self.counts.index_select(0, classes)
        lam = torch.maximum(n.double() / (c + n).double(),
                            torch.tensor(self.gamma, dtype=torch.float64, device=c.device))
        lam = torch.where(c < self.T, lam, torch.zeros_like(lam)).float()
        bounds = [0, *self.cutoffs]
        for k in range(len(bounds) - 1 if self.memorize_tails else 1):  # the head, then each cluster
            lo, hi = bounds[k], bounds[k + 1]
            sel = (classes >= lo) & (classes < hi) & (lam > 0)
            if not bool(sel.any()):
                continue
            rows = classes[sel] - lo
            if k == 0:
                weight, target = self.head.weight, h_mean[sel]
            else:
                proj, weight = self.tail[k - 1][0].weight, self.tail[k - 1][1].weight
                target = h_mean[sel] @ proj.float().T  # P_c h̄ = the mean of the projected activations
            if self.objective == "ip":
                target = F.normalize(target, dim=1) * self.max_norm
            w = weight.index_select(0, rows).float()
            # index_copy_ writes into the Parameter's storage (W[mask].add_() would update a copy).
            weight.index_copy_(0, rows, torch.lerp(w, target, lam[sel].unsqueeze(1)).to(weight.dtype))
        self.counts.index_add_(0, *_counts_of(y))

    @torch.no_grad()
    def count(self, y: torch.Tensor) -> None:
        """Add the classes in ``y`` to the counters without changing any weight (a warm-up)."""
        y = self._check_labels(y)[0]
        _, y = _gather_batch(None, y)
        if y.numel():
            self.counts.index_add_(0, *_counts_of(y))

    def _check_labels(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat int64 labels without ignored ones, and the keep mask over the flat input."""
        return _checked_labels(y, self.n_classes, self.ignore_index, self.head.weight.device)

    def _check(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and flatten; returns ``(h (N, d), y (N,))`` without ignored positions."""
        return _checked_batch(h, y, self.in_features, self.n_classes, self.ignore_index, self.head.weight.device)
