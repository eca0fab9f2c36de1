"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"):
the model is adapted by gradient descent to the test stream it is scoring.

The update is the paper's "RMS with an RMS global prior", as in the authors' public code
(github.com/benkrause/dynamic-evaluation, ``dynamiceval.py``):

1. Before evaluation, :func:`gradient_statistics` collects the mean squared gradient ``MS`` of
   every trainable parameter over the *training* data, in eval mode (no dropout): batches of
   ``stats_batch`` rows × ``segment`` tokens (the authors: 100 × 5, the whole training set), the
   state carried across batches, the gradient of each batch's *mean* NLL, squared, averaged over
   the batches.
2. :class:`DynamicEvaluator` keeps the trained weights ``θ_g`` and, from ``MS``::

       RMS      = √MS                                 (per element)
       RMS_norm = RMS / avg(RMS)                      avg: the mean over the parameter tensors of
                                                      each tensor's mean RMS (the authors' code)
       rate     = min(λ · RMS_norm, 1)                (the code clips RMS_norm at 1/λ: a decay never
                                                      overshoots θ_g)

3. The stream is cut into segments of ``segment`` tokens (batch 1, state carried). Each segment is
   scored first, then the model takes one step on the segment's mean NLL ``L(s_t)``::

       θ ← θ + rate ⊙ (θ_g − θ) − η · ∇L(s_t) / (RMS + ε)

   both terms taken at the pre-step ``θ`` (ε is added to the RMS, not inside the square root).
   A transformer is scored in the sliding windows of its static reading and takes one step per
   window, on the window's new targets: its segment is the reading's stride.

Every trainable parameter (``requires_grad``) of the model is adapted; a tied embedding/output
matrix is one parameter (its gradient sums both uses). A parameter element whose ``MS`` is 0
(an embedding row absent from the statistics' batches) has ``rate`` 0 and takes steps of
``η/ε`` times its gradient: finite, as in the authors' code.

``lr = 0`` is static evaluation. The defaults of the authors' current code (whose
hyper-parameters follow the paper's equations), tuned for AWD-LSTM on PTB: ``lr 5e-5``,
``decay 2e-3``, ``eps 2e-5``, ``segment 5``. The paper's own numbers (PTB and WikiText-2:
``lr 0.002, λ 0.02, ε 0.001``) are in the scaling of the first version of that code (sum rather
than mean of squared gradients, a sum rather than a mean over tensors in ``avg``); its README
converts them: ``λ / #tensors``, ``η / √#batches``, ``ε / √#batches``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from fastbind.data.stream import ChunkStream
from fastbind.errors import BadSetting
from fastbind.evaluation import default_window, window_spans, windows
from fastbind.models.language_model import detach_state

__all__ = [
    "DEFAULT_SEGMENT",
    "DynEvalSettings",
    "DynamicEvaluator",
    "adapt",
    "dyneval_stream",
    "gradient_statistics",
    "training_batches",
]

DEFAULT_SEGMENT = 5  # a recurrent model's tokens per step (the authors' AWD-LSTM value)


