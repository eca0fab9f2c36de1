"""Stream evaluation of language models: bucketed perplexity, and evaluation-time memories.

Two ways to read a split:

* :func:`evaluate`: ``batch_size`` contiguous rows, state carried, losses summed per
  training-frequency bucket (validation during training, plain ``lm-eval``).
* :func:`collect_stream`: the split as one stream (batch 1), keeping the output layer's
  inputs ``H``, the targets ``Y`` and the model's ``log p(y_t)``, so evaluation-time memories
  (a neural cache, MbPA) run over them (:func:`cache_log_probs`, :func:`mbpa_log_probs`) and
  are mixed in without running the model again; :func:`bucket_results` turns each variant's
  log-probabilities into perplexities overall and per bucket.

A variant is the model, or the dynamically evaluated model (``+dyneval``,
:mod:`fastbind.evaluation.dyneval`), mixed with some of the memories: the neural cache, MbPA and
the kNN-LM's training-set memory (``model``, ``+cache``, ``+mbpa``, ``+knnlm``, ``+cache+knnlm``,
``+dyneval+cache`` ..., :data:`MEMORIES` in that order). :func:`mix_variant` is the one place
that mixes them, for ``lm-eval``, the grid search of :mod:`fastbind.evaluation.sweep` and its
test evaluation alike, and :func:`variant_settings` the one layout of the settings that made a
variant, as written into ``eval-<split>.json`` and the sweep's grid rows::

    {"cache": {"size": 10000, "theta": 0.3, "lambda": 0.1},
     "mbpa": {"size": 10000, "k": 1024, "steps": 1, "lr": 0.3, "l2": 0.5, "eps": 0.001,
              "lambda": 0.04, "stride": 1},
     "knnlm": {"k": 1024, "temperature": 1.0, "lambda": 0.25, "stride": 1, "backend": "exact"},
     "dyneval": {"lr": 5e-05, "decay": 0.002, "eps": 2e-05, "segment": 5, ...}}
                                                   (only the parts the variant uses)

A variant named ``name@sample`` is ``name`` restricted to the targets MbPA or the kNN-LM scored
when they scored only a sample (see :func:`with_sample_variants`).

A recurrent model (``model.recurrent``: an LSTM) reads a split in chunks of ``bptt`` tokens
and carries its state across them. A transformer carries nothing, so both functions slide a
window over the text instead (:func:`window_spans`, :func:`windows`): a forward over at most
``window`` tokens scores only the targets the previous window did not, every target is scored
exactly once, and each one after the first ``window − stride`` sees at least ``window − stride``
tokens before it.

catbAbI models are judged by :func:`answer_accuracy`: accuracy on the answer tokens of an
evaluation stream, per task and mean, the state carried across segments.

Classifiers over a growing class set (the Omniglot curriculum) are judged by
:func:`accuracy` / :func:`predict`: argmax over the first ``n`` classes, optionally of the
mixture with an MbPA memory's adapted prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.buckets import BucketedNLL
from fastbind.data.stream import ChunkStream
from fastbind.errors import BadSetting, UserError
from fastbind.memory import MbPA, NeuralCache, mix_log_probs
from fastbind.training.config import alias
from fastbind.training.distributed import DistInfo, all_reduce_sum

__all__ = [
    "MEMORIES",
    "SAMPLE",
    "CacheSettings",
    "KNNLMSettings",
    "MbPASettings",
    "accuracy",
    "answer_accuracy",
    "bucket_results",
    "cache_defined",
    "cache_log_probs",
    "check_sample_strides",
    "collect_stream",
    "stream_parts",
    "evaluate",
    "format_table",
    "knnlm_log_probs",
    "knnlm_neighbours",
    "mbpa_log_probs",
    "mix_variant",
    "predict",
    "variant_log_probs",
    "variant_name",
    "variant_settings",
    "window_spans",
    "windows",
    "with_sample_variants",
]

SAMPLE = "@sample"  # suffix of the variants restricted to the targets a sampling memory scored
MEMORIES = ("cache", "mbpa", "knnlm")  # the evaluation-time memories, in the order of variant names


def _check_lambda(value: float) -> None:
    # mix_log_probs needs the weights of the mixture below 1: λ = 1 would drop the model
    if not 0.0 <= value < 1.0:
        raise BadSetting("lam", f"must be in [0, 1) (the memory's weight in the mixture), got {value}")


@dataclass
class CacheSettings:
    """Neural cache (Grave et al. 2016); on when ``lambda > 0`` (the paper: 10000, 0.3, 0.1).

    The mixing weight is the key ``cache.lambda`` everywhere (command lines, records); the
    attribute is ``lam`` because ``lambda`` is a Python keyword.
    """

    size: int = 10000
    theta: float = 0.3
    lam: float = alias("lambda", default=0.0)  # the mixing weight

    def __post_init__(self) -> None:
        if self.size < 1:
            raise BadSetting("size", f"must be >= 1, got {self.size}")
        if not self.theta > 0:
            raise BadSetting("theta", f"must be > 0 (the cache's inverse temperature), got {self.theta}")
        _check_lambda(self.lam)

    def record(self) -> dict[str, Any]:
        """These settings as a variant's ``settings["cache"]``."""
        return {"size": self.size, "theta": self.theta, "lambda": self.lam}


