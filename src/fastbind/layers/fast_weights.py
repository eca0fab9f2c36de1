"""Fast Weight Memory: a tensor of fast weights written and read at every step by a delta rule.

Schlag, Munkhdalai, Schmidhuber. "Learning Associative Inference Using Fast Weight Memory",
ICLR 2021, section 3 (the catbAbI model of the authors' public code).

Each sequence of the batch owns a fast-weight tensor ``F ∈ R^{s×r×t}``, zero at the start of a
stream and carried across segments. At step ``τ``, from the recurrent output ``z_τ``:

* **write** — ``[s, r, t, b] = W_write z``; ``s, r, t = tanh(·)``; ``β = σ(b + 1)``. The key is
  ``k = s ⊗ r``; what it retrieves now is ``v = F·k`` (contract ``s`` and ``r``); the delta rule
  moves that toward ``t``::

      F ← F + k ⊗ (β_eff · (t − v)),   β_eff = β / t_size   (the authors' scale)
      F ← F / max(1, ‖F‖)              (Frobenius norm of each sequence's tensor)

* **read** (``hops`` times, from the updated ``F``) — ``[q, r_1 … r_n] = W_read z``; for each hop
  ``q ← LayerNorm(F·(q ⊗ tanh(r_k)))`` without affine parameters; the output is
  ``Linear(q)`` (``t → hidden``), added to ``z`` when ``residual``.

The read never feeds back into the recurrent network, so a whole segment's ``z`` can come from
a fused ``nn.LSTM`` and both projections run as one matrix product over the segment; only the
fast-weight recurrence itself is a loop over time, a few batched matrix products per step.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FWMHistory", "FWMOutput", "FastWeightMemory", "delta_write", "fwm_read"]


class FWMOutput(NamedTuple):
    out: torch.Tensor  # (B, L, hidden)
    state: torch.Tensor  # (B, s, r, t), after the last step
    norm: torch.Tensor  # (B, L), ‖F‖ after each write and before the clip (the authors' regularizer value)


class FWMHistory(NamedTuple):
    """The fast weights of a stream that started empty, kept as its writes (:meth:`FastWeightMemory.step`).

    ``F_τ = Σ_{j ≤ τ} (P_{j−1} / P_τ) · (s_j ⊗ r_j) ⊗ δ_j`` (see :func:`_scan_segment`): the
    factors and deltas of every write so far and the log-products of the clip's divisors.
    """

    s: torch.Tensor  # (B, τ, s)
    r: torch.Tensor  # (B, τ, r)
    delta: torch.Tensor  # (B, τ, t)
    log_before: torch.Tensor  # (B, τ): log P_{j−1}
    log_p: torch.Tensor  # (B,): log P_τ
    sq: torch.Tensor  # (B,): ‖F_τ‖²

    def dense(self) -> torch.Tensor:
        """``F_τ`` as a ``(B, s, r, t)`` tensor."""
        B, n, S = self.s.shape
        w = torch.exp(self.log_before - self.log_p.unsqueeze(1)).unsqueeze(2)  # (B, τ, 1)
        keys = (self.s.unsqueeze(3) * self.r.unsqueeze(2)).reshape(B, n, -1) * w
        return torch.bmm(keys.transpose(1, 2), self.delta).view(B, S, self.r.shape[2], self.delta.shape[2])


def delta_write(fw: torch.Tensor, s: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One delta-rule write and the norm clip.

    ``F ← F + (s ⊗ r) ⊗ (β · (t − F·(s ⊗ r)))``, then ``F ← F / max(1, ‖F‖)``. With ``β = 1``, a
    unit key (``‖s ⊗ r‖ = 1``) and the clip inactive, writing ``t₂`` after ``t₁`` to the same key
    leaves ``F`` as if only ``t₂`` had been written.

    Args:
        fw: ``(B, s, r, t)`` fast weights.
        s: ``(B, s)``, r: ``(B, r)`` — the key's two factors.
        t: ``(B, t)`` the value to store.
        beta: ``(B,)`` write strength.

    Returns:
        ``(F', norm)``: the new fast weights ``(B, s, r, t)`` and ``‖F‖`` before the clip ``(B,)``.
    """
    B, S, R, T = fw.shape
    key = (s.unsqueeze(2) * r.unsqueeze(1)).reshape(B, 1, S * R)  # (B, 1, s·r)
    flat = fw.reshape(B, S * R, T)
    v = torch.bmm(key, flat)  # (B, 1, t): what the key retrieves now
    delta = beta.view(B, 1, 1) * (t.unsqueeze(1) - v)  # (B, 1, t)
    flat = torch.baddbmm(flat, key.transpose(1, 2), delta)  # F + k ⊗ delta
    norm = flat.flatten(1).norm(dim=1)  # (B,)
    flat = flat / norm.clamp(min=1.0).view(B, 1, 1)
    return flat.view(B, S, R, T), norm