@dataclass
class DynEvalSettings:
    """The ``dyneval`` section: dynamic evaluation (Krause et al. 2018); on when ``lr > 0``.

    The authors' AWD-LSTM (PTB) values: ``lr 5e-5``, ``decay 2e-3``, ``eps 2e-5``, ``segment 5``,
    statistics over the whole training set in batches of 100 rows.
    """

    lr: float = 0.0  # η, the step size; 0 = off (static evaluation)
    decay: float = 0.002  # λ, the pull back to the trained weights, scaled per element by RMS_norm
    eps: float = 2e-5  # ε, added to the RMS gradient in the step's denominator
    segment: int = 0  # targets per adaptation step; 0: 5 for a recurrent model (also the statistics'
    #   batch length), a transformer's reading stride (it steps once per window; see resolve_segment)
    stats_tokens: int = 0  # training tokens for the gradient statistics; 0 = the whole training split
    stats_batch: int = 100  # rows of the statistics' batches (the gradient is of each batch's mean NLL)

    def __post_init__(self) -> None:
        if not self.lr >= 0:
            raise BadSetting("lr", f"must be >= 0 (0: off), got {self.lr}")
        if not self.decay >= 0:
            raise BadSetting("decay", f"must be >= 0, got {self.decay}")
        if not self.eps > 0:
            raise BadSetting("eps", f"must be > 0, got {self.eps}")
        if self.segment < 0:
            raise BadSetting("segment", f"must be >= 1, or 0 for the model's default, got {self.segment}")
        if self.stats_tokens < 0:
            raise BadSetting("stats_tokens", f"must be >= 0 (0: the whole training split), got {self.stats_tokens}")
        if self.stats_batch < 1:
            raise BadSetting("stats_batch", f"must be >= 1, got {self.stats_batch}")

    def resolve_segment(self, recurrent: bool, stride: int = 0) -> DynEvalSettings:
        """These settings with ``segment`` made concrete for a model: a recurrent model's 0 is
        :data:`DEFAULT_SEGMENT` tokens; a transformer takes one step per window of the reading it
        is scored in, so its segment is the reading's ``stride`` (then ``+dyneval`` and the static
        model score every target with the same context). ValueError for a transformer's segment
        other than 0 or ``stride``."""
        if recurrent:
            return replace(self, segment=self.segment or DEFAULT_SEGMENT)
        if self.segment not in (0, stride):
            raise ValueError(f"a transformer adapts once per window of its reading: segment {self.segment} must "
                             f"be its stride ({stride})")
        return replace(self, segment=stride)

    @property
    def on(self) -> bool:
        """Whether the model adapts at all (``lr > 0``; without steps the decay has nothing to undo)."""
        return self.lr > 0

    def record(self) -> dict[str, Any]:
        """These settings as an evaluation record's ``settings["dyneval"]``."""
        return {"lr": self.lr, "decay": self.decay, "eps": self.eps, "segment": self.segment,
                "stats_tokens": self.stats_tokens, "stats_batch": self.stats_batch}


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameter to adapt")
    return named


