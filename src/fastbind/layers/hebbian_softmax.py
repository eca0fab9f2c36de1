"""Hebbian Softmax: an output layer that memorizes activations of rarely seen classes.

Rae, Dyer, Dayan, Lillicrap. "Fast Parametric Learning with Activation Memorization",
ICML 2018, section 3 and Algorithm 1.

The layer is an ordinary linear map ``logits = h @ W.T + b`` trained by gradient descent.
After each optimizer step the training loop calls :meth:`HebbianSoftmax.memorize` with the
*pre-dropout* activations ``h`` and targets ``y`` of the batch. For every class ``i`` present
in the batch, with ``n_i`` occurrences, mean activation ``h̄_i`` and count ``c_i`` *before*
this batch::

    λ_i = max(n_i / (c_i + n_i), γ)   if c_i < T   else 0
    W[i] ← λ_i · w*_i + (1 − λ_i) · W[i]
    c_i ← c_i + n_i

where ``w*_i = h̄_i`` for the default ``objective="l2"`` and the maximiser of an alternate
inner objective otherwise (section 3.3). Rows of classes absent from the batch and the bias
are left to gradient descent.

Why ``n_i / (c_i + n_i)``: Algorithm 1 writes ``max(1 / c[i], γ)`` with ``c[i] = 0`` at a
class's first sighting, which is undefined. Counting the batch's own occurrences resolves it:
at a first sighting λ = 1 and the row becomes ``h̄_i`` exactly, and with γ → 0 and no gradient
the row after any sequence of batches is the exact running mean of every activation seen for
that class, because ``W_new = (n/(c+n))·h̄ + (c/(c+n))·W_old`` is the mean-update rule. With a
batch of one it is the paper's eq. 4 with the counter incremented before use.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Objective = Literal["l2", "ip", "svm", "smax"]
_OBJECTIVES = ("l2", "ip", "svm", "smax")

# Upper bound on the (num_classes x chunk) distance block computed when searching the
# nearest other-class rows for the svm/smax objectives (elements, float32): 64M = 256 MB.
_NEIGHBOUR_BLOCK = 1 << 26


def paper_settings(counts: torch.Tensor, epochs: float) -> tuple[float, int]:
    """γ and T from the training counts by the paper's rule (Rae et al. 2018, section 3.1).

    ``γ = 1 / N_min`` and ``T = N_min × epochs``, where ``N_min`` is the smallest count among
    classes that occur in one training epoch (classes that never occur are left out) and
    ``epochs`` is the number of epochs the run expects to train. The rule smooths each rare
    class over the examples of one epoch and keeps memorizing until the representations have
    settled. Where the rarest class occurs once (Penn Treebank) it gives ``γ = 1`` — every
    memorized row is replaced by its latest batch mean until it has been seen ``T`` times.

    Args:
        counts: ``(V,)`` occurrences of each class in one training epoch.
        epochs: training epochs expected (> 0); T is rounded to the nearest integer, at least 1.

    Returns:
        ``(gamma, T)``.

    Raises:
        ValueError: no class occurs, a negative count, or ``epochs <= 0``.
    """
    counts = torch.as_tensor(counts)
    if counts.dim() != 1 or bool((counts < 0).any()):
        raise ValueError("counts must be a 1-d tensor of non-negative occurrences")
    seen = counts[counts > 0]
    if seen.numel() == 0:
        raise ValueError("no class occurs in the training counts")
    if not epochs > 0 or not math.isfinite(epochs):
        raise ValueError(f"epochs must be a positive number, got {epochs}")
    n_min = int(seen.min())
    return 1.0 / n_min, max(1, round(n_min * epochs))


class HebbianSoftmax(nn.Module):
    """Linear output layer with Hebbian memorization of rare classes.

    Args:
        in_features: size ``d`` of the activations ``h``.
        num_classes: number of output classes ``V``.
        gamma: minimum mixing rate γ ∈ [0, 1]. Default 0.05, chosen on Penn Treebank
            (docs/RESULTS.md, "The defaults chosen from these measurements"); the paper used
            0.25 on WikiText-103.
        T: a class is memorized while its count before the batch is below ``T``; after that
            its row learns by gradient descent only. Default 100, chosen likewise; the paper
            used 500 on WikiText-103. ``T=0`` disables memorization.
        bias: whether to add a bias (trained by gradient descent only).
        weight: an existing ``(num_classes, in_features)`` Parameter to use as the weight,
            e.g. an ``nn.Embedding`` weight for tied input/output embeddings.
        objective: inner objective defining the memorized vector ``w*``: ``"l2"`` (w* = h̄,
            eq. 7), ``"ip"`` (eq. 8), ``"svm"`` (eq. 9) or ``"smax"`` (eq. 10).
        ignore_index: target value skipped by :meth:`memorize` (as in ``F.cross_entropy``).
        max_norm: norm bound ``‖w*‖ ≤ max_norm`` for the ip/svm/smax objectives.
        inner_steps: projected gradient-ascent steps for the ip/svm/smax objectives.
        inner_lr: step size of that ascent.
        k: number of nearest other-class rows ``N_k`` used by svm/smax.
        xi: weight ξ of the neighbour penalty in the svm objective.
        eps: margin ε of the svm objective.

    Shapes:
        ``forward``: ``h (..., d) -> logits (..., V)``.
        ``memorize``: ``h (..., d)``, ``y (...)`` integer.

    Example::

        head = HebbianSoftmax(512, vocab_size, gamma=0.05, T=100)
        logits = head(h)                       # h: (B, L, 512), pre-dropout copy kept
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        head.memorize(h.detach(), y)           # after the step
    """

    counts: torch.Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        gamma: float = 0.05,
        T: int = 100,
        bias: bool = True,
        weight: nn.Parameter | None = None,
        objective: Objective = "l2",
        ignore_index: int = -100,
        max_norm: float = 10.0,
        inner_steps: int = 20,
        inner_lr: float = 1.0,
        k: int = 10,
        xi: float = 1.0,
        eps: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ValueError(f"in_features and num_classes must be positive, got {in_features}, {num_classes}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        if T < 0:
            raise ValueError(f"T must be >= 0, got {T}")
        if objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
        if max_norm <= 0 or inner_steps < 0 or inner_lr <= 0 or k < 1:
            raise ValueError("max_norm and inner_lr must be > 0, inner_steps >= 0 and k >= 1")
        self.in_features = in_features
        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.T = int(T)
        self.objective: Objective = objective
        self.ignore_index = int(ignore_index)
        self.max_norm = float(max_norm)
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.k = int(k)
        self.xi = float(xi)
        self.eps = float(eps)

        factory = {"device": device, "dtype": dtype}
        if weight is None:
            self.weight = nn.Parameter(torch.empty(num_classes, in_features, **factory))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's init
        else:
            if not isinstance(weight, nn.Parameter):
                raise ValueError("weight must be an nn.Parameter (e.g. embedding.weight) so it can be tied")
            if tuple(weight.shape) != (num_classes, in_features):
                raise ValueError(
                    f"tied weight has shape {tuple(weight.shape)}, expected ({num_classes}, {in_features})"
                )
            self.weight = weight
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_classes, device=self.weight.device, dtype=self.weight.dtype))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.int64, device=self.weight.device))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, gamma={self.gamma}, "
            f"T={self.T}, objective={self.objective!r}, bias={self.bias is not None}"
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., V)`` for activations ``h (..., d)``."""
        return F.linear(h, self.weight, self.bias)

    # ------------------------------------------------------------------ memorize
    @torch.no_grad()
    def memorize(self, h: torch.Tensor, y: torch.Tensor, *, active: int | torch.Tensor | None = None) -> None:
        """Mix each present class's mean activation into its row (call after ``optimizer.step()``).

        Args:
            h: activations ``(..., d)`` that produced the logits, taken *before* dropout.
            y: integer targets ``(...)``; entries equal to ``ignore_index`` are skipped.
            active: the classes in play when only some rows are used (e.g. a class
                curriculum): an int ``n`` for rows ``[0, n)`` or a bool mask ``(V,)``. Labels
                must be active, and the svm/smax objectives look for neighbours among
                active rows only. None: every row.

        Raises:
            ValueError: on a wrong last dimension, mismatched shapes, a non-integer ``y``, a
                non-floating ``h``, labels out of range or non-finite activations. Nothing is
                changed when it raises.

        Under ``torch.distributed`` every rank must call this with its local batch (of any
        size, possibly empty); the batches are all-gathered so every replica applies the
        same update. Communication is proportional to the batch, never to ``V × d``.
        """
        h, y = self._check(h, y)
        mask = self._active_mask(active, y)
        h, y = _gather_batch(h, y)
        if y.numel() == 0:
            return
        classes, n, h_mean = _class_means(h, y)  # (U,), (U,) int64, (U, d) float32
        c = self.counts.index_select(0, classes)
        lam = torch.maximum(n.double() / (c + n).double(), torch.tensor(self.gamma, dtype=torch.float64,
                                                                        device=c.device))
        lam = torch.where(c < self.T, lam, torch.zeros_like(lam)).float()
        active = lam > 0
        if not bool(active.all()):
            classes, h_mean, lam = classes[active], h_mean[active], lam[active]
        if classes.numel():
            target = h_mean if self.objective == "l2" else self._inner_optimum(classes, h_mean, mask)
            w = self.weight.index_select(0, classes).float()
            new_rows = torch.lerp(w, target, lam.unsqueeze(1))  # λ·w* + (1 − λ)·W[i]
            # index_copy_ writes in place into the Parameter's storage (unlike W[mask].add_(),
            # which would update a temporary copy and leave the weights untouched).
            self.weight.index_copy_(0, classes, new_rows.to(self.weight.dtype))
        self.counts.index_add_(0, *_counts_of(y))

    @torch.no_grad()
    def count(self, y: torch.Tensor) -> None:
        """Add the classes in ``y`` to the counters without changing any weight.

        Useful to keep counting during a warm-up in which memorization is switched off, so
        that a later first :meth:`memorize` does not treat well-trained rows as unseen.
        Distributed-aware like :meth:`memorize`; ``ignore_index`` entries are skipped.
        """
        y = self._check_labels(y)
        _, y = _gather_batch(None, y)
        if y.numel():
            self.counts.index_add_(0, *_counts_of(y))

    def reset_counts(self) -> None:
        """Forget all class counts (every class is treated as unseen again)."""
        self.counts.zero_()

    # ------------------------------------------------------------------ helpers
    def _active_mask(self, active: int | torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
        """``active`` as a bool mask ``(V,)`` (None: all rows); checks the labels are active."""
        if active is None:
            return None
        if isinstance(active, torch.Tensor):
            if active.dtype != torch.bool or active.shape != (self.num_classes,):
                raise ValueError(f"active must be an int or a bool tensor of shape ({self.num_classes},), "
                                 f"got {active.dtype} {tuple(active.shape)}")
            mask = active.to(self.weight.device)
        else:
            if isinstance(active, bool) or not isinstance(active, int) or not 0 < active <= self.num_classes:
                raise ValueError(f"active must lie in [1, {self.num_classes}], got {active!r}")
            mask = torch.arange(self.num_classes, device=self.weight.device) < active
        if y.numel() and not bool(mask[y].all()):
            raise ValueError(f"labels {sorted(set(y[~mask[y]].tolist()))[:5]} are not among the active classes")
        return mask

    def _check_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Validate integer labels; returns the flat int64 labels with ignored ones removed."""
        return _checked_labels(y, self.num_classes, self.ignore_index, self.weight.device)[0]

    def _check(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and flatten; returns (h (N, d), y (N,)) with ignored positions removed."""
        return _checked_batch(h, y, self.in_features, self.num_classes, self.ignore_index, self.weight.device)

    def _neighbours(self, classes: torch.Tensor, h_mean: torch.Tensor,
                    active: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of the ``k`` nearest other classes to each ``h̄`` (squared Euclidean distance).

        Returns ``(U, k, d)`` float32. The class itself is excluded, and so are inactive rows
        when an ``active`` mask is given. Distances are computed in blocks of classes so no
        ``V × d`` temporary is made (the block is ``V × chunk``).
        """
        W = self.weight
        V = self.num_classes
        k = min(self.k, (V if active is None else int(active.sum())) - 1)
        sq_norm = W.float().pow(2).sum(1)  # (V,)
        if active is not None:
            sq_norm = sq_norm.masked_fill(~active, math.inf)  # never a neighbour
        chunk = max(1, _NEIGHBOUR_BLOCK // V)
        idx = []
        for s in range(0, classes.numel(), chunk):  # loop over blocks, not classes
            hm = h_mean[s : s + chunk]  # (u, d)
            # ‖θ_j − h̄‖² up to the constant ‖h̄‖², which does not change the ranking.
            dist2 = sq_norm.unsqueeze(1) - 2.0 * (W @ hm.to(W.dtype).T).float()  # (V, u)
            dist2.scatter_(0, classes[s : s + chunk].unsqueeze(0), math.inf)
            idx.append(dist2.topk(k, dim=0, largest=False).indices.T)  # (u, k)
        return W[torch.cat(idx)].float()  # (U, k, d)

    def _objective(self, w: torch.Tensor, h_mean: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
        """g(w) per class, (U,); for smax the log of eq. 10 (same maximiser)."""
        ip = (w * h_mean).sum(-1)
        if self.objective == "ip":
            return ip
        nb_ip = torch.einsum("ukd,ud->uk", nb, w)
        if self.objective == "svm":
            return ip - self.xi * (nb_ip * (nb_ip > self.eps)).sum(-1)
        return ip - torch.logsumexp(nb_ip, dim=-1)  # log g_smax

    def _inner_optimum(self, classes: torch.Tensor, h_mean: torch.Tensor,
                       active: torch.Tensor | None = None) -> torch.Tensor:
        """w* = argmax_{‖w‖ ≤ max_norm} g(w) by projected gradient ascent, batched over classes.

        Starts from h̄ projected onto the ball and returns the best iterate seen, so the
        result is never worse than that start under its own objective.
        """
        nb = self._neighbours(classes, h_mean, active) if self.objective in ("svm", "smax") else None
        w = _project(h_mean, self.max_norm)
        best, best_g = w, self._objective(w, h_mean, nb)
        for _ in range(self.inner_steps):
            if self.objective == "ip":
                grad = h_mean
            else:
                nb_ip = torch.einsum("ukd,ud->uk", nb, w)
                if self.objective == "svm":
                    # Subgradient of ξ·Σ wᵀθ_j·1(wᵀθ_j > ε).
                    grad = h_mean - self.xi * torch.einsum("uk,ukd->ud", (nb_ip > self.eps).float(), nb)
                else:
                    grad = h_mean - torch.einsum("uk,ukd->ud", nb_ip.softmax(-1), nb)
            w = _project(w + self.inner_lr * grad, self.max_norm)
            g = self._objective(w, h_mean, nb)
            better = g > best_g
            best = torch.where(better.unsqueeze(1), w, best)
            best_g = torch.where(better, g, best_g)
        return best

    def inner_objective(self, w: torch.Tensor, h_mean: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate this layer's inner objective ``g`` (log g for smax) for ``w (U, d)``.

        ``neighbours (U, k, d)`` is required for svm/smax; for l2 this is ``-‖w − h̄‖``.
        """
        if self.objective == "l2":
            return -(w - h_mean).norm(dim=-1)
        return self._objective(w.float(), h_mean.float(), None if neighbours is None else neighbours.float())


def _checked_labels(y: torch.Tensor, n_classes: int, ignore_index: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate integer labels for a layer of ``n_classes`` on ``device``.

    Returns the flat int64 labels with ``ignore_index`` removed and the keep mask over the flat
    input; raises ``ValueError`` naming the problem (the Hebbian layers' shared check).
    """
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a tensor of class ids, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be an integer tensor of class ids, got dtype {y.dtype}")
    if y.device != device:
        raise ValueError(f"y is on {y.device} but the layer is on {device}")
    y = y.reshape(-1).long()
    keep = y != ignore_index
    y = y[keep]
    if y.numel() and bool(((y < 0) | (y >= n_classes)).any()):
        raise ValueError(f"labels must lie in [0, {n_classes}) or equal ignore_index={ignore_index}, "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
    return y, keep


def _checked_batch(h: torch.Tensor, y: torch.Tensor, in_features: int, n_classes: int, ignore_index: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate activations ``h (..., d)`` with labels ``y (...)``; returns ``(h (N, d), y (N,))``
    without the ignored positions. Raises ``ValueError`` naming the problem."""
    if not isinstance(h, torch.Tensor):
        raise ValueError(f"h must be a tensor, got {type(h).__name__}")
    if not h.is_floating_point():
        raise ValueError(f"h must be a floating-point tensor, got dtype {h.dtype}")
    if h.dim() == 0 or h.shape[-1] != in_features:
        raise ValueError(f"h has last dimension {tuple(h.shape)[-1:] or '()'}, expected in_features={in_features}")
    if not isinstance(y, torch.Tensor) or tuple(h.shape[:-1]) != tuple(y.shape):
        shape_y = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"h shape {tuple(h.shape)} does not match y shape {shape_y} (need h.shape == y.shape + (d,))")
    if h.device != device:
        raise ValueError(f"h is on {h.device} but the layer is on {device}")
    y, keep = _checked_labels(y, n_classes, ignore_index, device)
    h = h.reshape(-1, in_features)[keep]
    if y.numel() and not bool(torch.isfinite(h).all()):
        raise ValueError("h contains non-finite values (nan or inf) at non-ignored positions")
    return h, y


def _project(w: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Project rows of ``w`` onto the ball ``‖w‖ ≤ max_norm``."""
    norm = w.norm(dim=-1, keepdim=True)
    return w * (max_norm / norm.clamp_min(max_norm))


def _counts_of(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, occurrences) for ``counts.index_add_`` — index_add_ on int64 is exact."""
    return y, torch.ones_like(y)


def _class_means(
    h: torch.Tensor, y: torch.Tensor, use_matmul: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class occurrence counts and mean activations of a flat batch.

    Returns ``classes (U,)`` sorted, ``n (U,)`` int64 and ``h̄ (U, d)`` float32.
    ``use_matmul`` picks the summation (default: matmul on CUDA, index_add_ elsewhere).
    """
    classes, inverse = torch.unique(y, return_inverse=True)
    n = torch.bincount(inverse, minlength=classes.numel())
    if h.is_cuda if use_matmul is None else use_matmul:
        # Float atomics in index_add_ make CUDA sums order-dependent; a one-hot matmul is
        # deterministic, which keeps data-parallel replicas bit-identical.
        onehot = F.one_hot(inverse, classes.numel()).T.float()  # (U, N)
        sums = onehot @ h.float()
    else:
        sums = torch.zeros(classes.numel(), h.shape[1], dtype=torch.float32, device=h.device)
        sums.index_add_(0, inverse, h.float())
    return classes, n, sums / n.unsqueeze(1).float()


def _gather_batch(h: torch.Tensor | None, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """All-gather variable-sized ``(h (N, d), y (N,))`` across ranks, in rank order.

    ``h`` may be None to gather labels only. A no-op outside an initialized process group. Sends the sizes, then the batches padded
    to the largest one: traffic is O(world × max_batch × d), independent of the vocabulary.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return h, y
    world = dist.get_world_size()
    size = torch.tensor([y.numel()], dtype=torch.int64, device=y.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_ = [int(s) for s in sizes]
    m = max(sizes_)
    if m == 0:
        return h, y
    pad_y = y.new_zeros(m)
    pad_y[: y.numel()] = y
    ys = [torch.empty_like(pad_y) for _ in range(world)]
    dist.all_gather(ys, pad_y)
    y_all = torch.cat([t[:s] for t, s in zip(ys, sizes_)])
    if h is None:
        return None, y_all
    pad_h = h.new_zeros(m, h.shape[1])
    pad_h[: h.shape[0]] = h
    hs = [torch.empty_like(pad_h) for _ in range(world)]
    dist.all_gather(hs, pad_h)
    return torch.cat([t[:s] for t, s in zip(hs, sizes_)]), y_all