def check_local_adaptation(settings: Any) -> None:
    """MbPA's own bounds on ``k``, ``steps``, ``lr``, ``l2`` and ``eps``, for every settings section that
    configures one (``lm-eval``'s ``mbpa``, the curriculum's MbPA head, the continual learner's)."""
    for name in ("k", "steps"):
        if getattr(settings, name) < 1:
            raise BadSetting(name, f"must be >= 1, got {getattr(settings, name)}")
    if not settings.lr > 0:
        raise BadSetting("lr", f"must be > 0, got {settings.lr}")
    if not settings.l2 >= 0:
        raise BadSetting("l2", f"must be >= 0, got {settings.l2}")
    if not settings.eps > 0:
        raise BadSetting("eps", f"must be > 0, got {settings.eps}")


@dataclass
class MbPASettings:
    """MbPA (Sprechmann et al. 2018); on when ``lambda > 0`` (the paper: K 1024, 1 step, lr 0.3, l2 0.5, λ 0.04)."""

    lam: float = alias("lambda", default=0.0)  # the mixing weight
    size: int = 0  # memory size; 0 = the cache size
    k: int = 1024
    steps: int = 1
    lr: float = 0.3
    l2: float = 0.5
    eps: float = 1e-3
    # Score MbPA on every n-th target only (the memory still sees every step): the +mbpa
    # variants are then estimated on that sample, and the model and +cache are also
    # reported on it ("model@sample", "+cache@sample") for a like-for-like comparison.
    stride: int = 1

    def __post_init__(self) -> None:
        _check_lambda(self.lam)
        if self.size < 0:
            raise BadSetting("size", f"must be >= 1, or 0 for the cache's size, got {self.size}")
        if self.stride < 1:
            raise BadSetting("stride", f"must be >= 1, got {self.stride}")
        check_local_adaptation(self)

    def record(self) -> dict[str, Any]:
        """These settings as a variant's ``settings["mbpa"]`` (resolve ``size=0`` first)."""
        return {"size": self.size, "k": self.k, "steps": self.steps, "lr": self.lr, "l2": self.l2,
                "eps": self.eps, "lambda": self.lam, "stride": self.stride}