def _mean_nll(nll: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``nll`` over the targets that count (``y != -100``; all when ``y`` is None)."""
    if y is None:
        return nll.mean()
    valid = y != -100
    return (nll * valid).sum() / valid.sum()


def training_batches(tokens: torch.Tensor, settings: DynEvalSettings) -> ChunkStream:
    """The statistics' batches of a training split: its first ``stats_tokens`` tokens (all when 0)
    as ``stats_batch`` contiguous rows, in chunks of ``segment`` tokens (state carried in order)."""
    if settings.stats_tokens:
        tokens = tokens[: settings.stats_tokens + 1]
    return ChunkStream(tokens, settings.stats_batch, settings.resolve_segment(True).segment)


def gradient_statistics(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                        device: torch.device | None = None, max_batches: int = 0,
                        progress: bool = False) -> dict[str, torch.Tensor]:
    """``MS``: the mean squared gradient of every trainable parameter over training batches.

    Each ``(x, y)`` batch ``(B, L)`` is run in eval mode (no dropout), the state carried from
    batch to batch (detached); the gradient is of the batch's mean NLL over its targets (``-100``
    ignored; a batch without targets is skipped), squared element-wise and averaged over the
    batches. Gradients are taken with :func:`torch.autograd.grad`, so nothing is left in ``.grad``.

    Args:
        model: returns :class:`~fastbind.models.language_model.LMOutput` (with ``nll``) for
            ``model(x, state, targets=y)``.
        batches: training ``(x, y)`` batches in stream order, e.g. :func:`training_batches`.
        device: where the model runs (default: its first parameter's device).
        max_batches: stop after this many batches (0 = all).
        progress: show a progress bar.

    Returns:
        ``{parameter name: MS}``, float32 tensors of the parameters' shapes (names as in
        ``model.named_parameters()``).
    """
    named = _trainable(model)
    params = [p for _, p in named]
    device = device or params[0].device
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if max_batches and total is not None:
        total = min(total, max_batches)
    was_training = model.training
    model.eval()
    state, count = None, 0
    try:
        for i, (x, y) in enumerate(tqdm(batches, total=total, desc="dyneval stats", leave=False,
                                        disable=not progress)):
            if max_batches and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            with torch.enable_grad():
                out = model(x, state, targets=y)
                state = detach_state(out.state)
                if not bool((y != -100).any()):
                    continue
                grads = torch.autograd.grad(_mean_nll(out.nll, y), params, allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:
                    s.addcmul_(g.float(), g.float())
            count += 1
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("no training batch with targets to collect gradient statistics from")
    return {name: s.div_(count) for (name, _), s in zip(named, sums)}


class DynamicEvaluator:
    """The RMS-with-RMS-global-prior update of dynamic evaluation, applied in place to a model.

    Holds the trained weights ``θ_g`` (a copy taken at construction), the per-element step
    denominators ``RMS + ε`` and decay rates ``min(λ · RMS_norm, 1)`` (see the module's
    docstring). :meth:`step` adapts the model on a segment's loss; :meth:`restore` puts
    ``θ_g`` back, so that the trained checkpoint is unchanged once evaluation ends.

    Args:
        model: the model to adapt; every parameter with ``requires_grad`` is adapted.
        ms: :func:`gradient_statistics` of this model (one entry per trainable parameter).
        settings: ``lr``, ``decay`` and ``eps`` are used.
    """

    def __init__(self, model: torch.nn.Module, ms: dict[str, torch.Tensor], settings: DynEvalSettings) -> None:
        named = _trainable(model)
        missing = [n for n, _ in named if n not in ms]
        if missing:
            raise ValueError(f"no gradient statistics for parameter(s) {', '.join(missing)}")
        for n, p in named:
            if ms[n].shape != p.shape:
                raise ValueError(f"gradient statistics of {n} have shape {tuple(ms[n].shape)}, "
                                 f"the parameter {tuple(p.shape)}")
        self.model, self.settings = model, settings
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.theta_g = [p.detach().clone() for p in self.params]
        rms = [ms[n].detach().to(p.device, torch.float32).sqrt() for n, p in named]
        # avg(RMS): the mean over parameter tensors of each tensor's mean (as the authors' code)
        self.avg_rms = sum(float(r.mean()) for r in rms) / len(rms)
        self.denom = [(r + settings.eps).to(p.dtype) for r, p in zip(rms, self.params)]
        if settings.decay > 0 and self.avg_rms > 0:
            scale = settings.decay / self.avg_rms
            self.rate = [(r * scale).clamp_(max=1.0).to(p.dtype) for r, p in zip(rms, self.params)]
        else:  # no decay, or no gradient at all in the statistics: nothing to scale a decay by
            self.rate = [torch.zeros_like(p) for p in self.params]
        self.decays = settings.decay > 0 and self.avg_rms > 0
        # θ + rate ⊙ (θ_g − θ) = θ ⊙ (1 − rate) + rate ⊙ θ_g: one multiply and one add in place per step
        self.keep = [1.0 - r for r in self.rate]
        self.pull = [r * t for r, t in zip(self.rate, self.theta_g)]

    def step(self, loss: torch.Tensor) -> None:
        """One adaptation step on a segment's (mean) ``loss``, in place, under ``no_grad``.

        The gradient is taken with :func:`torch.autograd.grad` (``.grad`` is left untouched;
        none is taken when ``lr = 0``); a parameter the loss does not reach gets the decay alone.
        """
        lr = self.settings.lr
        grads = torch.autograd.grad(loss, self.params, allow_unused=True) if lr else [None] * len(self.params)
        with torch.no_grad():  # both terms at the pre-step θ: the gradient was taken before any change
            if self.decays:
                torch._foreach_mul_(self.params, self.keep)
                torch._foreach_add_(self.params, self.pull)
            used = [i for i, g in enumerate(grads) if g is not None]
            if used:
                torch._foreach_addcdiv_([self.params[i] for i in used], [grads[i] for i in used],
                                        [self.denom[i] for i in used], value=-lr)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the trained weights ``θ_g`` back into the model."""
        for p, t in zip(self.params, self.theta_g):
            p.copy_(t)


