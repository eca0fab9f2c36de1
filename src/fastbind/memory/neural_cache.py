"""Neural cache: a next-token distribution from the recent (hidden state, target) stream.

Grave, Joulin, Usunier. "Improving Neural Language Models with a Continuous Cache",
ICLR 2017 (arXiv 2016), eq. 1::

    p_cache(w | h_t) ∝ Σ_i exp(θ · h_tᵀ h_i) · 1{y_i = w}

over the entries ``(h_i, y_i)`` visible to step ``t``: the last ``size`` entries written
before it, i.e. entries from earlier calls, then earlier positions of the same chunk. The
cache is mixed with the model in probability space (see :func:`fastbind.mix_log_probs`).

Cost per chunk of ``L`` queries against ``M ≤ size`` stored entries: one ``(L, d) × (d, M+L)``
matmul and a few passes over the ``(L, M+L)`` scores; :meth:`NeuralCache.log_prob` never
builds a vocabulary-sized tensor (the matching entries of each target are found by a sort of
the stored labels, and their log-sum-exp is taken over those pairs only).
"""

from __future__ import annotations

import torch

from fastbind.memory.knn import DEFAULT_BUDGET_BYTES, RingStore, positive_int

_NEG_INF = float("-inf")


class NeuralCache:
    """Continuous cache over a stream of ``(h, y)`` pairs (evaluation time; no parameters).

    Args:
        size: number of most recent entries a query can see (paper's ``n_cache``; 10,000 on
            WikiText-103 in Rae et al. 2018, appendix A.1).
        theta: inverse temperature θ > 0 of the cache softmax (0.3 there).
        budget_bytes: working memory of one block of queries; long chunks are processed in
            blocks so that the score matrix stays below it.

    The state (keys, labels) is explicit and never enters a state_dict: call :meth:`reset`
    between independent streams. The memory lives on the device and dtype of the first
    ``h`` written; later calls must match (ValueError otherwise).

    Example::

        cache = NeuralCache(size=10000, theta=0.3)
        for h, y in chunks:                      # h (L, d) hidden states, y (L,) next tokens
            lp_model = logits.log_softmax(-1).gather(1, y[:, None])[:, 0]
            lp = mix_log_probs(lp_model, (0.1, cache.log_prob(h, y)))
    """

    def __init__(self, size: int = 10000, theta: float = 0.3, *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if not float(theta) > 0:
            raise ValueError(f"theta must be > 0, got {theta}")
        self.size = positive_int(size, "size")
        self.theta = float(theta)
        self.budget_bytes = positive_int(budget_bytes, "budget_bytes")
        self._store = RingStore(self.size)

    def __len__(self) -> int:
        """Number of stored entries (at most ``size``)."""
        return len(self._store)

    def __repr__(self) -> str:
        return f"NeuralCache(size={self.size}, theta={self.theta}, stored={len(self)})"

    def reset(self) -> None:
        """Forget every entry (and the device/dtype they fixed)."""
        self._store.reset()

    @torch.no_grad()
    def write(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Append ``h (L, d)``, ``y (L,)`` without scoring them."""
        self._store.append(h, y)

    @torch.no_grad()
    def log_prob(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log p_cache(y_t | h_t)`` for each step of a chunk, then append the chunk.

        Args:
            h: ``(L, d)`` hidden states (the queries, and the keys written afterwards).
            y: ``(L,)`` integer targets (the values written afterwards).

        Returns:
            ``(L,)`` log-probabilities in ``h``'s dtype; ``-inf`` where no visible entry has
            label ``y_t`` (including when nothing is visible yet).
        """
        self._store.check(h, y)
        L = h.shape[0]
        out = h.new_full((L,), _NEG_INF)
        y = y.to(torch.int64)
        mem = self._store.view()
        sorted_vals = torch.sort(mem[1]) if mem is not None else None
        for t0, t1, parts in self._blocks(h, y, causal=True):
            b = t1 - t0
            yb = y[t0:t1]
            # Matching (query, entry) pairs; their scores are gathered before `parts` are
            # exponentiated in place below.
            rows, pair_scores = [], []
            for kind, s, vals in parts:
                if kind == "mem":
                    assert sorted_vals is not None
                    r, c = _pairs_sorted(sorted_vals, yb)
                else:
                    r, c = (vals[None, :] == yb[:, None]).nonzero(as_tuple=True)
                rows.append(r)
                pair_scores.append(s[r, c])
            if not parts:
                continue
            log_den = _log_sum_exp_rows([s for _, s, _ in parts], b)
            log_num = _segment_log_sum_exp(torch.cat(rows), torch.cat(pair_scores), b)
            lp = log_num - log_den
            out[t0:t1] = lp.masked_fill(torch.isneginf(log_num), _NEG_INF)
        self._store.append(h, y)
        return out

    @torch.no_grad()
    def distribution(self, h: torch.Tensor, num_classes: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Full cache distributions ``p_cache(· | h_t)``, ``(L, num_classes)``.

        Without ``y`` this only *reads* the memory as it stands: every query sees the same
        stored entries and nothing is appended (for generation). With ``y`` it takes the same
        causal view as :meth:`log_prob` (query ``t`` also sees chunk positions ``< t``) and
        then appends the chunk, so ``distribution(h, V, y).gather(1, y[:, None]).log()``
        equals ``log_prob(h, y)``.

        Rows of queries that see no entry at all are all zeros (not a distribution), which
        mixes correctly as ``(1 − λ)·p_model + λ·0``; every other row sums to one.
        """
        num_classes = positive_int(num_classes, "num_classes")
        self._store.check(h, y)
        L = h.shape[0]
        out = h.new_zeros((L, num_classes))
        mem = self._store.view()
        if y is not None:
            y = y.to(torch.int64)
            if L and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise ValueError(f"y must lie in [0, {num_classes}) for distribution(), "
                                 f"got [{int(y.min())}, {int(y.max())}]")
        if mem is not None and (int(mem[1].min()) < 0 or int(mem[1].max()) >= num_classes):
            raise ValueError(f"stored labels lie in [{int(mem[1].min())}, {int(mem[1].max())}], "
                             f"outside [0, {num_classes})")
        for t0, t1, parts in self._blocks(h, y, causal=y is not None):
            if not parts:
                continue
            b = t1 - t0
            scores = [s for _, s, _ in parts]
            log_den = _log_sum_exp_rows(scores, b, keep=True)  # scores now hold exp(s - m)
            inv_den = torch.exp(-log_den[1]).nan_to_num_(posinf=0.0)  # rows with nothing visible -> 0
            for (_, _, vals), e in zip(parts, scores):
                out[t0:t1].scatter_add_(1, vals.expand(b, -1), e.mul_(inv_den[:, None]))
        if y is not None:
            self._store.append(h, y)
        return out

    def _blocks(self, h: torch.Tensor, y: torch.Tensor | None, causal: bool):
        """Yield ``(t0, t1, parts)`` per block of queries; each part is ``(kind, scores, labels)``
        with ``scores (t1 - t0, n)`` = θ·hᵀk, ``-inf`` where the entry is not visible."""
        L = h.shape[0]
        mem = self._store.view()
        n_mem = 0 if mem is None else mem[0].shape[0]
        if mem is not None:
            mem_keys, mem_vals, mem_pos = mem
            age = (self._store.count - 1) - mem_pos  # 0 = newest

        def block_bytes(rows: int) -> int:  # scores of one block, and as much again for temporaries
            return 2 * rows * (n_mem + (min(L, self.size + rows) if causal else 0)) * h.element_size()

        rows = max(1, L)
        while rows > 1 and block_bytes(rows) > self.budget_bytes:
            rows = (rows + 1) // 2
        for t0 in range(0, L, rows):
            t1 = min(L, t0 + rows)
            q = h[t0:t1] * self.theta  # (b, d)
            t = torch.arange(t0, t1, device=h.device)
            parts = []
            if mem is not None and (not causal or t0 < self.size):
                s = q @ mem_keys.T  # (b, M)
                if causal:
                    # Query t sees stored entries of age < size - t; only the oldest few
                    # entries are hidden from some query of the block.
                    old = (age >= self.size - (t1 - 1)).nonzero(as_tuple=True)[0]
                    if old.numel():
                        hidden = age[old][None, :] >= (self.size - t)[:, None]
                        s[:, old] = s[:, old].masked_fill(hidden, _NEG_INF)
                parts.append(("mem", s, mem_vals))
            if causal:
                c0, c1 = max(0, t0 - self.size), t1 - 1  # chunk columns any query of the block sees
                if c1 > c0:
                    assert y is not None
                    s = q @ h[c0:c1].T  # (b, c1 - c0)
                    j = torch.arange(c0, c1, device=h.device)
                    hidden = (j[None, :] >= t[:, None]) | (j[None, :] < (t - self.size)[:, None])
                    parts.append(("chunk", s.masked_fill_(hidden, _NEG_INF), y[c0:c1]))
            yield t0, t1, parts


def _pairs_sorted(sorted_vals, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(row, col)`` with ``vals[col] == yb[row]``, from ``torch.sort(vals)``; O(pairs + b log M)."""
    sv, si = sorted_vals
    start = torch.searchsorted(sv, yb)
    count = torch.searchsorted(sv, yb, right=True) - start  # (b,)
    rows = torch.repeat_interleave(torch.arange(yb.shape[0], device=yb.device), count)
    first = torch.cumsum(count, 0) - count  # offset of each row's first pair
    offs = torch.arange(rows.shape[0], device=yb.device) - first[rows]
    return rows, si[start[rows] + offs]


def _log_sum_exp_rows(scores: list[torch.Tensor], b: int, keep: bool = False):
    """Row-wise log-sum-exp over the concatenation of ``scores`` (each ``(b, n_i)``), computed
    in place (the tensors end up holding ``exp(s - m)``). ``-inf`` for rows with no finite
    score. With ``keep`` returns ``(lse, lse - m)`` so callers can normalise the exps."""
    m = torch.stack([s.amax(1) if s.shape[1] else s.new_full((b,), _NEG_INF) for s in scores]).amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = m.new_zeros(b)
    for s in scores:
        total += s.sub_(m[:, None]).exp_().sum(1)
    log_total = total.log()
    return (log_total + m, log_total) if keep else log_total + m


def _segment_log_sum_exp(rows: torch.Tensor, values: torch.Tensor, b: int) -> torch.Tensor:
    """``out[r] = log Σ_{i: rows[i] = r} exp(values[i])``, ``-inf`` for empty segments."""
    out = values.new_full((b,), _NEG_INF)
    if rows.numel() == 0:
        return out
    m = out.scatter_reduce(0, rows, values, reduce="amax", include_self=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = values.new_zeros(b).index_add_(0, rows, torch.exp(values - m[rows]))
    return total.log() + m
