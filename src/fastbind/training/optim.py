"""Optimizer, learning-rate schedule and gradient clipping from one small config.

Usage in a training loop::

    opt = build_optimizer(model.parameters(), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, total_steps)
    for step in range(total_steps):
        loss.backward()
        grad_norm = clip_grad(model.parameters(), cfg.optim)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        head.memorize(h, y)          # post-step updates come after opt.step()

The Hebbian Softmax paper (Rae et al., 2018) trains with RMSProp and reports that on the
Omniglot curriculum learning rates of 1e-3 to 8e-3 are stable; it gives no LM learning
rate. ``name="rmsprop"`` with ``lr=1e-3, alpha=0.99, eps=1e-8`` is a sensible start; the
default here is Adam at 1e-3, the usual choice for small LSTM language models.

Schedules (``step`` counts optimizer steps taken so far, starting at 0; ``W`` is
``warmup_steps``, ``N`` is ``total_steps``, ``m`` is ``min_lr_ratio``): the learning rate is
``lr * lr_factor(step)`` with

* warm-up, ``step < W``: ``(step + 1) / W`` (linear ramp reaching 1 at ``step = W - 1``);
* then ``p = clamp((step - W) / max(1, N - W), 0, 1)`` and
  ``constant``: 1; ``linear``: ``m + (1 - m) * (1 - p)``;
  ``cosine``: ``m + (1 - m) * (1 + cos(pi * p)) / 2``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, Literal

import torch

from fastbind.errors import BadSetting, UserError

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "clip_grad", "lr_factor"]


@dataclasses.dataclass
class OptimConfig:
    """Optimizer and schedule settings.

    Attributes:
        name: ``"adam"``, ``"adamw"`` (decoupled weight decay), ``"rmsprop"`` or ``"sgd"``.
        lr: Peak learning rate.
        momentum: Momentum for SGD and RMSprop (0 = none).
        weight_decay: L2 penalty (decoupled for ``adamw``).
        eps: Denominator epsilon for Adam/AdamW/RMSprop.
        alpha: RMSprop's squared-gradient decay.
        betas: Adam/AdamW moment decays.
        clip: Max global gradient norm; 0 disables clipping.
        schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` decay after warm-up.
        warmup_steps: Linear warm-up length in optimizer steps (0 = none).
        min_lr_ratio: Final learning rate of a decaying schedule, as a fraction of ``lr``.
    """

    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    eps: float = 1e-8
    alpha: float = 0.99
    betas: tuple[float, float] = (0.9, 0.999)
    clip: float = 0.0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise BadSetting("lr", "must be > 0")
        for name in ("momentum", "weight_decay", "clip", "eps"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if not 0 <= self.alpha < 1:
            raise BadSetting("alpha", "must lie in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise BadSetting("betas", "must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise BadSetting("warmup_steps", "must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise BadSetting("min_lr_ratio", "must lie in [0, 1]")


def build_optimizer(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Create the optimizer named by ``cfg.name``.

    Args:
        params: Parameters or param-group dicts, as for any ``torch.optim`` optimizer.
        cfg: Optimizer settings.

    Returns:
        A ``torch.optim.Adam``, ``AdamW``, ``RMSprop`` or ``SGD``.
    """
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay, momentum=cfg.momentum
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.name!r} (choose adam, adamw, rmsprop or sgd)")


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier on ``cfg.lr`` after ``step`` optimizer steps (see the module docstring)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    if cfg.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise UserError(f"unknown schedule {cfg.schedule!r} (choose constant, cosine or linear)")


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; call ``sched.step()`` after each ``opt.step()``.

    Args:
        opt: The optimizer (its param groups' ``lr`` is the peak rate).
        cfg: Schedule settings.
        total_steps: Planned number of optimizer steps (the end of decay).

    Raises:
        UserError: ``total_steps`` < 1 for a decaying schedule.
    """
    if cfg.schedule != "constant" and total_steps < 1:
        raise UserError(f"schedule {cfg.schedule!r} needs total_steps >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg, total_steps))


def clip_grad(params: Iterable[torch.Tensor], cfg: OptimConfig) -> torch.Tensor:
    """Clip the global gradient norm to ``cfg.clip`` (if > 0) and return the norm before clipping.

    The norm is returned as a 0-dim tensor so the loop does not force a device sync; call
    ``float()`` on it when logging. Parameters without gradients are ignored.

    Args:
        params: Model parameters.
        cfg: Uses ``cfg.clip``.

    Returns:
        The total L2 norm of all gradients (0 if none have gradients).
    """
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    if cfg.clip > 0:
        return torch.nn.utils.clip_grad_norm_(grads, cfg.clip)
    norms = torch.stack([torch.linalg.vector_norm(p.grad.detach(), 2.0).to(torch.float32) for p in grads])
    return torch.linalg.vector_norm(norms, 2.0)