def fwm_read(fw: torch.Tensor, q: torch.Tensor, rs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Multi-hop read: for each hop ``q ← LayerNorm(F·(q ⊗ r_k))`` (no affine parameters).

    Args:
        fw: ``(B, s, r, t)`` fast weights (``s == t`` when there is more than one hop).
        q: ``(B, s)`` the first query.
        rs: ``(B, hops, r)`` the relation of each hop (already squashed).
        eps: LayerNorm epsilon.

    Returns:
        ``(B, t)`` the last hop's normalised read.
    """
    B, S, R, T = fw.shape
    by_s = fw.reshape(B, S, R * T)
    for k in range(rs.shape[1]):
        m = torch.bmm(q.unsqueeze(1), by_s).view(B, R, T)  # contract s: (B, r, t)
        q = torch.bmm(rs[:, k].unsqueeze(1), m).squeeze(1)  # contract r: (B, t)
        q = F.layer_norm(q, (T,), eps=eps)
    return q


def _scan_steps(fw: torch.Tensor, s: torch.Tensor, r: torch.Tensor, t: torch.Tensor, beta: torch.Tensor,
                q0: torch.Tensor, rr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recurrence as written: the dense ``F`` updated and read at every step.

    Shapes: ``fw (B, s, r, t)``; ``s, r, t, q0`` ``(B, L, ·)``; ``beta (B, L)``; ``rr (B, L, hops, r)``.
    Returns the reads ``(B, L, t)``, the last ``F`` and the pre-clip norms ``(B, L)`` (detached).
    """
    reads, norms = [], []
    for i in range(s.shape[1]):
        fw, norm = delta_write(fw, s[:, i], r[:, i], t[:, i], beta[:, i])
        reads.append(fwm_read(fw, q0[:, i], rr[:, i]))
        norms.append(norm.detach())
    return torch.stack(reads, dim=1), fw, torch.stack(norms, dim=1)


def _scan_segment(fw: torch.Tensor, s: torch.Tensor, r: torch.Tensor, t: torch.Tensor, beta: torch.Tensor,
                  q0: torch.Tensor, rr: torch.Tensor, empty: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same recurrence without materialising ``F`` at every step (exact up to rounding).

    Within a segment every write adds a rank-one term ``k_j ⊗ δ_j`` (``k_j = s_j ⊗ r_j``,
    ``δ_j = β_j (t_j − v_j)``) and every clip divides by ``m_j = max(1, ‖·‖)``. With
    ``P_τ = m_1 ⋯ m_τ``::

        F_τ = F_0 / P_τ + Σ_{j ≤ τ} (P_{j−1} / P_τ) · k_j ⊗ δ_j

    so anything ``F_τ`` is contracted with (a key ``a ⊗ b``) only needs ``F_0·(a ⊗ b)`` and the
    scalars ``(s_j·a)(r_j·b)``. Only the ``δ_j`` are sequential — ``v_τ = F_{τ−1}·k_τ`` needs
    ``δ_{<τ}``, and ``‖F‖`` follows from ``‖F + kδᵀ‖² = ‖F‖² + 2 δ·v + ‖k‖²‖δ‖²`` — and that loop
    works on ``(B, τ)`` weights and ``(B, τ, t)`` values instead of ``(B, s, r, t)`` tensors. The
    reads of every step and hop are then causal matrix products over the segment, and the
    final ``F`` one more. The ratios ``P_{j−1}/P_τ ≤ 1`` are formed from log-products, so long
    segments cannot overflow.

    Shapes and returns as :func:`_scan_steps`; ``empty`` skips the ``F_0`` terms (zero state).
    """
    B, L, S = s.shape
    R, T, hops = r.shape[-1], t.shape[-1], rr.shape[2]
    kk = torch.bmm(s, s.transpose(1, 2)) * torch.bmm(r, r.transpose(1, 2))  # (B, L, L): k_τ·k_j
    f0 = fw.reshape(B, S * R, T)
    keys = (s.unsqueeze(3) * r.unsqueeze(2)).reshape(B, L, S * R)  # (B, L, s·r)
    f0k = None if empty else torch.bmm(keys, f0)  # (B, L, t): F_0·k_τ
    sq = fw.new_zeros(B) if empty else f0.flatten(1).pow(2).sum(1)  # ‖F‖², carried through the loop
    log_p = fw.new_zeros(B)  # log P_{τ−1}
    log_before: list[torch.Tensor] = []  # log P_{j−1} of every step so far
    deltas: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for i in range(L):
        if i == 0:
            v = f0k[:, 0] if f0k is not None else t.new_zeros(B, T)
        else:
            w = kk[:, i, :i] * torch.exp(torch.stack(log_before, 1) - log_p.unsqueeze(1))  # (B, i)
            v = torch.bmm(w.unsqueeze(1), torch.stack(deltas, 1)).squeeze(1)  # (B, t)
            if f0k is not None:
                v = v + f0k[:, i] * torch.exp(-log_p).unsqueeze(1)
        delta = beta[:, i].unsqueeze(1) * (t[:, i] - v)  # (B, t)
        pre = sq + 2 * (delta * v).sum(1) + kk[:, i, i] * delta.pow(2).sum(1)  # ‖F_{τ−1} + kδᵀ‖²
        # m = max(1, √pre); the clamp keeps √ away from 0, where its gradient is infinite.
        m_sq = pre.clamp(min=1.0)
        log_before.append(log_p)
        deltas.append(delta)
        norms.append(pre.detach().clamp(min=0).sqrt())
        log_p = log_p + 0.5 * torch.log(m_sq)
        sq = pre / m_sq
    d = torch.stack(deltas, 1)  # (B, L, t)
    lb = torch.stack(log_before, 1)  # (B, L): log P_{j−1}
    # log P_τ after each step: the next step's "before", and log_p for the last.
    la = torch.cat([lb[:, 1:], log_p.unsqueeze(1)], 1)  # (B, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=s.device).tril()
    decay = torch.exp((lb.unsqueeze(1) - la.unsqueeze(2)).masked_fill(~causal, float("-inf")))  # (B, τ, j)
    scale0 = torch.exp(-la).unsqueeze(2)  # (B, L, 1): 1 / P_τ
    q = q0
    for k in range(hops):
        rk = rr[:, :, k]  # (B, L, r)
        a = torch.bmm(q, s.transpose(1, 2)) * torch.bmm(rk, r.transpose(1, 2)) * decay  # (B, τ, j)
        read = torch.bmm(a, d)  # (B, L, t)
        if not empty:
            qk = (q.unsqueeze(3) * rk.unsqueeze(2)).reshape(B, L, S * R)
            read = read + torch.bmm(qk, f0) * scale0
        q = F.layer_norm(read, (T,))
    last = torch.exp(lb - log_p.unsqueeze(1)).unsqueeze(2) * keys  # (B, L, s·r): P_{j−1}/P_L · k_j
    f_new = torch.bmm(last.transpose(1, 2), d)  # (B, s·r, t)
    if not empty:
        f_new = f_new + f0 * torch.exp(-log_p).view(B, 1, 1)
    return q, f_new.view(B, S, R, T), torch.stack(norms, 1)


@functools.cache
def _compiled_scan():
    """:func:`_scan_segment` through ``torch.compile`` (built once per process, on first use)."""
    return torch.compile(_scan_segment, dynamic=False)


class FastWeightMemory(nn.Module):
    """The FWM layer: write, read and output projection over a segment, state explicit.

    Args:
        hidden: size of the recurrent output ``z`` (and of this layer's output).
        s, r, t: the fast-weight tensor's dimensions (the paper: 32 each). More than one hop
            feeds a ``t``-vector back as the next query, so it needs ``s == t``.
        hops: sequential reads (the paper: 3).
        residual: add the read to ``z`` (the authors' PTB model); ``False`` outputs the read
            alone (their catbAbI scripts, and ``fastbind catbabi``).
        impl: ``segment`` (default) computes a segment without materialising ``F`` at every
            step (see :func:`_scan_segment`; several times faster); ``step`` is the recurrence
            as written. Both give the same outputs and gradients up to rounding.
        chunk: steps per block of the ``segment`` form. The dense ``F`` is formed once per
            block and the loop inside a block costs O(chunk) per step, so the best value
            balances the two.
        compiled: run each block of the ``segment`` form through ``torch.compile``. The first
            calls compile for minutes (once per block shape), so it can only pay off in long
            runs; what it gained is in docs/fast_weights.md.
        proj_bias: the write and read projections' biases start at ``zero`` (default) or at
            ``torch``'s ``nn.Linear`` default, U(±1/√hidden) (the authors' code).
        read_keys: ``tanh`` squashes the hops' relation keys ``r_k`` (the catbAbI and PTB
            models); ``linear`` leaves them as projected (the authors' meta-RL agent).

    Shapes:
        ``forward(z (B, L, hidden), state (B, s, r, t) or None) -> FWMOutput``.

    Example::

        fwm = FastWeightMemory(256)
        state = fwm.init_state(batch_size=32)
        for z in segments:                       # z (32, 200, 256) from an LSTM
            out, state, norm = fwm(z, state)
            state = state.detach()               # truncated backpropagation between segments
    """

    def __init__(self, hidden: int, s: int = 32, r: int = 32, t: int = 32, hops: int = 3,
                 residual: bool = True, impl: Literal["segment", "step"] = "segment", chunk: int = 32,
                 compiled: bool = False, proj_bias: Literal["zero", "torch"] = "zero",
                 read_keys: Literal["tanh", "linear"] = "tanh") -> None:
        super().__init__()
        if min(hidden, s, r, t, hops) < 1:
            raise ValueError(f"sizes and hops must be >= 1, got hidden={hidden} s={s} r={r} t={t} hops={hops}")
        if hops > 1 and s != t:
            raise ValueError(f"more than one read hop feeds the t-vector back as a query: needs s == t, "
                             f"got s={s}, t={t}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if impl not in ("segment", "step"):
            raise ValueError(f"impl must be 'segment' or 'step', got {impl!r}")
        if proj_bias not in ("zero", "torch"):
            raise ValueError(f"proj_bias must be 'zero' or 'torch', got {proj_bias!r}")
        if read_keys not in ("tanh", "linear"):
            raise ValueError(f"read_keys must be 'tanh' or 'linear', got {read_keys!r}")
        self.proj_bias, self.read_keys = proj_bias, read_keys
        self.hidden, self.s, self.r, self.t, self.hops, self.residual = hidden, s, r, t, hops, residual
        self.impl = impl
        self.chunk = chunk
        self.compiled = compiled
        self.W_write = nn.Linear(hidden, s + r + t + 1)
        self.W_read = nn.Linear(hidden, s + hops * r)
        self.out = nn.Linear(t, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' initialisation of the two projections (uniform, Glorot-like bound).
        a = math.sqrt(6.0 / (self.hidden + self.s))
        nn.init.uniform_(self.W_write.weight, -a, a)
        nn.init.uniform_(self.W_read.weight, -a, a)
        if self.proj_bias == "zero":  # else the biases keep nn.Linear's own draw, U(±1/√hidden)
            nn.init.zeros_(self.W_write.bias)
            nn.init.zeros_(self.W_read.bias)

    def init_state(self, batch_size: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """Empty fast weights ``(B, s, r, t)``."""
        p = self.W_write.weight
        return torch.zeros(batch_size, self.s, self.r, self.t, device=device or p.device, dtype=dtype or p.dtype)

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, s={self.s}, r={self.r}, t={self.t}, hops={self.hops}, residual={self.residual}"
                + (f", proj_bias={self.proj_bias}" if self.proj_bias != "zero" else "")
                + (f", read_keys={self.read_keys}" if self.read_keys != "tanh" else ""))

    def empty_history(self, batch_size: int, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> FWMHistory:
        """No writes yet: the start of a stream for :meth:`step`."""
        p = self.W_write.weight
        kw = {"device": device or p.device, "dtype": dtype or p.dtype}
        B = batch_size
        return FWMHistory(torch.zeros(B, 0, self.s, **kw), torch.zeros(B, 0, self.r, **kw),
                          torch.zeros(B, 0, self.t, **kw), torch.zeros(B, 0, **kw), torch.zeros(B, **kw),
                          torch.zeros(B, **kw))

    def step(self, z: torch.Tensor, history: FWMHistory) -> tuple[torch.Tensor, FWMHistory, torch.Tensor]:
        """One step for ``z (B, hidden)``, with the fast weights kept as their writes.

        For agents that act between steps (the next input depends on this output), so no
        segment can be computed at once. A stream that starts empty never needs the dense
        ``F``: a write and the reads of step ``τ`` cost ``O(τ · (s + r + t))`` per sequence
        instead of ``O(s · r · t)`` — cheaper while ``τ`` is below about ``s·r·t / (s+r+t)``.
        Equal to :meth:`forward` with ``impl="step"`` up to rounding.

        Returns ``(out (B, hidden), history, ‖F‖ before the clip (B,))``.
        """
        h = history
        wv = self.W_write(z)
        s, r, t, b = wv.split([self.s, self.r, self.t, 1], dim=-1)
        s, r, t = torch.tanh(s), torch.tanh(r), torch.tanh(t)
        beta = torch.sigmoid(b.squeeze(-1) + 1.0) / self.t  # (B,)
        q, rr = self.W_read(z).split([self.s, self.hops * self.r], dim=-1)
        if self.read_keys == "tanh":
            rr = torch.tanh(rr)
        rr = rr.reshape(len(z), self.hops, self.r)
        # v = F_{τ−1}·k: the past writes, each scaled by P_{j−1}/P_{τ−1}. The products are
        # written as broadcasts and sums: bmm on thousands of tiny matrices is several times slower.
        decay = torch.exp(h.log_before - h.log_p.unsqueeze(1))  # (B, τ−1)
        w = (h.s * s.unsqueeze(1)).sum(2) * (h.r * r.unsqueeze(1)).sum(2) * decay  # (B, τ−1): (k_j·k) P_{j−1}/P_{τ−1}
        v = (w.unsqueeze(2) * h.delta).sum(1)  # (B, t)
        delta = beta.unsqueeze(1) * (t - v)
        kk = s.pow(2).sum(1) * r.pow(2).sum(1)  # ‖k‖²
        pre = h.sq + 2 * (delta * v).sum(1) + kk * delta.pow(2).sum(1)
        m_sq = pre.clamp(min=1.0)  # as _scan_segment: keeps √ away from 0
        log_p = h.log_p + 0.5 * torch.log(m_sq)
        new = FWMHistory(torch.cat([h.s, s.unsqueeze(1)], 1), torch.cat([h.r, r.unsqueeze(1)], 1),
                         torch.cat([h.delta, delta.unsqueeze(1)], 1),
                         torch.cat([h.log_before, h.log_p.unsqueeze(1)], 1), log_p, pre / m_sq)
        scale = torch.exp(new.log_before - log_p.unsqueeze(1))  # (B, τ): P_{j−1}/P_τ
        for k in range(self.hops):
            a = (new.s * q.unsqueeze(1)).sum(2) * (new.r * rr[:, k].unsqueeze(1)).sum(2) * scale  # (B, τ)
            q = F.layer_norm((a.unsqueeze(2) * new.delta).sum(1), (self.t,))
        read = self.out(q)
        return (z + read if self.residual else read), new, pre.detach().clamp(min=0).sqrt()

    def forward(self, z: torch.Tensor, state: torch.Tensor | None = None) -> FWMOutput:
        if z.dim() != 3 or z.shape[-1] != self.hidden:
            raise ValueError(f"z must be (batch, length, {self.hidden}), got shape {tuple(z.shape)}")
        B, L, _ = z.shape
        fw = self.init_state(B, z.device, z.dtype) if state is None else state
        if fw.shape != (B, self.s, self.r, self.t):
            raise ValueError(f"state must be (batch, s, r, t) = {(B, self.s, self.r, self.t)}, got {tuple(fw.shape)}")
        # Both projections for the whole segment at once; only F's recurrence is a loop.
        s, r, t, b = self.W_write(z).split([self.s, self.r, self.t, 1], dim=-1)  # (B, L, ·)
        s, r, t = torch.tanh(s), torch.tanh(r), torch.tanh(t)
        beta = torch.sigmoid(b.squeeze(-1) + 1.0) / self.t  # (B, L): the authors' β / t_size
        q0, rr = self.W_read(z).split([self.s, self.hops * self.r], dim=-1)
        if self.read_keys == "tanh":
            rr = torch.tanh(rr)
        rr = rr.reshape(B, L, self.hops, self.r)  # (B, L, hops, r)
        if self.impl == "step":
            read, fw, norm = _scan_steps(fw, s, r, t, beta, q0, rr)
        else:
            reads, norms = [], []
            scan = _compiled_scan() if self.compiled else _scan_segment
            for a in range(0, L, self.chunk):
                sl = slice(a, a + self.chunk)
                read, fw, norm = scan(fw, s[:, sl], r[:, sl], t[:, sl], beta[:, sl], q0[:, sl], rr[:, sl],
                                               state is None and a == 0)
                reads.append(read)
                norms.append(norm)
            read, norm = torch.cat(reads, 1), torch.cat(norms, 1)
        read = self.out(read)  # (B, L, t) -> (B, L, hidden)
        out = z + read if self.residual else read
        return FWMOutput(out, fw, norm)