def adapt(evaluator: DynamicEvaluator, nll: torch.Tensor, targets: torch.Tensor | None = None) -> None:
    """Adapt on a segment just scored: one :meth:`~DynamicEvaluator.step` on the mean of the NLLs
    of its scored targets ``nll`` (graph attached; with ``targets``, those equal to ``-100`` are
    left out of the mean)."""
    evaluator.step(_mean_nll(nll, targets))


def dyneval_stream(model: torch.nn.Module, tokens: torch.Tensor, settings: DynEvalSettings,
                   stats: dict[str, torch.Tensor], *, device: torch.device, max_tokens: int = 0,
                   progress: bool = False, window: int = 0, stride: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~fastbind.evaluation.collect_stream` with dynamic evaluation.

    A non-recurrent model (a transformer) reads the split in the sliding windows of the static
    reading, ``window`` tokens (0: its context) moved by ``stride`` (0: half the window;
    :func:`~fastbind.evaluation.windows`): each window scores its ``stride`` new targets with
    the earlier tokens of the window as context, then adapts on their mean NLL, so that every
    target has the context it has in :func:`~fastbind.evaluation.collect_stream` with the same
    ``window`` and ``stride`` (``settings.segment`` must be 0 or ``stride``). A recurrent model
    reads it as follows.

    The split is one stream (batch 1, state carried, eval mode) cut into segments of
    ``settings.segment`` tokens; each is scored by the model as adapted so far, then
    :func:`adapt` takes one step on the segment's mean NLL, through the graph of the forward
    that scored it (as the authors' code: one forward per segment). The trained weights are
    restored at the end (also on error), and the model's train/eval mode.

    With ``lr = 0`` (off) nothing is adapted and the segments are scored without gradients: the
    result is :func:`~fastbind.evaluation.collect_stream`'s with ``bptt = segment``, bit for bit.
    With ``lr > 0`` the first segment's scores equal it to float rounding only (PyTorch's CPU LSTM
    takes another kernel when gradients are enabled: differences ~1e-7).

    Returns:
        ``H (N-1, d)`` (the adapted model's output-layer inputs at scoring time, float), the
        targets ``Y (N-1,)`` and ``LP (N-1,)``, the adapted model's ``log p(y_t)``.
    """
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    was_training = model.training
    model.eval()
    evaluator = DynamicEvaluator(model, stats, settings)
    hs, ys, lps, state = [], [], [], None
    n = tokens.numel()
    try:
        if not getattr(model, "recurrent", True):
            window, stride = default_window(model, window, stride)
            settings = settings.resolve_segment(False, stride)
            total = len(window_spans(n - 1, window, stride))
            with torch.set_grad_enabled(settings.on):
                parts = windows(model, tokens.reshape(1, -1), window, stride, device)
                for _, _, out, y in tqdm(parts, total=total, desc="dyneval", leave=False, disable=not progress):
                    lps.append(-out.nll[0].detach())
                    hs.append(out.hidden[0].detach().float())
                    ys.append(y[0])
                    if settings.on:
                        adapt(evaluator, out.nll)
            return torch.cat(hs), torch.cat(ys), torch.cat(lps)
        segment = settings.resolve_segment(True).segment
        for s in tqdm(range(0, n - 1, segment), desc="dyneval", leave=False, disable=not progress):
            x = tokens[s : min(s + segment, n - 1)].to(device)
            y = tokens[s + 1 : s + 1 + x.numel()].to(device)
            with torch.set_grad_enabled(settings.on):  # the forward that scores also gives the gradient
                out = model(x.unsqueeze(0), state, targets=y.unsqueeze(0))
                state = detach_state(out.state)
                lps.append(-out.nll[0].detach())
                hs.append(out.hidden[0].detach().float())
                ys.append(y)
                if settings.on:
                    adapt(evaluator, out.nll)
    finally:
        evaluator.restore()
        model.train(was_training)
    return torch.cat(hs), torch.cat(ys), torch.cat(lps)
