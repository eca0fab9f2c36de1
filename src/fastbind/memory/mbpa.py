"""Memory-based Parameter Adaptation (MbPA) of an output layer.

Sprechmann, Jayakumar, Rae, Pritzel, Badia, Uria, Vinyals, Hassabis, Pascanu, Blundell.
"Memory-based Parameter Adaptation", ICLR 2018; used at evaluation time on WikiText-103
with a neural cache by Rae et al. (2018), appendix A.1 (K = 1024, 1 step, lr 0.3, β 0.5,
memory 10,000, λ_mbpa 0.04).

The memory stores ``(h_i, y_i)`` pairs of a stream (keys = hidden states, values = labels)
for any classifier. For a query ``h_t`` it retrieves the ``K`` nearest visible keys
(squared Euclidean), weights them by the kernel ``w_k ∝ 1 / (ε + ‖h_t − h_k‖²)`` (normalised
to sum 1) and takes ``steps`` gradient steps of size ``lr`` from the given output layer
``(W₀, b₀)`` on::

    L(W, b) = Σ_k w_k · CE(W h_k + b, y_k) + l2 · (‖W − W₀‖² + ‖b − b₀‖²)

then predicts with ``softmax(W′ h_t + b′)``. The base weights are never modified.

Exact algebra instead of autograd: every gradient of ``L`` w.r.t. ``W`` is a sum of outer
products ``Σ_k g_k h_kᵀ`` plus ``2·l2·(W − W₀)``, so after any number of steps
``W′ = W₀ + Cᵀ H`` (``H (K, d)`` the neighbour keys, ``C (K, V)`` coefficients) and
``b′ = b₀ + c``. One step updates ``C ← (1 − 2·lr·l2)·C − lr·w ⊙ (P − E)`` with ``P`` the
neighbours' softmax under the current layer (``Z = H W₀ᵀ + b₀ + (H Hᵀ) C + c``) and ``E``
their one-hot labels; the query's logits are ``W₀ h_t + b₀ + (H h_t)ᵀ C + c``.

Costs (V classes, d features, K neighbours, S candidate entries, per chunk of L queries):

* ``steps == 1`` (the paper's setting): the first step starts from ``W₀`` for every query,
  so each stored entry's base distribution ``p_k = softmax(W₀ h_k + b₀)`` is the same for
  every query. MbPA keeps it beside the entry (computed from the chunk's own base logits
  when the chunk is written, so at no extra cost) as long as ``size·V`` numbers fit in
  ``base_cache_bytes``; a query then costs ``O(S·d)`` for the search plus ``O(U·V / L)``
  for ``Σ_k a_k p_k``, with ``U ≤ min(S, L·K)`` the distinct neighbours of its block of
  ``L`` queries. The cache belongs to one output layer: called with another one (or the
  same tensors changed in place), MbPA recomputes it once for the stored entries.
  Without the cache the distinct neighbours' distributions are recomputed per block:
  ``O(U·V·d + L·U·V)``. When ``budget_bytes`` cannot hold a whole chunk (about
  ``(2V + 2S)`` numbers per query) the work is split into blocks of queries.
* ``steps > 1``: the later steps are query-specific: ``O(K·V·(d + min(K, 2d)))`` per query
  per step, with ``3·K·V`` numbers of working memory per query (at K = 1024, V = 33,278 in
  float32 about 400 MB, whatever the budget).

The memory window is the neural cache's: a query sees the last ``size`` entries written
before it (earlier calls, then earlier positions of the same chunk). With
``policy="reservoir"`` the memory keeps a uniform sample of every entry written instead (a
continual learner's episodic memory); it is read with :meth:`MbPA.logits`, which sees every
stored entry and writes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbind.memory import knn
from fastbind.memory.knn import DEFAULT_BUDGET_BYTES, RingStore, positive_int

# Default bound on the table of stored entries' base distributions (steps == 1).
DEFAULT_BASE_CACHE_BYTES = 2 << 30

# Gathered neighbour keys per block of the exact distance computation.
_PAIR_BLOCK_BYTES = 4 << 20


class MbPA:
    """Episodic memory plus local adaptation of an output layer (evaluation time).

    Args:
        size: number of most recent entries a query can see (memory size).
        k: neighbours retrieved per query (all visible entries if fewer).
        steps: gradient steps of the local adaptation (≥ 1).
        lr: step size (> 0).
        l2: weight β ≥ 0 of the pull ``‖W − W₀‖² + ‖b − b₀‖²`` back to the base layer.
        eps: ε > 0 of the kernel ``1 / (ε + ‖h_t − h_k‖²)``.
        knn_backend: ``"auto"``, ``"torch"`` or ``"faiss"`` (see :func:`fastbind.memory.knn.search`).
        budget_bytes: working memory of one block of queries (see the module docstring for
            what cannot be split further).
        base_cache_bytes: largest ``size × V`` table of the stored entries' base
            distributions kept for ``steps == 1`` (see the module docstring); 0 turns it off.
        policy: which entries stay once ``size`` are stored: ``"recent"`` (the last ``size``,
            for streams scored with :meth:`log_prob`) or ``"reservoir"`` (a uniform sample of
            every entry written, for a continual learner's episodic memory, read with
            :meth:`logits`); see :class:`fastbind.memory.knn.RingStore`.
        seed: the reservoir's generator seed.
        exact_distances: recompute each neighbour's ``‖h_t − h_k‖²`` and ``h_tᵀh_k`` from the
            gathered keys (exact, the default); False takes them from the search's
            ``‖h_t‖² − 2 h_tᵀh_k + ‖h_k‖²`` (no gather of ``K × d`` numbers per query: several
            times faster for wide keys and large K, at the price of cancellation where a
            query nearly equals a stored key — harmless when queries are never stored, as for
            a classifier's test set).

    The state is explicit (never in a state_dict); :meth:`reset` clears it. The memory lives
    on the device/dtype of the first ``h`` written; later inputs and the weights must match.

    Example::

        mbpa = MbPA(size=10000, k=1024, steps=1, lr=0.3, l2=0.5)
        W, b = model.output_layer()                   # (V, d), (V,) or None
        lp_mbpa = mbpa.log_prob(h, y, W, b)           # (L,); then appends (h, y)
    """

    def __init__(
        self,
        size: int = 10000,
        k: int = 1024,
        steps: int = 1,
        lr: float = 0.3,
        l2: float = 0.5,
        eps: float = 1e-3,
        *,
        knn_backend: knn.Backend = "auto",
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        base_cache_bytes: int = DEFAULT_BASE_CACHE_BYTES,
        policy: knn.Policy = "recent",
        seed: int = 0,
        exact_distances: bool = True,
    ) -> None:
        self.size = positive_int(size, "size")
        self.k = positive_int(k, "k")
        self.steps = positive_int(steps, "steps")
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not float(l2) >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if not float(eps) > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if knn_backend not in ("auto", "torch", "faiss"):
            raise ValueError(f"knn_backend must be 'auto', 'torch' or 'faiss', got {knn_backend!r}")
        if knn_backend == "faiss" and not knn.faiss_available():
            raise ImportError("knn_backend='faiss' needs the faiss package (pip install faiss-cpu); "
                              "use 'auto' or 'torch'")
        self.lr, self.l2, self.eps = float(lr), float(l2), float(eps)
        self.knn_backend: knn.Backend = knn_backend
        self.budget_bytes = positive_int(budget_bytes, "budget_bytes")
        if isinstance(base_cache_bytes, bool) or not isinstance(base_cache_bytes, int) or base_cache_bytes < 0:
            raise ValueError(f"base_cache_bytes must be an integer >= 0, got {base_cache_bytes!r}")
        self.base_cache_bytes = base_cache_bytes
        self._store = RingStore(self.size, policy, seed)
        self.exact_distances = bool(exact_distances)
        self._probs: torch.Tensor | None = None  # (slots, V) base distributions, slot-aligned with the store
        self._probs_layer: tuple | None = None  # the output layer they were computed with

    def __len__(self) -> int:
        """Number of stored entries (at most ``size``)."""
        return len(self._store)

    def __repr__(self) -> str:
        return (f"MbPA(size={self.size}, k={self.k}, steps={self.steps}, lr={self.lr}, l2={self.l2}, "
                f"eps={self.eps}, stored={len(self)})")

    @property
    def store(self) -> RingStore:
        """The episodic memory itself (keys, labels, payload), e.g. for experience replay."""
        return self._store

    def reset(self) -> None:
        """Forget every entry (and the device/dtype they fixed)."""
        self._store.reset()
        self._probs = self._probs_layer = None

    def state_dict(self) -> dict:
        """The stored entries (keys, labels, write count), e.g. for a training recipe that resumes.

        Evaluation-time memories are never part of a model checkpoint; this is for the
        callers whose memory is part of the training state (the curriculum's MbPA head).
        """
        return self._store.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the base distributions are recomputed on the next call."""
        self._store.load_state_dict(state)
        self._probs = self._probs_layer = None

    @torch.no_grad()
    def write(self, h: torch.Tensor, y: torch.Tensor, payload: torch.Tensor | None = None) -> None:
        """Append ``h (L, d)``, ``y (L,)`` without scoring them (e.g. to preload examples), with an
        optional ``payload (L, ...)`` kept beside each entry (e.g. the inputs, for replay)."""
        self._store.append(h, y, payload)
        self._probs_layer = None  # no layer given: the next scoring call recomputes the base distributions

    @torch.no_grad()
    def log_prob(self, h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log p_mbpa(y_t | h_t)`` for each step of a chunk, then append the chunk.

        Args:
            h: ``(L, d)`` queries (and keys written afterwards).
            y: ``(L,)`` integer labels in ``[0, V)``.
            weight: ``(V, d)`` output layer to adapt (``nn.Linear`` layout); not modified.
            bias: ``(V,)`` or None (then no bias is adapted either).
            mask: optional ``(L,)`` bool: score only these positions (the others come back
                as NaN and cost only their memory write), e.g. to estimate a long stream's
                perplexity from every n-th target while the memory still sees every step.

        Returns:
            ``(L,)`` log-probabilities; a query with no visible entry gets the unadapted
            model's ``log_softmax(W h_t + b)[y_t]``.
        """
        if self._store.policy != "recent":
            raise ValueError(f"log_prob scores a stream against its most recent entries; this memory keeps "
                             f"policy={self._store.policy!r}: read it with logits()")
        self._store.check(h, y)
        V = self._check_layer(h, weight, bias)
        y = y.to(torch.int64)
        L, N = h.shape[0], self._store.count
        if L and (int(y.min()) < 0 or int(y.max()) >= V):
            raise ValueError(f"y must lie in [0, {V}), got values in [{int(y.min())}, {int(y.max())}]")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                                 or mask.shape != (L,) or mask.device != h.device):
            desc = (f"{tuple(mask.shape)} {mask.dtype} on {mask.device}" if isinstance(mask, torch.Tensor)
                    else type(mask).__name__)
            raise ValueError(f"mask must be a bool tensor of shape ({L},) on {h.device}, got {desc}")
        cached = self._use_base_cache(V, h)
        if cached:
            self._refresh_base_cache(weight, bias)
        mem = self._store.view()
        out = h.new_full((L,), float("nan"))
        sel = torch.arange(L, device=h.device) if mask is None else mask.nonzero()[:, 0]
        # With the cache, the base logits of every row of the chunk (its entries' distributions
        # are stored below); without, each block of queries computes its own.
        base = F.linear(h, weight, bias) if cached else None
        chunk_probs = base.softmax(1) if base is not None else None
        n_cols = (0 if mem is None else mem[0].shape[0]) + min(L, self.size)
        for b0, b1 in self._query_blocks(sel.shape[0], V, n_cols, h.element_size()):
            t = sel[b0:b1]
            t_first, t_last = (int(t[0]), int(t[-1])) if mask is not None else (b0, b1 - 1)
            # Candidates: the stored entries, then the chunk positions some query of the block
            # sees; the window [N + t - size, N + t) of stream positions picks each query's own.
            parts = [mem] if mem is not None and t_first < self.size else []
            c0, c1 = max(0, t_first - self.size), t_last
            if c1 > c0:
                parts.append((h[c0:c1], y[c0:c1], N + torch.arange(c0, c1, device=h.device)))
            keys, vals, pos = ([p[i] for p in parts] for i in range(3))
            probs = None
            if cached:
                assert chunk_probs is not None
                probs = [chunk_probs[c0:c1]] if c1 > c0 else []
                if parts and parts[0] is mem:
                    assert self._probs is not None  # refreshed above for every stored entry
                    probs.insert(0, self._probs[: mem[0].shape[0]])
            logits = self._adapted_logits(h[t], keys, vals, pos, N + t - self.size, N + t, weight, bias,
                                          logits=None if base is None else base.index_select(0, t), probs=probs)
            out[t] = logits.log_softmax(1).gather(1, y[t, None])[:, 0]
        self._store.append(h, y)
        if cached:
            assert chunk_probs is not None
            self._append_base_cache(chunk_probs)
        return out

    @torch.no_grad()
    def logits(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Adapted logits ``W′ h_t + b′``, ``(L, V)``, for generation.

        Reads the memory as it stands (every query sees all stored entries) and appends
        nothing. With an empty memory these are the model's logits ``W h_t + b``.
        """
        self._store.check(h)
        V = self._check_layer(h, weight, bias)
        mem = self._store.view()
        L = h.shape[0]
        out = h.new_empty((L, V))
        n_cols = 0 if mem is None else mem[0].shape[0]
        cached = mem is not None and self._use_base_cache(V, h)
        if cached:
            self._refresh_base_cache(weight, bias)
        parts = ([mem[0]], [mem[1]], [mem[2]]) if mem is not None else ([], [], [])
        probs = [self._probs[:n_cols]] if cached and self._probs is not None else None
        for t0, t1 in self._query_blocks(L, V, n_cols, h.element_size()):
            out[t0:t1] = self._adapted_logits(h[t0:t1], *parts, None, None, weight, bias, probs=probs)
        return out

    # -- the base-distribution cache (steps == 1) -----------------------------------------

    def _use_base_cache(self, V: int, h: torch.Tensor) -> bool:
        return self.steps == 1 and self.size * V * h.element_size() <= self.base_cache_bytes

    @staticmethod
    def _layer_key(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        # Identity and in-place version of each tensor: an optimizer step or a copy_ into the
        # layer changes the version, a different layer the pointer.
        return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) if t is not None else None
                     for t in (weight, bias))

    def _refresh_base_cache(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Make the cached distributions those of ``(weight, bias)`` for every stored entry."""
        key = self._layer_key(weight, bias)
        mem = self._store.view()
        if mem is None:
            self._probs_layer = key
            return
        if key == self._probs_layer and self._probs is not None and self._probs.shape[1] == weight.shape[0]:
            return
        keys = mem[0]
        probs = keys.new_empty((keys.shape[0], weight.shape[0]))
        rows = max(1, self.budget_bytes // max(1, weight.shape[0] * keys.element_size()))
        for i0 in range(0, keys.shape[0], rows):
            probs[i0:i0 + rows] = F.linear(keys[i0:i0 + rows], weight, bias).softmax(1)
        self._probs, self._probs_layer = probs, key

    def _append_base_cache(self, chunk_probs: torch.Tensor) -> None:
        """Store the distributions of the rows just appended, in the store's slot layout."""
        cap = self._store.capacity
        if self._probs is None or self._probs.shape[0] < cap:
            grown = chunk_probs.new_empty((cap, chunk_probs.shape[1]))
            if self._probs is not None:  # the store only grows before it wraps: slot == position
                grown[: self._probs.shape[0]] = self._probs
            self._probs = grown
        n = min(chunk_probs.shape[0], self.size)
        if n:
            start = self._store.count - n
            slots = torch.remainder(torch.arange(start, start + n, device=chunk_probs.device), self.size)
            self._probs.index_copy_(0, slots, chunk_probs[chunk_probs.shape[0] - n:])

    # -- internals ------------------------------------------------------------------------

    def _check_layer(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != h.shape[1]:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"weight must be (V, {h.shape[1]}) to match h, got {shape}")
        V = weight.shape[0]
        if weight.device != h.device or weight.dtype != h.dtype:
            raise ValueError(f"weight has dtype {weight.dtype} on device {weight.device} "
                             f"but h has dtype {h.dtype} on device {h.device}")
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or bias.shape != (V,):
                shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
                raise ValueError(f"bias must be ({V},) or None, got {shape}")
            if bias.device != h.device or bias.dtype != h.dtype:
                raise ValueError(f"bias has dtype {bias.dtype} on device {bias.device} "
                                 f"but h has dtype {h.dtype} on device {h.device}")
        mem = self._store.view()
        if mem is not None and int(mem[1].max()) >= V:
            raise ValueError(f"the memory holds label {int(mem[1].max())}, outside this layer's {V} classes")
        return V

    def _query_blocks(self, L: int, V: int, n_cols: int, itemsize: int):
        # Per query: base logits and accumulator (2V), distances and the coefficient row (2S).
        rows = max(1, (self.budget_bytes // 2) // max(1, (2 * V + 2 * n_cols) * itemsize))
        for t0 in range(0, L, rows):
            yield t0, min(L, t0 + rows)

    def _adapted_logits(self, q, keys, vals, pos, lo, hi, weight, bias, *, logits=None, probs=None) -> torch.Tensor:
        """``(B, V)`` logits of queries ``q (B, d)`` after adapting on their neighbours among
        the candidate entries (``keys``/``vals``/``pos`` lists of parts), window ``[lo, hi)``.
        ``logits``: the queries' unadapted logits when already computed (overwritten);
        ``probs``: the candidates' base distributions, parts aligned with ``keys``."""
        if logits is None:
            logits = F.linear(q, weight, bias)  # (B, V) unadapted
        if not keys:
            return logits
        keys_c = keys[0] if len(keys) == 1 else torch.cat(keys)  # (S, d)
        vals_c = vals[0] if len(vals) == 1 else torch.cat(vals)  # (S,)
        window = {}
        if lo is not None:
            window = dict(positions=pos[0] if len(pos) == 1 else torch.cat(pos), lo=lo, hi=hi)
        rank_d2, idx = knn.search(q, keys_c, self.k, backend=self.knn_backend,
                                  budget_bytes=self.budget_bytes, **window)  # (B, kk)
        valid = torch.isfinite(rank_d2)
        if not bool(valid.any()):
            return logits
        if self.exact_distances:
            d2, dots = self._pair_stats(q, keys_c, idx)  # exact ‖h_t − h_k‖² and h_tᵀh_k
        else:  # from the search: h_tᵀh_k = (‖h_t‖² + ‖h_k‖² − d²) / 2
            d2 = torch.where(valid, rank_d2, torch.zeros_like(rank_d2))
            dots = 0.5 * (q.pow(2).sum(1, keepdim=True) + keys_c.pow(2).sum(1)[idx] - d2)
        w = torch.where(valid, 1.0 / (self.eps + d2), torch.zeros_like(d2))
        w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)  # rows with nothing visible stay 0
        if self.steps == 1:
            return self._one_step(logits, keys_c, vals_c, idx, valid, w, dots, weight, bias, probs)
        return self._several_steps(logits, keys_c, vals_c, idx, w, dots, weight, bias)

    def _pair_stats(self, q, keys, idx):
        B, kk = idx.shape
        d2, dots = q.new_empty((B, kk)), q.new_empty((B, kk))
        # Small blocks: the gathered neighbours stay in cache for the three passes over them
        # (several times faster on a CPU than one large gather).
        block = min(self.budget_bytes // 2, _PAIR_BLOCK_BYTES)
        rows = max(1, block // max(1, 2 * kk * q.shape[1] * q.element_size()))
        for i0 in range(0, B, rows):
            nb = keys.index_select(0, idx[i0:i0 + rows].reshape(-1)).view(-1, kk, keys.shape[1])  # (b, kk, d)
            qb = q[i0:i0 + rows, None, :]
            dots[i0:i0 + rows] = (nb @ qb.transpose(1, 2))[..., 0]
            d2[i0:i0 + rows] = (nb - qb).pow_(2).sum(-1)
        return d2, dots

    def _one_step(self, logits, keys, vals, idx, valid, w, dots, weight, bias, probs=None):
        """One step from (W₀, b₀) for every query, sharing the neighbours' softmax:
        ``logits − lr · Σ_k w_k (h_tᵀh_k + 1) (p_k − e_{y_k})`` (no ``+ 1`` without a bias).
        ``probs``: the candidates' cached base distributions (parts in candidate order)."""
        B, V = logits.shape
        a = w * (dots + 1.0) if bias is not None else w * dots  # (B, kk)
        rows = torch.arange(B, device=idx.device)[:, None].expand_as(idx)[valid]
        uniq, inv = torch.unique(idx[valid], return_inverse=True)  # (U,), sorted
        coef = logits.new_zeros((B, uniq.shape[0]))
        coef.index_put_((rows, inv), a[valid], accumulate=True)
        step = logits.new_zeros((B, V))
        block = max(1, (self.budget_bytes // 2) // max(1, V * logits.element_size()))
        if probs is not None:
            # Σ_k a_k p_k from the cached rows, part by part (uniq is sorted, so each part's
            # neighbours are a contiguous range of it). When most rows of a part are someone's
            # neighbour, multiplying by the whole part beats copying the rows out of it.
            start = 0
            for part in probs:
                n = part.shape[0]
                lo_u, hi_u = (int(i) for i in torch.searchsorted(uniq, torch.tensor([start, start + n],
                                                                                    device=uniq.device)))
                if 2 * (hi_u - lo_u) > n:
                    dense = logits.new_zeros((B, n))
                    dense.index_copy_(1, uniq[lo_u:hi_u] - start, coef[:, lo_u:hi_u])
                    step.addmm_(dense, part)
                else:
                    for u0 in range(lo_u, hi_u, block):
                        u1 = min(hi_u, u0 + block)
                        step.addmm_(coef[:, u0:u1], part.index_select(0, uniq[u0:u1] - start))
                start += n
        for u0 in range(0, 0 if probs is not None else uniq.shape[0], block):
            z = keys[uniq[u0:u0 + block]] @ weight.T  # (u, V) neighbour logits under W₀
            if bias is not None:
                z += bias
            z.sub_(z.amax(1, keepdim=True)).exp_()
            step.addmm_(coef[:, u0:u0 + block] / z.sum(1)[None, :], z)  # Σ_k a_k p_k
            del z  # before the next block is allocated
        step.index_put_((rows, vals[idx][valid]), -a[valid], accumulate=True)  # − Σ_k a_k e_{y_k}
        return logits.sub_(step, alpha=self.lr)

    def _several_steps(self, logits, keys, vals, idx, w, dots, weight, bias):
        """``steps`` steps per query with the rank-K representation ``W₀ + Cᵀ H``."""
        B, V = logits.shape
        kk, d = idx.shape[1], keys.shape[1]
        decay = 1.0 - 2.0 * self.lr * self.l2
        use_gram = kk <= 2 * d  # (H Hᵀ) C costs K²V, H (Hᵀ C) costs 2KdV
        rows = max(1, self.budget_bytes // max(1, 3 * kk * V * logits.element_size()))
        for i0 in range(0, B, rows):
            i1 = min(B, i0 + rows)
            H = keys[idx[i0:i1]]  # (b, kk, d)
            y_nb = vals[idx[i0:i1]][..., None]  # (b, kk, 1)
            w_nb = w[i0:i1, :, None]  # (b, kk, 1)
            z0 = F.linear(H, weight, bias)  # (b, kk, V) neighbour logits under W₀
            C = torch.zeros_like(z0)
            c = logits.new_zeros((i1 - i0, 1, V)) if bias is not None else None
            G = H @ H.transpose(1, 2) if use_gram else None  # (b, kk, kk)
            for s in range(self.steps):
                if s == 0:
                    z = z0.clone()
                elif G is not None:
                    z = torch.baddbmm(z0, G, C)
                else:
                    z = torch.baddbmm(z0, H, H.transpose(1, 2) @ C)
                if c is not None and s > 0:
                    z += c
                z.sub_(z.amax(2, keepdim=True)).exp_()
                z.div_(z.sum(2, keepdim=True))  # P
                g = z.mul_(w_nb).scatter_add_(2, y_nb, -w_nb)  # w ⊙ (P − E), the loss part of the gradient
                C.mul_(decay).sub_(g, alpha=self.lr)
                if c is not None:
                    c.mul_(decay).sub_(g.sum(1, keepdim=True), alpha=self.lr)
                del z, g
            logits[i0:i1] += (dots[i0:i1, None, :] @ C)[:, 0]
            if c is not None:
                logits[i0:i1] += c[:, 0]
        return logits
