"""Mixing a model's log-probabilities with those of evaluation-time memories."""

from __future__ import annotations

import math
import numbers

import torch


def mix_log_probs(lp_model: torch.Tensor, *pairs: tuple) -> torch.Tensor:
    """Log of the probability mixture ``(1 − Σλ)·p_model + Σ λ_i·p_i``, computed in log space.

    Grave et al. (2016) and Rae et al. (2018, appendix A.1) interpolate the model with a
    cache (and MbPA) in *probability* space; this evaluates that mixture as one log-sum-exp
    over the stacked terms ``log(1 − Σλ) + lp_model`` and ``log λ_i + lp_i``, so it is exact
    and stable for very negative inputs (e.g. ``-1000``) and for ``-inf`` (a cache with no
    matching entry). Terms with ``λ_i = 0`` are left out.

    A component may be undefined at some positions — a neural cache that has stored nothing
    yet (the first token of a stream) is no distribution at all, and mixing it in as zero
    would leave a total mass of ``1 − λ``. Pass ``(λ_i, lp_i, defined_i)`` with a boolean mask
    for such a component: where it is False the component is left out and the weights of the
    defined ones are renormalised, ``p = ((1 − Σλ)·p_model + Σ_defined λ_j·p_j) / ((1 − Σλ) + Σ_defined λ_j)``.

    Args:
        lp_model: log-probabilities of the model, any shape ``(...)``.
        *pairs: ``(λ_i, lp_i)`` or ``(λ_i, lp_i, defined_i)`` with ``λ_i ∈ [0, 1)``,
            ``Σλ_i < 1``, ``lp_i`` of the same shape, dtype and device as ``lp_model`` and
            ``defined_i`` a bool tensor of that shape.

    Returns:
        ``(...)`` mixed log-probabilities.

    Example::

        lp = mix_log_probs(lp_model, (0.1, cache.log_prob(h, y)), (0.04, mbpa.log_prob(h, y, W, b)))
        lp = mix_log_probs(lp_model, (0.1, lp_cache, torch.arange(n) > 0))  # cache empty at t = 0
    """
    if not isinstance(lp_model, torch.Tensor):
        raise ValueError(f"lp_model must be a tensor, got {type(lp_model).__name__}")
    terms, masks, total = [], [], 0.0
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) not in (2, 3):
            raise ValueError(f"argument {i + 1} must be a (lambda, log_probs) pair or a (lambda, log_probs, defined) triple")
        lam, lp = pair[:2]
        defined = pair[2] if len(pair) == 3 else None
        if isinstance(lam, torch.Tensor) and lam.numel() == 1:
            lam = lam.item()
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0.0 <= float(lam) < 1.0:
            raise ValueError(f"lambda {i + 1} must be a number in [0, 1), got {lam!r}")
        if not isinstance(lp, torch.Tensor) or lp.shape != lp_model.shape:
            shape = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise ValueError(f"log_probs {i + 1} has shape {shape}, expected {tuple(lp_model.shape)}")
        if lp.device != lp_model.device or lp.dtype != lp_model.dtype:
            raise ValueError(f"log_probs {i + 1} is {lp.dtype} on {lp.device}, "
                             f"expected {lp_model.dtype} on {lp_model.device}")
        if defined is not None and (not isinstance(defined, torch.Tensor) or defined.dtype != torch.bool
                                    or defined.shape != lp_model.shape or defined.device != lp_model.device):
            raise ValueError(f"defined {i + 1} must be a bool tensor of shape {tuple(lp_model.shape)} "
                             f"on {lp_model.device}")
        total += float(lam)
        if lam > 0:
            if defined is not None and not bool(defined.all()):
                lp = lp.masked_fill(~defined, float("-inf"))
                masks.append((float(lam), defined))
            terms.append(lp + math.log(lam))
    if total >= 1.0:
        raise ValueError(f"the lambdas sum to {total}, which must be < 1")
    if not terms:
        return lp_model.clone()
    terms.append(lp_model + math.log1p(-total))
    mixed = torch.logsumexp(torch.stack(terms), dim=0)
    if masks:
        # renormalise by the weight the defined components carry at each position
        z = torch.ones_like(lp_model)
        for lam, defined in masks:
            z = z - lam * (~defined).to(z.dtype)
        mixed = mixed - z.log()
    return mixed
