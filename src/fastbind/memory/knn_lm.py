"""kNN-LM: a next-token distribution from the nearest neighbours in a training-set datastore.

Khandelwal, Levy, Jurafsky, Zettlemoyer, Lewis. "Generalization through Memorization: Nearest
Neighbor Language Models", ICLR 2020, eq. 2::

    p_kNN(w | h) ∝ Σ_{(h_i, y_i) ∈ N(h)} exp(−d(h, h_i) / τ) · 1{y_i = w}

over the ``k`` nearest keys ``N(h)`` of a datastore holding one ``(h_i, y_i)`` pair per position
of a trained model's *training* split (``h_i`` the output layer's input at position ``i``, ``y_i``
the next token), with ``d`` the squared Euclidean distance. The paper has no temperature
(``τ = 1``). The distribution is mixed with the model in probability space by
:func:`fastbind.mix_log_probs`.

The datastore is a folder that lives on disk and is memory-mapped, never read whole
(WikiText-2's 2.1M training tokens at d = 256 are 1 GiB of float16 keys)::

    keys.npy     (n, d) float16 or float32
    values.npy   (n,)   int32 or int64 next-token ids
    meta.json    n, d, dtypes, a build id and the caller's free-form ``source`` dict
    faiss.index  optional IVF index over the keys (:meth:`KNNLM.build_index`), with faiss.json

Workflow — search once at the largest ``k``, keep the lists, then sweep ``k`` and ``τ``::

    with KNNLM.build(folder, n=n_train, d=256, dtype="float16", source={"run": ...}) as w:
        for h, y in train_chunks:             # h (L, d) output-layer inputs, y (L,) next tokens
            w.add(h, y)
    store = KNNLM.load(folder)
    dist, vals = store.search(h_valid, k=1024)            # (N, 1024) each, nearest first
    for k in (8, 64, 1024):
        for tau in (1.0, 10.0):
            lp_knn = knn_log_prob(dist, vals, y_valid, k, tau)
            lp = mix_log_probs(lp_model, (0.25, lp_knn))
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from fastbind._io import _fsync_dir, atomic_write
from fastbind.memory.knn import DEFAULT_BUDGET_BYTES, faiss_available, positive_int

KEYS_FILE = "keys.npy"
VALUES_FILE = "values.npy"
META_FILE = "meta.json"
INDEX_FILE = "faiss.index"
INDEX_META_FILE = "faiss.json"
FORMAT = "fastbind.knn_lm"
FORMAT_VERSION = 1

KeyDtype = Literal["float16", "float32"]
ValueDtype = Literal["int32", "int64"]
SearchBackend = Literal["exact", "faiss"]

_KEY_DTYPES = ("float16", "float32")
_VALUE_DTYPES = ("int32", "int64")
_PARTIAL = ".partial"  # suffix of the files of a build in progress
_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------- argument checks


def _positive_float(value: object, name: str) -> float:
    """``value`` as a float, or ValueError unless it is a finite number > 0."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return x