@dataclass
class KNNLMSettings:
    """kNN-LM (Khandelwal et al. 2020): the training split's ``(h_t, y_{t+1})`` as a datastore;
    on when ``lambda > 0`` (the paper, WikiText-103: k 1024, τ 1, λ 0.25).

    ``p_kNN(w) ∝ Σ_{i ∈ k nearest} exp(−‖h − h_i‖²/τ)·1{y_i = w}``, mixed with the model in
    probability space. Exact search compares each query with every key; ``stride`` scores only
    every n-th target (the variants are then estimated on that sample, as MbPA's ``stride``),
    ``backend=faiss`` searches an IVF index built once beside the datastore (needs ``faiss``).
    """

    lam: float = alias("lambda", default=0.0)  # the mixing weight
    k: int = 1024  # neighbours
    temperature: float = 1.0  # τ of exp(−d/τ), d the squared Euclidean distance
    stride: int = 1  # score every n-th target only
    backend: Literal["exact", "faiss"] = "exact"
    nlist: int = 1024  # backend=faiss: inverted lists of the index (built once per datastore)
    nprobe: int = 32  # backend=faiss: lists searched per query
    dtype: Literal["float16", "float32"] = "float16"  # the datastore's keys on disk

    def __post_init__(self) -> None:
        _check_lambda(self.lam)
        for name in ("k", "stride", "nlist", "nprobe"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise BadSetting("temperature", f"must be > 0, got {self.temperature}")
        if self.backend not in ("exact", "faiss"):
            raise BadSetting("backend", f"{self.backend!r} is not one of exact, faiss")
        if self.dtype not in ("float16", "float32"):
            raise BadSetting("dtype", f"{self.dtype!r} is not one of float16, float32")

    def record(self) -> dict[str, Any]:
        """These settings as a variant's ``settings["knnlm"]``."""
        out = {"k": self.k, "temperature": self.temperature, "lambda": self.lam, "stride": self.stride,
               "backend": self.backend}
        if self.backend == "faiss":
            out.update(nlist=self.nlist, nprobe=self.nprobe)
        return out


def variant_name(cache: bool = False, mbpa: bool = False, knnlm: bool = False, dyneval: bool = False) -> str:
    """``model``, ``+cache``, ``+mbpa``, ``+cache+mbpa``, ``+knnlm``, ..., ``+dyneval+cache+knnlm``."""
    name = "".join(f"+{m}" for m, on in zip(("dyneval", *MEMORIES), (dyneval, cache, mbpa, knnlm)) if on)
    return name or "model"


def variant_settings(cache: CacheSettings | None = None, mbpa: MbPASettings | None = None,
                     knnlm: KNNLMSettings | None = None, dyneval: Any = None) -> dict | None:
    """The settings of the variant that mixes in these memories, over the dynamically evaluated
    model when ``dyneval`` (a :class:`~fastbind.evaluation.dyneval.DynEvalSettings`) is given
    (None: the model alone), in the one layout of evaluation records and grid rows."""
    parts = {"cache": cache, "mbpa": mbpa, "knnlm": knnlm, "dyneval": dyneval}
    out = {name: s.record() for name, s in parts.items() if s is not None}
    return out or None


@torch.no_grad()
def answer_accuracy(model, segments, *, device: torch.device, num_tasks: int = 20, max_segments: int = 0,
                    progress: bool = False, state: tuple | None = None) -> dict:
    """Answer accuracy of a language model over catbAbI evaluation segments.

    The state starts empty (or at ``state``) and is carried from segment to segment. Accuracy counts the
    positions whose target is an answer (``segment.answer``): the argmax of the logits
    must equal it. The loss is the mean cross-entropy over the segments' targets (answers
    only in QA mode, every token in LM mode).

    Args:
        model: returns :class:`~fastbind.models.language_model.LMOutput` for ``(x, state)``.
        segments: an iterable of :class:`~fastbind.data.babi.BabiSegment` (``x, y, task,
            answer``, each ``(B, L)``), e.g. a :class:`~fastbind.data.babi.CatbAbIEvalStream`.
        device: where the model runs.
        num_tasks: task ids run from 1 to this.
        max_segments: stop after this many segments (0 = all).
        progress: show a progress bar.
        state: the state to start from (``None``: empty), batched as the segments.

    Returns:
        ``{"per_task": {"qa1": acc, ...}, "mean": mean over tasks, "accuracy": over all
        answers, "answers": count, "answers_per_task": {...}, "loss": mean target NLL,
        "targets": count}`` — tasks with no answer in the segments are left out.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_tasks + 1, dtype=torch.float64)
    count = torch.zeros(num_tasks + 1, dtype=torch.float64)
    nll, targets = 0.0, 0
    total = len(segments) if hasattr(segments, "__len__") else None
    if max_segments and total is not None:
        total = min(total, max_segments)
    for i, seg in enumerate(tqdm(segments, total=total, desc="catbAbI eval", leave=False, disable=not progress)):
        if max_segments and i >= max_segments:
            break
        x, y, task, answer = (t.to(device) for t in seg)
        out = model(x, state)
        state = out.state
        has = y != -100
        if bool(has.any()):
            nll += float(F.cross_entropy(out.logits[has], y[has], reduction="sum"))
            targets += int(has.sum())
        hit = (out.logits[answer].argmax(-1) == y[answer]).double().cpu()
        ids = task[answer].cpu()
        count += torch.bincount(ids, minlength=num_tasks + 1).double()
        correct += torch.bincount(ids, weights=hit, minlength=num_tasks + 1)
    model.train(was_training)
    seen = [k for k in range(1, num_tasks + 1) if count[k] > 0]
    per_task = {f"qa{k}": float(correct[k] / count[k]) for k in seen}
    return {
        "per_task": per_task,
        "mean": sum(per_task.values()) / len(per_task) if per_task else float("nan"),
        "accuracy": float(correct.sum() / count.sum()) if count.sum() > 0 else float("nan"),
        "answers": int(count.sum()),
        "answers_per_task": {f"qa{k}": int(count[k]) for k in seen},
        "loss": nll / targets if targets else float("nan"),
        "targets": targets,
    }


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over ``n`` targets: ``(a, c, b)`` per forward, in order.

    Target ``t`` is token ``t + 1`` predicted from tokens ``0..t``. A forward reads the inputs
    ``[a, b)`` (``b − a ≤ window``) and scores the targets ``[c, b)``, those the previous window
    did not score: the first window scores ``[0, min(window, n))``, each later one ``stride``
    more (fewer at the end), starting ``window`` before its end. So every target is scored
    exactly once, and target ``t ≥ window − stride`` is predicted from at least
    ``window − stride`` earlier tokens besides its own input (``stride = window``: windows
    side by side, no overlap).
    """
    if not 1 <= stride <= window:
        raise ValueError(f"stride must lie in [1, window={window}], got {stride}")
    spans, b = [], min(window, n)
    if n > 0:
        spans.append((0, 0, b))
    while b < n:
        e = min(b + stride, n)
        spans.append((max(0, e - window), b, e))
        b = e
    return spans


def windows(model, rows: torch.Tensor, window: int, stride: int, device: torch.device):
    """Run a non-recurrent model over token rows ``(B, N + 1)`` in sliding windows
    (:func:`window_spans` over the ``N`` targets of each row, all rows side by side).

    Yields ``(c, b, out, y)`` per window: the model's :class:`~fastbind.models.language_model.LMOutput`
    for the window's inputs, already cut to the targets ``[c, b)`` it scores (``out.nll`` and
    ``out.hidden`` are ``(B, b − c, ...)``; ``out.logits`` is None), and those targets ``y (B, b − c)``.
    Gradients flow as the caller's mode allows (dynamic evaluation trains on them).
    """
    for a, c, b in window_spans(rows.shape[1] - 1, window, stride):
        x, y = rows[:, a:b].to(device), rows[:, a + 1 : b + 1].to(device)
        out = model(x, None, targets=y)
        cut = c - a
        yield c, b, out._replace(logits=None, nll=out.nll[:, cut:], hidden=out.hidden[:, cut:]), y[:, cut:]


def default_window(model, window: int = 0, stride: int = 0) -> tuple[int, int]:
    """``(window, stride)`` with 0s resolved: the window is the model's context, the stride
    half the window. ValueError when the window exceeds the context."""
    context = getattr(model, "context", 0)
    window = window or context
    if context and window > context:
        raise ValueError(f"window {window} is longer than the model's context of {context} tokens")
    return window, stride or max(1, window // 2)


@torch.no_grad()
def evaluate(
    model,
    tokens: torch.Tensor,
    *,
    batch_size: int,
    bptt: int,
    acc: BucketedNLL,
    device: torch.device,
    max_tokens: int = 0,
    info: DistInfo | None = None,
    progress: bool = False,
    window: int = 0,
    stride: int = 0,
) -> dict:
    """Perplexity of a split as ``batch_size`` contiguous rows with the state carried.

    A non-recurrent model (``model.recurrent`` False, a transformer) reads each row in sliding
    windows of ``window`` tokens moved by ``stride`` (:func:`window_spans`; 0: the model's
    context and half of it) instead of chunks of ``bptt``. Under data parallelism the rows are
    split across ranks and the sums all-reduced.

    Returns:
        ``acc.result()``: ``{"ppl", "nll", "tokens", "buckets"}``.
    """
    was_training = model.training
    model.eval()
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    rank, world = (info.rank, info.world_size) if info else (0, 1)
    stream = ChunkStream(tokens, batch_size, bptt, rank, world)
    if not getattr(model, "recurrent", True):
        window, stride = default_window(model, window, stride)
        spans = windows(model, stream.rows, window, stride, device)
        total = len(window_spans(stream.rows.shape[1] - 1, window, stride))
        for _, _, out, y in tqdm(spans, total=total, desc="eval", leave=False, disable=not progress):
            acc.add(out.nll.flatten(), y)
    else:
        state = None
        for x, y in tqdm(stream, desc="eval", leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            out = model(x, state, targets=y)  # an adaptive softmax computes only what the targets need
            state = out.state
            acc.add(out.nll.flatten(), y)
    acc.nll, acc.tokens = all_reduce_sum(acc.nll), all_reduce_sum(acc.tokens)  # a copy in one process
    model.train(was_training)
    return acc.result()


@torch.no_grad()
def collect_stream(model, tokens: torch.Tensor, *, bptt: int, device: torch.device, max_tokens: int = 0,
                   progress: bool = False, window: int = 0, stride: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the model once over a split as one stream (batch 1, state carried; a non-recurrent
    model in sliding windows of ``window`` tokens moved by ``stride``, as :func:`evaluate`).

    Returns the output layer's inputs ``H (N-1, d)``, the targets ``Y (N-1,)`` and the
    model's ``log p(y_t)`` ``LP (N-1,)``, so memories can be evaluated (and swept) on them
    without running the model again.
    """
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    hs, ys, lps = [], [], []
    for h, y, lp in stream_parts(model, tokens, bptt=bptt, device=device, window=window, stride=stride,
                                 progress=progress):
        hs.append(h)
        ys.append(y)
        lps.append(lp)
    return torch.cat(hs), torch.cat(ys), torch.cat(lps)


@torch.no_grad()
def stream_parts(model, tokens: torch.Tensor, *, bptt: int, device: torch.device, window: int = 0, stride: int = 0,
                 progress: bool = False, desc: str = "model"):
    """:func:`collect_stream` a piece at a time: yields ``(h (n, d) float, y (n,), log p(y) (n,))``
    per chunk (recurrent model) or window (transformer), in stream order (e.g. to write a
    datastore without holding the whole split's ``H``)."""
    model.eval()
    if not getattr(model, "recurrent", True):
        window, stride = default_window(model, window, stride)
        rows = tokens.reshape(1, -1)
        total = len(window_spans(rows.shape[1] - 1, window, stride))
        for _, _, out, y in tqdm(windows(model, rows, window, stride, device), total=total, desc=desc,
                                 leave=False, disable=not progress):
            yield out.hidden[0].float(), y[0], -out.nll[0]
        return
    state = None
    for s in tqdm(range(0, tokens.numel() - 1, bptt), desc=desc, leave=False, disable=not progress):
        x = tokens[s : min(s + bptt, tokens.numel() - 1)].to(device)
        y = tokens[s + 1 : s + 1 + x.numel()].to(device)
        out = model(x.unsqueeze(0), state, targets=y.unsqueeze(0))
        state = out.state
        yield out.hidden[0].float(), y, -out.nll[0]


def cache_log_probs(H: torch.Tensor, Y: torch.Tensor, s: CacheSettings, chunk: int = 256,
                    progress: bool = False) -> torch.Tensor:
    """``log p_cache(y_t)`` over a stream, the cache starting empty."""
    cache = NeuralCache(size=s.size, theta=s.theta)
    parts = [cache.log_prob(H[i : i + chunk], Y[i : i + chunk])
             for i in tqdm(range(0, Y.numel(), chunk), desc="cache", leave=False, disable=not progress)]
    return torch.cat(parts)


def cache_defined(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n,)`` bool: where a cache that starts the stream empty has something stored (every
    target but the first), the mask :func:`~fastbind.memory.mix_log_probs` takes to leave the
    cache out of the mixture where it is no distribution yet."""
    return torch.arange(n, device=device) > 0


def mbpa_log_probs(H: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   s: MbPASettings, default_size: int, chunk: int = 256, progress: bool = False) -> torch.Tensor:
    """``log p_mbpa(y_t)`` over a stream, the memory starting empty; the weights are not changed.
    With ``s.stride > 1`` only targets ``0, stride, 2·stride, …`` are scored (the rest are NaN)."""
    mbpa = MbPA(size=s.size or default_size, k=s.k, steps=s.steps, lr=s.lr, l2=s.l2, eps=s.eps)
    W, b = weight.detach().float(), None if bias is None else bias.detach().float()
    pos = torch.arange(Y.numel(), device=Y.device)
    parts = [mbpa.log_prob(H[i : i + chunk], Y[i : i + chunk], W, b,
                           mask=None if s.stride == 1 else pos[i : i + chunk] % s.stride == 0)
             for i in tqdm(range(0, Y.numel(), chunk), desc="mbpa", leave=False, disable=not progress)]
    return torch.cat(parts)


def knnlm_neighbours(H: torch.Tensor, store: Any, s: KNNLMSettings, k: int | None = None, chunk: int = 8192,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` (default ``s.k``) nearest datastore entries of the queries ``H[::s.stride]``:
    ``(positions (n,), dist (n, k), values (n, k))``, searched once so that ``k``, ``τ`` and ``λ``
    can be swept on them (:func:`knnlm_log_probs` with ``neighbours=``)."""
    pos = torch.arange(0, H.shape[0], s.stride, device=H.device)
    k = k or s.k
    if k > store.n:
        raise UserError(f"knnlm k={k} is more than the datastore's {store.n} entries (the training split's targets)")
    dists, values = [], []
    for i in tqdm(range(0, pos.numel(), chunk), desc="knnlm", leave=False, disable=not progress):
        d, v = store.search(H[pos[i : i + chunk]], k, backend=s.backend, nprobe=s.nprobe)
        dists.append(d)
        values.append(v)
    if not dists:
        return pos, H.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.int64, device=H.device)
    return pos, torch.cat(dists), torch.cat(values)


def knnlm_log_probs(H: torch.Tensor, Y: torch.Tensor, store: Any, s: KNNLMSettings, chunk: int = 8192,
                    progress: bool = False, neighbours: tuple | None = None) -> torch.Tensor:
    """``log p_kNN(y_t)`` over a stream from a training-set datastore (a
    :class:`~fastbind.memory.KNNLM`); with ``s.stride > 1`` only targets ``0, stride, …`` are
    scored (the rest are NaN). ``neighbours``: the result of :func:`knnlm_neighbours` for these
    queries at a ``k`` of at least ``s.k`` (no search then)."""
    from fastbind.memory.knn_lm import knn_log_prob  # noqa: PLC0415 — numpy-backed module, loaded on use

    pos, dist, values = neighbours if neighbours is not None else knnlm_neighbours(H, store, s, None, chunk, progress)
    out = torch.full((Y.numel(),), float("nan"), dtype=torch.float32, device=Y.device)
    if pos.numel():
        out[pos] = knn_log_prob(dist, values, Y[pos], s.k, s.temperature).to(out.dtype)
    return out


def mix_variant(lp: torch.Tensor, cache: tuple[float, torch.Tensor] | None = None,
                mbpa: tuple[float, torch.Tensor] | None = None,
                knnlm: tuple[float, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's target log-probabilities ``lp (n,)`` mixed with the memories given as
    ``(λ, log-probs)``, in probability space (:func:`~fastbind.memory.mix_log_probs`).

    The tensors hold the targets of one stream from its first on, every one or every
    ``stride``-th: either way only the first has an empty cache, which is left out there and
    the other weights renormalised (:func:`cache_defined`).
    """
    pairs: list[tuple] = []
    if cache is not None:
        pairs.append((*cache, cache_defined(lp.numel(), lp.device)))
    for memory in (mbpa, knnlm):
        if memory is not None:
            pairs.append((memory[0], memory[1].to(lp.dtype)))
    return mix_log_probs(lp, *pairs)


def variant_log_probs(lp: torch.Tensor, cache: tuple[float, torch.Tensor] | None = None,
                      mbpa: tuple[float, torch.Tensor] | None = None,
                      knnlm: tuple[float, torch.Tensor] | None = None, *,
                      dyneval: bool = False) -> dict[str, torch.Tensor]:
    """The model alone and mixed (:func:`mix_variant`) with every combination of the memories given
    as ``(λ, log-probs)``, as log-probabilities of the targets, by variant name (prefixed
    ``+dyneval`` when ``lp`` is a dynamically evaluated model's). Combinations whose λs sum to
    1 or more are left out."""
    given = {name: m for name, m in zip(MEMORIES, (cache, mbpa, knnlm)) if m is not None}
    out = {variant_name(dyneval=dyneval): lp}
    for r in range(1, len(given) + 1):
        for names in combinations(given, r):
            if sum(given[n][0] for n in names) >= 1:
                continue
            out[variant_name(**{n: True for n in names}, dyneval=dyneval)] = mix_variant(
                lp, **{n: given[n] for n in names})
    sampled = [given[n][1] for n in ("mbpa", "knnlm") if n in given]
    return with_sample_variants(out, *sampled)


def check_sample_strides(mbpa_stride: int, knnlm_stride: int, mbpa_name: str = "mbpa.stride",
                         knnlm_name: str = "knnlm.stride") -> None:
    """MbPA and the kNN-LM each score every ``stride``-th target; a combination of both is scored
    on the targets both score, so their strides must be equal unless one is 1 (every target).
    Raises :class:`~fastbind.errors.BadSetting` naming ``knnlm_name``."""
    if 1 not in (mbpa_stride, knnlm_stride) and mbpa_stride != knnlm_stride:
        raise BadSetting(knnlm_name, f"got {knnlm_stride} with {mbpa_name}={mbpa_stride}: the two would score "
                                     f"different samples; give them the same stride (or 1)")


def with_sample_variants(lps: dict[str, torch.Tensor], *sampled: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """When a memory scored only a sample of the targets (NaN elsewhere in its log-probs
    ``sampled``: MbPA or the kNN-LM with ``stride > 1``), add every variant scored on all targets
    restricted to that sample (``name@sample``), so that every variant can be compared on the
    same targets. :func:`bucket_results` skips NaN targets."""
    masks = [torch.isnan(lp) for lp in sampled if lp is not None]
    if not masks or not any(bool(m.any()) for m in masks):
        return lps
    skipped = masks[0]
    for m in masks[1:]:
        skipped = skipped | m
    extra = {name + SAMPLE: lp.masked_fill(skipped, float("nan")) for name, lp in lps.items()
             if not bool(torch.isnan(lp).any())}
    return {**lps, **extra}


def bucket_results(lps: dict[str, torch.Tensor], Y: torch.Tensor, train_counts: torch.Tensor,
                   edges: tuple[int, ...]) -> dict[str, dict]:
    """Perplexity overall and per frequency bucket of each variant's target log-probabilities."""
    out = {}
    for name, lp in lps.items():
        acc = BucketedNLL.from_counts(train_counts, edges)
        scored = ~torch.isnan(lp)  # a sampled variant (MbPA stride > 1) scores only some targets
        acc.add(-lp[scored].cpu(), Y[scored].cpu())
        out[name] = acc.result()
    return out


def format_table(result: dict, title: str) -> str:
    """A bucketed result (``{"ppl", "tokens", "buckets"}``) as a small text table under ``title``."""
    lines = [title, f"  {'bucket':<10} {'tokens':>10} {'ppl':>12}"]
    for b in result["buckets"]:
        ppl = "–" if b["ppl"] is None else f"{b['ppl']:,.2f}"
        lines.append(f"  {b['name']:<10} {b['tokens']:>10,} {ppl:>12}")
    lines.append(f"  {'all':<10} {result['tokens']:>10,} {result['ppl']:>12,.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- classifiers


@torch.no_grad()
def predict(model, images: torch.Tensor, n: int, mbpa: MbPA | None = None, lam: float = 0.0,
            chunk: int = 512) -> torch.Tensor:
    """Predicted classes in ``[0, n)`` for uint8 images ``(N, H, W)`` (ink 255), in eval mode, on the
    model's device (the images are moved there chunk by chunk).

    ``model`` is a classifier over a growing class set with ``features(x)``,
    ``classify(features, n)`` and ``output_layer(n)`` (e.g.
    :class:`fastbind.models.convnet.ConvClassifier`). With an MbPA memory and ``lam > 0`` the
    prediction is the argmax of ``(1 − lam)·softmax(logits) + lam·softmax(MbPA-adapted logits)``,
    the adaptation seeing only the first ``n`` rows of the output layer.
    """
    was_training = model.training
    model.eval()
    preds = []
    W, b = model.output_layer(n)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(W.device).float().div_(255).unsqueeze(1)
        f = model.features(x)
        logits = model.classify(f, n)
        if mbpa is not None and len(mbpa) and lam > 0:
            p = torch.lerp(logits.softmax(1), mbpa.logits(f, W, b).softmax(1), lam)
            preds.append(p.argmax(1))
        else:
            preds.append(logits.argmax(1))
    model.train(was_training)
    return torch.cat(preds)


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, n: int,
             mbpa: MbPA | None = None, lam: float = 0.0) -> float:
    """Share of ``images`` whose predicted class (among the first ``n``) is the label."""
    return float((predict(model, images, n, mbpa, lam) == labels).float().mean())
