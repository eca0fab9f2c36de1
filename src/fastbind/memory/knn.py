"""Storage and nearest-neighbour search shared by the evaluation-time memories.

:class:`RingStore` keeps the last ``size`` ``(key, value)`` pairs of a stream in a ring
buffer (no copy of the whole memory per write) together with each entry's stream position,
so that a caller can express *which* entries a query may see as a window of positions.

:func:`search` finds the ``k`` nearest keys (squared Euclidean distance) of each query among
the keys whose position lies in that query's window ``[lo, hi)``. The torch path is exact:
one distance matmul and one ``topk`` per block of queries. When ``faiss`` is importable and
there are many keys (more than :data:`FAISS_MIN_KEYS`), ``backend="auto"`` uses an exact
FAISS flat index instead, over-fetching enough candidates that the window filter applied
afterwards still leaves the exact ``k`` nearest visible keys.
"""

from __future__ import annotations

import importlib
import operator
from typing import Literal

import torch

Backend = Literal["auto", "torch", "faiss"]

# Below this many keys the torch matmul path is as fast as any index and needs no copies.
FAISS_MIN_KEYS = 100_000

# Default working-memory budget (bytes) of the blocked computations in this package.
DEFAULT_BUDGET_BYTES = 256 << 20


def positive_int(value: object, name: str) -> int:
    """``value`` as an int, or ValueError unless it is an integer > 0."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n}")
    return n


def _integer(y: torch.Tensor) -> bool:
    return not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)


Policy = Literal["recent", "reservoir"]
POLICIES: tuple[str, ...] = ("recent", "reservoir")


class RingStore:
    """At most ``size`` ``(key, value)`` pairs of a stream, on the keys' device.

    Entries are numbered by their position in the stream (0 for the first entry ever
    written). Storage grows by doubling until it holds ``size`` entries. The write policy
    decides which entries stay once it is full:

    * ``"recent"`` (default): the last ``size`` entries; the entry at position ``p`` lives in
      slot ``p % size`` (a ring buffer, no copy of the whole memory per write).
    * ``"reservoir"``: a uniform sample of every entry written so far (Vitter's algorithm R):
      entry ``p ≥ size`` replaces the entry in slot ``j`` when ``j``, drawn uniformly from
      ``[0, p]`` by the store's own seeded generator, is below ``size``. A continual learner
      keeps every task in proportion to its share of the stream this way, where ``"recent"``
      would evict the first task first.

    Each entry may carry a ``payload`` row (e.g. the raw input the key was computed from),
    kept in the same slot. The device and dtype are fixed by the first write and checked on
    every later one; :meth:`reset` forgets them (and restarts the reservoir's generator).

    Shapes:
        keys ``(M, d)`` floating, values ``(M,)`` int64, positions ``(M,)`` int64,
        payload ``(M, ...)``, ``M = min(count, size)`` in slot order (not age order).
    """

    def __init__(self, size: int, policy: Policy = "recent", seed: int = 0) -> None:
        self.size = positive_int(size, "size")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        self.policy: Policy = policy
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None  # reservoir only: each slot's stream position
        self._payload: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(self.seed)
        self.count = 0  # entries ever written

    def __len__(self) -> int:
        return min(self.count, self.size)

    @property
    def capacity(self) -> int:
        """Slots allocated so far (grows to ``size``)."""
        return 0 if self._keys is None else self._keys.shape[0]

    @property
    def dim(self) -> int | None:
        return None if self._keys is None else self._keys.shape[1]

    def check(self, h: torch.Tensor, y: torch.Tensor | None = None, what: str = "h") -> None:
        """Raise ValueError unless ``h (L, d)`` (and ``y (L,)``) can be compared with the store."""
        if not isinstance(h, torch.Tensor) or h.dim() != 2:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"{what} must be a 2-D tensor (L, d), got {shape}")
        if not h.dtype.is_floating_point:
            raise ValueError(f"{what} must be floating point, got {h.dtype}")
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.shape != (h.shape[0],):
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"y must have shape ({h.shape[0]},) to match {what}, got {shape}")
            if not _integer(y):
                raise ValueError(f"y must be an integer tensor, got {y.dtype}")
            if y.device != h.device:
                raise ValueError(f"y is on device {y.device} but {what} is on device {h.device}")
        if self._keys is not None:
            if h.device != self._keys.device:
                raise ValueError(f"{what} is on device {h.device} but the memory lives on device "
                                 f"{self._keys.device}; reset() first")
            if h.dtype != self._keys.dtype:
                raise ValueError(f"{what} has dtype {h.dtype} but the memory holds {self._keys.dtype}; reset() first")
            if h.shape[1] != self._keys.shape[1]:
                raise ValueError(f"{what} has d={h.shape[1]} but the stored entries have d={self._keys.shape[1]}")

    def _check_payload(self, payload: torch.Tensor | None, n: int, device: torch.device) -> None:
        if self.count and (payload is None) != (self._payload is None):
            raise ValueError("every write must carry a payload or none does (as the first write)")
        if payload is None:
            return
        if not isinstance(payload, torch.Tensor) or payload.dim() < 1 or payload.shape[0] != n:
            shape = tuple(payload.shape) if isinstance(payload, torch.Tensor) else type(payload).__name__
            raise ValueError(f"payload must have {n} rows to match h, got {shape}")
        if payload.device != device:
            raise ValueError(f"payload is on device {payload.device} but h is on device {device}")
        if self._payload is not None and (payload.shape[1:] != self._payload.shape[1:]
                                          or payload.dtype != self._payload.dtype):
            raise ValueError(f"payload rows must be {tuple(self._payload.shape[1:])} {self._payload.dtype} "
                             f"as stored, got {tuple(payload.shape[1:])} {payload.dtype}")

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(keys, values, positions)`` of the stored entries, or None when empty."""
        m = len(self)
        if m == 0 or self._keys is None or self._values is None:
            return None
        if self._positions is not None:
            return self._keys[:m], self._values[:m], self._positions[:m]
        slots = torch.arange(m, device=self._keys.device)
        # The newest entry written to slot i: the largest p < count with p ≡ i (mod size).
        positions = (self.count - 1) - torch.remainder(self.count - 1 - slots, self.size)
        return self._keys[:m], self._values[:m], positions

    def payload(self) -> torch.Tensor | None:
        """The stored entries' payload rows, in the slot order of :meth:`view` (None without)."""
        return None if self._payload is None else self._payload[: len(self)]

    def state_dict(self) -> dict:
        """The stored entries in slot order, the write count and the policy's state (for exact resumes)."""
        m = len(self)

        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:m].clone()

        return {"size": self.size, "count": self.count, "keys": part(self._keys), "values": part(self._values),
                "policy": self.policy, "positions": part(self._positions), "payload": part(self._payload),
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` exactly (same slots, so later writes overwrite the same entries)."""
        if int(state["size"]) != self.size:
            raise ValueError(f"the saved memory has size {int(state['size'])}, this one {self.size}")
        policy = state.get("policy", "recent")
        if policy != self.policy:
            raise ValueError(f"the saved memory has policy {policy!r}, this one {self.policy!r}")
        self.reset()
        if state["keys"] is not None and state["values"] is not None:
            self._keys, self._values = state["keys"].clone(), state["values"].clone().to(torch.int64)
            for name in ("positions", "payload"):
                if state.get(name) is not None:
                    setattr(self, f"_{name}", state[name].clone())
        if state.get("generator") is not None:  # a checkpoint mapped to a GPU moves it there too
            self._gen.set_state(state["generator"].cpu().to(torch.uint8))
        self.count = int(state["count"])

    def _slots(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``n`` new entries: which rows are kept (indices) and the slot each goes to."""
        pos = torch.arange(self.count, self.count + n, dtype=torch.int64)
        if self.policy == "recent":
            rows = torch.arange(max(0, n - self.size), n)  # only the last `size` rows can survive
            return rows.to(device), torch.remainder(pos[rows], self.size).to(device)
        slot = pos.clone()
        late = pos >= self.size
        if bool(late.any()):  # algorithm R: slot j ~ U[0, p], kept when j < size
            draw = torch.rand(int(late.sum()), generator=self._gen, dtype=torch.float64)
            slot[late] = (draw * (pos[late] + 1).double()).floor().long().clamp_max(pos[late])
        rows = (slot < self.size).nonzero()[:, 0]
        slot = slot[rows]
        # Several rows of one write may draw the same slot: the last one wins, as if written one by one.
        uniq, inv = torch.unique(slot, return_inverse=True)
        last = torch.full((uniq.shape[0],), -1, dtype=torch.int64).scatter_reduce(0, inv, rows, "amax")
        return last.to(device), uniq.to(device)

    @torch.no_grad()
    def append(self, h: torch.Tensor, y: torch.Tensor, payload: torch.Tensor | None = None) -> None:
        """Write the rows of ``h (L, d)`` with labels ``y (L,)`` (and ``payload (L, ...)``), oldest first."""
        self.check(h, y)
        n = h.shape[0]
        self._check_payload(payload, n, h.device)
        if n == 0:
            return
        rows, slots = self._slots(n, h.device)
        need = min(self.size, self.count + n)
        cap = self.capacity
        if need > cap:
            new_cap = min(self.size, max(need, 2 * cap, 64))

            def grown(old: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
                t = like.new_empty((new_cap, *like.shape[1:]))
                if old is not None:  # not yet full: the occupied slots are 0 .. cap-1
                    t[:cap] = old
                return t

            self._keys = grown(self._keys, h)
            self._values = grown(self._values, y.to(torch.int64))
            if self.policy == "reservoir":
                self._positions = grown(self._positions, torch.empty(1, dtype=torch.int64, device=h.device))
            if payload is not None:
                self._payload = grown(self._payload, payload)
        assert self._keys is not None and self._values is not None
        self._keys.index_copy_(0, slots, h.detach().index_select(0, rows))
        self._values.index_copy_(0, slots, y.to(torch.int64).index_select(0, rows))
        if self._positions is not None:
            self._positions.index_copy_(0, slots, self.count + rows)
        if payload is not None:
            assert self._payload is not None
            self._payload.index_copy_(0, slots, payload.detach().index_select(0, rows))
        self.count += n


def faiss_available() -> bool:
    """Whether ``import faiss`` works here."""
    try:
        importlib.import_module("faiss")
    except ImportError:
        return False
    return True


def _window_mask(positions: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` True where key j is *outside* query i's window ``[lo_i, hi_i)``."""
    return (positions[None, :] < lo[:, None]) | (positions[None, :] >= hi[:, None])


def search(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    positions: torch.Tensor | None = None,
    lo: torch.Tensor | None = None,
    hi: torch.Tensor | None = None,
    backend: Backend = "auto",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest keys of each query by squared Euclidean distance.

    Args:
        queries: ``(B, d)``.
        keys: ``(S, d)``, same dtype and device.
        k: neighbours wanted; ``min(k, S)`` columns are returned.
        positions, lo, hi: optional window: key ``j`` is a candidate for query ``i`` iff
            ``lo[i] <= positions[j] < hi[i]`` (``positions (S,)``, ``lo, hi (B,)`` integer).
        backend: ``"torch"`` (exact matmul + topk), ``"faiss"`` (exact flat index; raises
            ImportError when faiss is missing) or ``"auto"`` (faiss when importable and
            ``S > FAISS_MIN_KEYS``, else torch).
        budget_bytes: working memory per block of queries of the torch path.

    Returns:
        ``(dist (B, kk), idx (B, kk))`` with ``kk = min(k, S)``, nearest first. Where a query
        has fewer than ``kk`` candidates the missing neighbours have ``dist = inf`` and an
        arbitrary (valid) index. Distances come from ``‖q‖² − 2 qᵀx + ‖x‖²`` (torch) or
        from FAISS: use them to rank; recompute them where precision matters.
    """
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (B, d) and keys (S, d) must share d, "
                         f"got {tuple(queries.shape)} and {tuple(keys.shape)}")
    k = positive_int(k, "k")
    windowed = positions is not None
    if windowed != (lo is not None) or windowed != (hi is not None):
        raise ValueError("positions, lo and hi must be given together")
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    B, S = queries.shape[0], keys.shape[0]
    kk = min(k, S)
    if backend == "faiss" and not faiss_available():
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu); "
                          "use backend='torch' or 'auto'")
    if B == 0 or kk == 0:
        empty = queries.new_empty((B, kk))
        return empty, torch.zeros((B, kk), dtype=torch.int64, device=queries.device)
    if backend == "faiss" or (backend == "auto" and S > FAISS_MIN_KEYS and faiss_available()):
        return _search_faiss(queries, keys, kk, positions, lo, hi)

    key_sq = keys.pow(2).sum(1)  # (S,)
    rows = max(1, budget_bytes // (S * (queries.element_size() + 1) * 2))
    dists, idxs = [], []
    for i0 in range(0, B, rows):
        q = queries[i0:i0 + rows]
        d2 = torch.addmm(key_sq[None, :], q, keys.T, alpha=-2.0)  # (b, S)
        d2.add_(q.pow(2).sum(1, keepdim=True)).clamp_min_(0.0)
        if windowed:
            assert positions is not None and lo is not None and hi is not None
            d2.masked_fill_(_window_mask(positions, lo[i0:i0 + rows], hi[i0:i0 + rows]), float("inf"))
        dist, idx = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
        dists.append(dist)
        idxs.append(idx)
        del d2  # before the next block is allocated
    return torch.cat(dists), torch.cat(idxs)


def _search_faiss(queries, keys, kk, positions, lo, hi):
    import faiss  # noqa: PLC0415 — optional dependency

    S = keys.shape[0]
    fetch = kk
    if positions is not None:
        # Fetching k + (largest number of keys outside a window) guarantees that the k
        # nearest *visible* keys are among the fetched ones (exact with a flat index).
        sorted_pos = torch.sort(positions).values
        inside = torch.searchsorted(sorted_pos, hi) - torch.searchsorted(sorted_pos, lo)
        fetch = min(S, kk + int((S - inside).max()))
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys.detach().to("cpu", torch.float32).contiguous().numpy())
    d_np, i_np = index.search(queries.detach().to("cpu", torch.float32).contiguous().numpy(), fetch)
    dist = torch.from_numpy(d_np).to(queries.device, queries.dtype)
    idx = torch.from_numpy(i_np).to(queries.device, torch.int64)
    bad = idx < 0
    idx = idx.clamp_min(0)
    if positions is not None:
        p = positions[idx]
        bad |= (p < lo[:, None]) | (p >= hi[:, None])
    dist = dist.masked_fill(bad, float("inf"))
    dist, order = torch.topk(dist, kk, dim=1, largest=False, sorted=True)
    return dist, torch.gather(idx, 1, order)