def _integer_dtype(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_neighbours(dist: torch.Tensor, values: torch.Tensor, k: int, temperature: float) -> tuple[int, float]:
    if not isinstance(dist, torch.Tensor) or dist.dim() != 2 or not dist.dtype.is_floating_point:
        raise ValueError(f"dist must be a 2-D floating tensor (N, K), got {_shape(dist)}")
    if not isinstance(values, torch.Tensor) or values.shape != dist.shape:
        raise ValueError(f"values must have the shape of dist {tuple(dist.shape)}, got {_shape(values)}")
    if not _integer_dtype(values):
        raise ValueError(f"values must be an integer tensor, got {values.dtype}")
    if values.device != dist.device:
        raise ValueError(f"values is on device {values.device} but dist is on device {dist.device}")
    k = positive_int(k, "k")
    if k > dist.shape[1]:
        raise ValueError(f"k={k} exceeds the {dist.shape[1]} neighbours searched; search at the largest k")
    return k, _positive_float(temperature, "temperature")


# ---------------------------------------------------------------------------- p_kNN from neighbour lists


def knn_log_prob(
    dist: torch.Tensor, values: torch.Tensor, y: torch.Tensor, k: int, temperature: float = 1.0
) -> torch.Tensor:
    """``log p_kNN(y | h)`` from the first ``k`` neighbours of each query's list.

    ``p_kNN(w) = Σ_{i<k, values_i = w} exp(−dist_i/τ) / Σ_{i<k} exp(−dist_i/τ)``, computed as a
    log-sum-exp over the neighbours whose value is ``y`` minus one over all first ``k``. The
    lists come from :meth:`KNNLM.search` (nearest first), so one search at the largest ``k``
    serves every smaller ``k`` and every ``τ``.

    Args:
        dist: ``(N, K)`` squared distances, ascending per row; ``inf`` marks a missing neighbour.
        values: ``(N, K)`` integer next-token ids of those neighbours (any id < 0 never matches).
        y: ``(N,)`` integer targets.
        k: neighbours used, ``1 ≤ k ≤ K``.
        temperature: τ > 0 (the paper's eq. 2 has none: τ = 1).

    Returns:
        ``(N,)`` log-probabilities in ``dist``'s dtype; ``-inf`` where none of the first ``k``
        neighbours has value ``y`` (or a row has no neighbour at all).
    """
    k, tau = _check_neighbours(dist, values, k, temperature)
    if not isinstance(y, torch.Tensor) or y.shape != (dist.shape[0],):
        raise ValueError(f"y must have shape ({dist.shape[0]},) to match dist, got {_shape(y)}")
    if not _integer_dtype(y):
        raise ValueError(f"y must be an integer tensor, got {y.dtype}")
    if y.device != dist.device:
        raise ValueError(f"y is on device {y.device} but dist is on device {dist.device}")
    s = dist[:, :k] / -tau  # (N, k)
    log_den = torch.logsumexp(s, dim=1)
    match = values[:, :k] == y[:, None].to(values.dtype)
    log_num = torch.logsumexp(s.masked_fill(~match, _NEG_INF), dim=1)
    return torch.where(torch.isneginf(log_num), log_num, log_num - log_den)


def knn_distribution(
    dist: torch.Tensor, values: torch.Tensor, vocab_size: int, k: int, temperature: float = 1.0
) -> torch.Tensor:
    """Full ``log p_kNN(· | h)`` over a vocabulary, ``(N, vocab_size)``.

    The same distribution as :func:`knn_log_prob` (``out.gather(1, y[:, None])[:, 0]`` equals
    ``knn_log_prob(dist, values, y, k, temperature)``), built by one scatter-add of the first
    ``k`` neighbours' softmax weights. Rows with no neighbour are all ``-inf``.

    Args:
        dist, values: ``(N, K)`` neighbour lists as for :func:`knn_log_prob`; values must lie in
            ``[0, vocab_size)`` except missing neighbours (``dist = inf``), which may hold any id.
        vocab_size: ``V``.
        k, temperature: as for :func:`knn_log_prob`.

    Returns:
        ``(N, V)`` log-probabilities in ``dist``'s dtype (``-inf`` off the neighbours' values).
    """
    k, tau = _check_neighbours(dist, values, k, temperature)
    vocab_size = positive_int(vocab_size, "vocab_size")
    d, v = dist[:, :k], values[:, :k].to(torch.int64)
    present = torch.isfinite(d)
    if bool(((v < 0) | (v >= vocab_size))[present].any()):
        raise ValueError(f"values must lie in [0, {vocab_size}) for knn_distribution(), "
                         f"got [{int(v[present].min())}, {int(v[present].max())}]")
    w = torch.softmax(d / -tau, dim=1).nan_to_num_(nan=0.0)  # rows of all-inf distances -> 0
    p = d.new_zeros((d.shape[0], vocab_size)).scatter_add_(1, v.masked_fill(~present, 0), w)
    return p.log()


def recall_at_k(approx_idx: torch.Tensor, exact_idx: torch.Tensor, k: int | None = None) -> float:
    """Mean fraction of each query's exact ``k`` nearest keys that an approximate search found.

    Args:
        approx_idx: ``(N, K_a)`` datastore rows returned by an approximate search (e.g.
            ``KNNLM.search(..., backend="faiss", return_index=True)[2]``); ``-1`` = none.
        exact_idx: ``(N, K_e)`` rows of the exact search, nearest first.
        k: compare the first ``k`` columns of both (default: ``min(K_a, K_e)``).

    Returns:
        recall@k in ``[0, 1]`` (1.0 for ``N = 0``).
    """
    for name, t in (("approx_idx", approx_idx), ("exact_idx", exact_idx)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not _integer_dtype(t):
            raise ValueError(f"{name} must be a 2-D integer tensor, got {_shape(t)}")
    if approx_idx.shape[0] != exact_idx.shape[0]:
        raise ValueError(f"approx_idx has {approx_idx.shape[0]} rows but exact_idx has {exact_idx.shape[0]}")
    k = min(approx_idx.shape[1], exact_idx.shape[1]) if k is None else positive_int(k, "k")
    if k > min(approx_idx.shape[1], exact_idx.shape[1]):
        raise ValueError(f"k={k} exceeds the columns given ({approx_idx.shape[1]} and {exact_idx.shape[1]})")
    if approx_idx.shape[0] == 0 or k == 0:
        return 1.0
    exact = torch.sort(exact_idx[:, :k].to(torch.int64), dim=1).values.contiguous()
    approx = approx_idx[:, :k].to(exact.device, torch.int64).contiguous()
    pos = torch.searchsorted(exact, approx).clamp_max_(k - 1)
    found = (exact.gather(1, pos) == approx) & (approx >= 0)
    return float(found.sum()) / float(found.numel())


# ---------------------------------------------------------------------------- writing a datastore


class DatastoreWriter:
    """Writes a datastore chunk by chunk; :meth:`close` publishes it atomically.

    The keys and values go to memory-mapped files with a ``.partial`` suffix, allocated at their
    final size up front; :meth:`close` flushes them, renames them into place and writes
    ``meta.json`` last (atomically), so a folder without a complete ``meta.json`` never loads:
    an interrupted build, a writer never closed, or a ``with`` block left by an exception
    (which calls :meth:`abort`) leave nothing :meth:`KNNLM.load` accepts. Until ``close``
    renames the new files, an older datastore in the same folder stays loadable. One writer per
    folder at a time: a new one deletes the ``.partial`` files an interrupted build left there.

    Use :meth:`KNNLM.build` to make one. Shapes: ``add(h (L, d), y (L,))``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n: int,
        d: int,
        dtype: KeyDtype = "float16",
        *,
        values_dtype: ValueDtype = "int32",
        source: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = pathlib.Path(path)
        self.n = positive_int(n, "n")
        self.d = positive_int(d, "d")
        if dtype not in _KEY_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_KEY_DTYPES)}, got {dtype!r}")
        if values_dtype not in _VALUE_DTYPES:
            raise ValueError(f"values_dtype must be one of {', '.join(_VALUE_DTYPES)}, got {values_dtype!r}")
        source = {} if source is None else source
        if not isinstance(source, Mapping):
            raise ValueError(f"source must be a dict, got {type(source).__name__}")
        try:
            self.source = json.loads(json.dumps(dict(source)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"source must be JSON-serialisable: {e}") from None
        if (self.path / META_FILE).exists() and not overwrite:
            raise FileExistsError(f"{self.path} already holds a datastore; pass overwrite=True to replace it")
        self.dtype: KeyDtype = dtype
        self.values_dtype: ValueDtype = values_dtype
        self.build_id = uuid.uuid4().hex
        self.count = 0  # rows written
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(f"*{_PARTIAL}"):  # left by an interrupted build of this folder
            stale.unlink()
        self._keys_tmp = self.path / (KEYS_FILE + _PARTIAL)
        self._values_tmp = self.path / (VALUES_FILE + _PARTIAL)
        self._keys: np.memmap | None = np.lib.format.open_memmap(
            self._keys_tmp, mode="w+", dtype=np.dtype(dtype), shape=(self.n, self.d))
        self._values: np.memmap | None = np.lib.format.open_memmap(
            self._values_tmp, mode="w+", dtype=np.dtype(values_dtype), shape=(self.n,))
        self.closed = False  # by close() or abort()
        self.aborted = False

    def __repr__(self) -> str:
        return f"DatastoreWriter({str(self.path)!r}, written={self.count}/{self.n}, d={self.d}, dtype={self.dtype})"

    def __enter__(self) -> DatastoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @torch.no_grad()
    def add(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Append rows ``h (L, d)`` (any floating dtype and device) with next tokens ``y (L,)``."""
        if self.closed:
            raise ValueError("this datastore writer is closed")
        if not isinstance(h, torch.Tensor) or h.dim() != 2 or not h.dtype.is_floating_point:
            raise ValueError(f"h must be a 2-D floating tensor (L, d), got {_shape(h)}")
        if h.shape[1] != self.d:
            raise ValueError(f"h has d={h.shape[1]} but the datastore has d={self.d}")
        L = h.shape[0]
        if not isinstance(y, torch.Tensor) or y.shape != (L,):
            raise ValueError(f"y must have shape ({L},) to match h, got {_shape(y)}")
        if not _integer_dtype(y):
            raise ValueError(f"y must be an integer tensor, got {y.dtype}")
        if self.count + L > self.n:
            raise ValueError(f"adding {L} rows to the {self.count} written exceeds n={self.n}")
        if L == 0:
            return
        keys = h.detach().to("cpu", getattr(torch, self.dtype))
        if not bool(torch.isfinite(keys).all()):
            raise ValueError(f"h has values that are not finite in {self.dtype}")
        vals = y.detach().to("cpu", torch.int64)
        hi = np.iinfo(np.dtype(self.values_dtype)).max
        if int(vals.min()) < 0 or int(vals.max()) > hi:
            raise ValueError(f"y must lie in [0, {hi}] for {self.values_dtype} values, "
                             f"got [{int(vals.min())}, {int(vals.max())}]")
        assert self._keys is not None and self._values is not None
        self._keys[self.count:self.count + L] = keys.numpy()
        self._values[self.count:self.count + L] = vals.numpy()
        self.count += L

    def close(self) -> pathlib.Path:
        """Publish the datastore (every one of the ``n`` rows must have been added); returns its folder.

        Raises ValueError, and publishes nothing (the folder keeps what it held before the build),
        when fewer than ``n`` rows were added or the writer was aborted.
        """
        if self.aborted:
            raise ValueError("this datastore writer was aborted; nothing was published")
        if self.closed:
            return self.path
        if self.count != self.n:
            written = self.count
            self.abort()
            raise ValueError(f"the datastore got {written} of its n={self.n} rows; nothing was published")
        assert self._keys is not None and self._values is not None
        self._keys.flush()
        self._values.flush()
        self._keys = self._values = None  # unmap before the renames
        meta = self.path / META_FILE
        # An older datastore here stops being valid first (its meta goes), then the new files move in,
        # then the new meta is written: an interruption anywhere leaves no meta.json.
        meta.unlink(missing_ok=True)
        for name in (INDEX_META_FILE, INDEX_FILE):  # an index of the old keys
            (self.path / name).unlink(missing_ok=True)
        os.replace(self._keys_tmp, self.path / KEYS_FILE)
        os.replace(self._values_tmp, self.path / VALUES_FILE)
        _fsync_dir(self.path)
        info = {"format": FORMAT, "version": FORMAT_VERSION, "n": self.n, "d": self.d, "dtype": self.dtype,
                "values_dtype": self.values_dtype, "build_id": self.build_id, "source": self.source}
        atomic_write(meta, lambda f: f.write((json.dumps(info, indent=1) + "\n").encode()))
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Drop the rows written so far and their files (an existing datastore here is untouched)."""
        if self.closed:
            return
        self._keys = self._values = None
        for p in (self._keys_tmp, self._values_tmp):
            p.unlink(missing_ok=True)
        self.closed = self.aborted = True


# ---------------------------------------------------------------------------- the datastore


def _read_meta(path: pathlib.Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"no datastore folder {path}")
    if not meta_path.is_file():
        raise ValueError(f"{path} holds no complete datastore: {META_FILE} is missing (an unfinished build?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path} is not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a {FORMAT} datastore")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format version {meta.get('version')!r}; this code reads {FORMAT_VERSION}")
    for key in ("n", "d"):
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{meta_path}: {key} must be a positive integer, got {v!r}")
    if meta.get("dtype") not in _KEY_DTYPES or meta.get("values_dtype") not in _VALUE_DTYPES:
        raise ValueError(f"{meta_path}: unknown dtype {meta.get('dtype')!r} / values_dtype {meta.get('values_dtype')!r}")
    if not isinstance(meta.get("source"), dict) or not isinstance(meta.get("build_id"), str):
        raise ValueError(f"{meta_path}: source must be a dict and build_id a string")
    return meta


def _open_array(file: pathlib.Path, shape: tuple[int, ...], dtype: str) -> np.memmap:
    """``file`` memory-mapped read-only, or ValueError unless it holds ``shape`` ``dtype``."""
    try:
        a = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:  # missing, or shorter than its header says
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{file} cannot be memory-mapped: {msg}") from None
    if a.shape != shape or a.dtype != np.dtype(dtype):
        raise ValueError(f"{file} holds {a.shape} {a.dtype} but {META_FILE} says {shape} {dtype}")
    return a


class KNNLM:
    """A read-only, memory-mapped kNN-LM datastore and its nearest-neighbour search.

    Open one with :meth:`load`; write one with :meth:`build`. Attributes: ``keys`` ``(n, d)`` and
    ``values`` ``(n,)`` (read-only numpy memmaps), ``meta`` (the parsed ``meta.json``) and
    ``source`` (the caller's dict given at build time).

    :meth:`search` is exact (squared L2 over every key, tiled over the keys with a running
    top-k, float32 arithmetic per tile whatever the stored dtype) or approximate through a FAISS
    IVF index built once by :meth:`build_index` and saved beside the datastore.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self.meta = _read_meta(self.path)
        self.n, self.d = int(self.meta["n"]), int(self.meta["d"])
        self.dtype: KeyDtype = self.meta["dtype"]
        self.source: dict[str, Any] = self.meta["source"]
        self.keys = _open_array(self.path / KEYS_FILE, (self.n, self.d), self.dtype)
        self.values = _open_array(self.path / VALUES_FILE, (self.n,), self.meta["values_dtype"])
        self._index: Any = None  # the loaded FAISS index
        self.index_built = False  # whether the last build_index() call trained a new index

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KNNLM:
        """Open the datastore in folder ``path`` (read-only, memory-mapped).

        Raises:
            ValueError: no complete ``meta.json`` (an unfinished build), or a meta that does not
                match the files (shape or dtype of ``keys.npy`` / ``values.npy``, a short file).
            FileNotFoundError: no such folder.
        """
        return cls(path)

    @staticmethod
    def build(
        path: str | os.PathLike[str],
        n: int,
        d: int,
        dtype: KeyDtype = "float16",
        *,
        values_dtype: ValueDtype = "int32",
        source: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> DatastoreWriter:
        """A :class:`DatastoreWriter` for ``n`` rows of dimension ``d`` in folder ``path``.

        Args:
            path: the datastore's folder (created).
            n: rows the datastore will hold (every one must be added before ``close``).
            d: key dimension.
            dtype: ``"float16"`` (half the disk and page cache) or ``"float32"`` keys; the search
                computes in float32 either way.
            values_dtype: ``"int32"`` (vocabularies below 2³¹) or ``"int64"`` next-token ids.
            source: free-form JSON-serialisable provenance kept in ``meta.json`` (run folder,
                checkpoint step, digest of the split, ...).
            overwrite: replace a datastore already in ``path`` (FileExistsError otherwise).
        """
        return DatastoreWriter(path, n, d, dtype, values_dtype=values_dtype, source=source, overwrite=overwrite)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"KNNLM({str(self.path)!r}, n={self.n}, d={self.d}, dtype={self.dtype})"

    # ------------------------------------------------------------------ search

    def _check_queries(self, queries: torch.Tensor) -> None:
        if not isinstance(queries, torch.Tensor) or queries.dim() != 2 or not queries.dtype.is_floating_point:
            raise ValueError(f"queries must be a 2-D floating tensor (B, d), got {_shape(queries)}")
        if queries.shape[1] != self.d:
            raise ValueError(f"queries have d={queries.shape[1]} but the datastore has d={self.d}")

    def _key_rows(self, i0: int, i1: int, device: torch.device) -> torch.Tensor:
        """Keys ``i0:i1`` as a float32 tensor on ``device`` (read from the memmap, converted)."""
        return torch.from_numpy(np.array(self.keys[i0:i1], dtype=np.float32)).to(device)

    @torch.no_grad()
    def search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        backend: SearchBackend = "exact",
        nprobe: int = 32,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        return_index: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The ``k`` nearest datastore entries of each query by squared Euclidean distance.

        Args:
            queries: ``(B, d)`` floating, any device (the result comes back there).
            k: neighbours wanted; ``min(k, n)`` columns are returned.
            backend: ``"exact"``: every key is compared. Keys are read in tiles from the memmap
                (each tile once per call), converted to float32, and merged into a running
                top-k of every query; queries are processed in blocks per tile. Distances come
                from ``‖q‖² − 2qᵀx + ‖x‖²`` in float32 (clamped at 0).
                ``"faiss"``: candidates from the saved IVF index (:meth:`build_index`, needed
                first), searching ``nprobe`` lists; their distances are then **recomputed exactly
                in float32** as ``Σ(q − x)²`` from the stored keys and the list re-sorted, so
                p_kNN uses exact distances of approximate neighbours (the paper's choice for
                WikiText-103). A neighbour the index could not supply has ``dist = inf``,
                value −1 and index −1.
            nprobe: inverted lists visited per query (``"faiss"`` only; capped at ``nlist``).
            budget_bytes: working memory of one key tile plus one block of queries. Peak memory
                is this plus the outputs (``B × k × 20`` bytes), whatever ``n``.
            return_index: also return the neighbours' datastore rows.

        Returns:
            ``(dist (B, kk), values (B, kk))`` or, with ``return_index``, ``(dist, values,
            index (B, kk))``; ``kk = min(k, n)``, nearest first; dist float32, values and index
            int64.
        """
        self._check_queries(queries)
        k = positive_int(k, "k")
        budget_bytes = positive_int(budget_bytes, "budget_bytes")
        if backend not in ("exact", "faiss"):
            raise ValueError(f"backend must be 'exact' or 'faiss', got {backend!r}")
        kk = min(k, self.n)
        q = queries.detach().to(torch.float32)
        if backend == "faiss":
            dist, idx = self._search_faiss(q, kk, positive_int(nprobe, "nprobe"), budget_bytes)
        else:
            dist, idx = self._search_exact(q, kk, budget_bytes)
        vals = self._values_at(idx)
        return (dist, vals, idx) if return_index else (dist, vals)

    def _values_at(self, idx: torch.Tensor) -> torch.Tensor:
        """``values[idx]`` as int64 on ``idx``'s device, −1 where ``idx < 0``."""
        flat = idx.reshape(-1).cpu().numpy()
        out = np.full(flat.shape, -1, dtype=np.int64)
        ok = flat >= 0
        if ok.any():
            out[ok] = self.values[flat[ok]]  # reads only the pages holding these rows
        return torch.from_numpy(out).reshape(idx.shape).to(idx.device)

    def _search_exact(self, q: torch.Tensor, kk: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, d, dev = q.shape[0], self.d, q.device
        run_d = q.new_full((B, kk), float("inf"))
        run_i = torch.full((B, kk), -1, dtype=torch.int64, device=dev)
        if B == 0:
            return run_d, run_i
        # Half the budget to a float32 key tile, the rest to one block of queries: the (b, t)
        # distances plus the (b, kk) candidates of the tile and of the merge (values and indices).
        tile = int(min(self.n, max(1, budget // 2 // (4 * d + 4))))
        per_row = 4 * tile + 4 * d + 48 * kk
        rows = int(min(B, max(1, (budget - tile * (4 * d + 4)) // per_row)))
        q_sq = q.pow(2).sum(1)
        for t0 in range(0, self.n, tile):
            x = self._key_rows(t0, min(self.n, t0 + tile), dev)  # (t, d) float32
            x_sq = x.pow(2).sum(1)
            kt = min(kk, x.shape[0])
            for b0 in range(0, B, rows):
                b1 = min(B, b0 + rows)
                d2 = torch.addmm(x_sq[None, :], q[b0:b1], x.T, alpha=-2.0)  # (b, t)
                d2.add_(q_sq[b0:b1, None]).clamp_min_(0.0)
                td, ti = torch.topk(d2, kt, dim=1, largest=False, sorted=False)
                del d2
                cd = torch.cat([run_d[b0:b1], td], dim=1)
                ci = torch.cat([run_i[b0:b1], ti + t0], dim=1)
                md, mi = torch.topk(cd, kk, dim=1, largest=False, sorted=True)
                run_d[b0:b1] = md
                run_i[b0:b1] = torch.gather(ci, 1, mi)
            del x, x_sq
        return run_d, run_i

    # ------------------------------------------------------------------ FAISS

    @property
    def index_info(self) -> dict[str, Any] | None:
        """Settings of the saved FAISS index of *this* build of the datastore, or None."""
        p = self.path / INDEX_META_FILE
        if not p.is_file() or not (self.path / INDEX_FILE).is_file():
            return None
        try:
            info = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("build_id") != self.meta["build_id"] or info.get("n") != self.n:
            return None
        return info

    def build_index(
        self,
        nlist: int,
        *,
        pq_bytes: int | None = None,
        pq_bits: int = 8,
        train_size: int | None = None,
        seed: int = 0,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> bool:
        """Build the FAISS IVF index over the keys once, and save it beside the datastore.

        When an index with these settings already exists for this build of the datastore, it is
        loaded instead (``False`` is returned, ``index_built`` set to False); otherwise one is
        trained, filled and written (``True``). Any other saved index is replaced.

        The coarse quantizer (``nlist`` k-means centroids) is trained on ``train_size`` keys drawn
        without replacement by a numpy generator seeded with ``seed``; then every key is added
        in tiles of ``budget_bytes`` read from the memmap, converted to float32, with ids equal
        to the datastore rows. The index is written to a temporary file and renamed, then its
        settings to ``faiss.json``.

        Args:
            nlist: inverted lists (k-means centroids), ``≤ n``; the paper used 4096 for 103M keys.
            pq_bytes: None for ``IndexIVFFlat`` (full float32 vectors: ``4·n·d`` bytes of RAM
                and disk); an integer ``m`` for ``IndexIVFPQ`` with ``m`` sub-quantizers per key
                (``m`` must divide ``d``; the paper used 64 bytes per key).
            pq_bits: bits per sub-quantizer code (``IndexIVFPQ`` only; 8 makes ``m`` bytes a key,
                and trains ``2**pq_bits`` centroids per sub-quantizer).
            train_size: keys for training (default ``min(n, 256·nlist)``, as many as FAISS's
                k-means would use; held in RAM as float32).
            seed: seed of the training sample.
            budget_bytes: size of one tile of keys added at a time (as float32).

        Raises:
            ImportError: faiss is not installed.
        """
        nlist = positive_int(nlist, "nlist")
        if nlist > self.n:
            raise ValueError(f"nlist={nlist} exceeds the n={self.n} keys")
        if pq_bytes is not None:
            pq_bytes = positive_int(pq_bytes, "pq_bytes")
            if self.d % pq_bytes:
                raise ValueError(f"pq_bytes={pq_bytes} must divide d={self.d}")
        pq_bits = positive_int(pq_bits, "pq_bits")
        if pq_bits > 16:
            raise ValueError(f"pq_bits must lie in [1, 16], got {pq_bits}")
        train_size = min(self.n, 256 * nlist) if train_size is None else positive_int(train_size, "train_size")
        if not nlist <= train_size <= self.n:
            raise ValueError(f"train_size must lie in [nlist={nlist}, n={self.n}], got {train_size}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        budget_bytes = positive_int(budget_bytes, "budget_bytes")
        faiss = _import_faiss()
        settings = {"nlist": nlist, "pq_bytes": pq_bytes, "pq_bits": pq_bits if pq_bytes else None,
                    "train_size": train_size, "seed": seed}
        info = self.index_info
        if info is not None and all(info.get(key) == v for key, v in settings.items()):
            self._load_index()
            self.index_built = False
            return False

        spec = f"IVF{nlist},Flat" if pq_bytes is None else f"IVF{nlist},PQ{pq_bytes}x{pq_bits}"
        index = faiss.index_factory(self.d, spec, faiss.METRIC_L2)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(self.n, size=train_size, replace=False))
        index.train(np.array(self.keys[sample], dtype=np.float32))
        tile = max(1, budget_bytes // (4 * self.d))
        for t0 in range(0, self.n, tile):
            index.add(np.array(self.keys[t0:t0 + tile], dtype=np.float32))
        # The old index stops being valid before the new file replaces it.
        (self.path / INDEX_META_FILE).unlink(missing_ok=True)
        tmp = self.path / (INDEX_FILE + _PARTIAL)
        faiss.write_index(index, str(tmp))
        os.replace(tmp, self.path / INDEX_FILE)
        record = {**settings, "kind": spec, "n": self.n, "d": self.d, "build_id": self.meta["build_id"]}
        atomic_write(self.path / INDEX_META_FILE, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
        self._index = index
        self.index_built = True
        return True

    def _load_index(self) -> Any:
        if self._index is None:
            if self.index_info is None:
                raise ValueError(f"{self.path} has no FAISS index of this datastore; call build_index(nlist) first")
            faiss = _import_faiss()
            index = faiss.read_index(str(self.path / INDEX_FILE))
            if index.ntotal != self.n or index.d != self.d:
                raise ValueError(f"{self.path / INDEX_FILE} holds {index.ntotal} keys of d={index.d}, "
                                 f"the datastore {self.n} of d={self.d}")
            self._index = index
        return self._index

    def _search_faiss(self, q: torch.Tensor, kk: int, nprobe: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._load_index()
        index.nprobe = min(nprobe, index.nlist)
        B, d, dev = q.shape[0], self.d, q.device
        dists, idxs = [], []
        rows = max(1, budget // (kk * (8 * d + 40)))  # gathered keys and their differences
        for b0 in range(0, B, rows):
            qb = q[b0:b0 + rows]
            _, found = index.search(np.ascontiguousarray(qb.cpu().numpy()), kk)
            idx = torch.from_numpy(found).to(torch.int64)  # (b, kk), -1 where nothing was found
            ok = idx >= 0
            flat = idx[ok].numpy()
            uniq, inv = np.unique(flat, return_inverse=True)  # sorted rows: sequential reads
            keys = torch.from_numpy(np.array(self.keys[uniq], dtype=np.float32)[inv]).to(dev)
            x = q.new_zeros((*idx.shape, d))
            x[ok.to(dev)] = keys
            dist = (x - qb[:, None, :]).pow_(2).sum(2)  # exact float32 squared distances
            del x, keys
            dist = dist.masked_fill_(~ok.to(dev), float("inf"))
            dist, order = torch.sort(dist, dim=1)
            dists.append(dist)
            idxs.append(torch.gather(idx.to(dev), 1, order))
        if not dists:
            return q.new_empty((0, kk)), torch.empty((0, kk), dtype=torch.int64, device=dev)
        return torch.cat(dists), torch.cat(idxs)

    # ------------------------------------------------------------------ convenience

    @torch.no_grad()
    def log_prob(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        k: int = 1024,
        temperature: float = 1.0,
        **search_kwargs: Any,
    ) -> torch.Tensor:
        """``log p_kNN(y | h)``, ``(B,)``: :meth:`search` then :func:`knn_log_prob` (``k ≤ n``)."""
        k = positive_int(k, "k")
        if k > self.n:
            raise ValueError(f"k={k} exceeds the n={self.n} datastore entries")
        dist, vals = self.search(h, k, **search_kwargs)
        return knn_log_prob(dist, vals, y.to(dist.device), k, temperature)


def _import_faiss() -> Any:
    if not faiss_available():
        raise ImportError("the FAISS index needs the faiss package (pip install faiss-cpu); use backend='exact'")
    import faiss  # optional dependency

    return faiss
