"""Elastic Weight Consolidation (Kirkpatrick et al. 2017): a diagonal-Fisher quadratic penalty.

After task ``t`` the learner keeps the parameters ``θ*_t`` it ended the task with and the
diagonal of the Fisher information ``F_t`` of that task's data; while it learns later tasks
the loss gains the standard penalty::

    (λ / 2) · Σ_t Σ_i F_t,i · (θ_i − θ*_t,i)²        (one term per finished task)

``F_t`` is the *empirical* diagonal Fisher, the mean over ``n`` training examples of the
squared per-example gradient of ``−log p(y | x)`` at ``θ*_t`` (per-example gradients from
``torch.func``, not the square of a batch's mean gradient).

The sum over tasks is kept in O(1) memory, whatever the number of tasks, as one quadratic
per parameter: ``Σ_t F_t (θ − θ*_t)² = A θ² − 2 B θ + C`` with ``A = Σ_t F_t``,
``B = Σ_t F_t θ*_t`` and ``C = Σ_t F_t θ*_t²`` — the same value and gradient as the per-task
sum, up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["EWC", "diagonal_fisher"]


def diagonal_fisher(model: nn.Module, loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                    x: torch.Tensor, y: torch.Tensor, *, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Mean squared per-example gradient of ``loss_of(model, x_i[None], y_i[None])``.

    Args:
        model: the network; its trainable parameters are differentiated (buffers held fixed;
            it is put in eval mode, so dropout and batch norm act as at test time).
        loss_of: ``(model, x (1, ...), y (1,)) -> scalar`` loss of one example.
        x, y: the examples (``n`` rows).
        chunk: examples per vectorised block.

    Returns:
        Parameter name -> ``F`` of the parameter's shape.
    """
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same, non-zero number of rows, got {x.shape[0]} and {y.shape[0]}")
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    was_training = model.training
    model.eval()

    def one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        class _Bound(nn.Module):  # loss_of sees a module whose calls use the given parameters
            def __call__(self, *args, **kwargs):  # type: ignore[override]
                return functional_call(model, {**p, **buffers}, args, kwargs)

            def __getattr__(self, name):
                return getattr(model, name)

        return loss_of(_Bound(), xi[None], yi[None])

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    try:
        for i in range(0, x.shape[0], chunk):
            g = per_example(params, x[i:i + chunk], y[i:i + chunk])
            for k in fisher:
                fisher[k] += g[k].pow(2).sum(0)
    finally:
        model.train(was_training)
    return {k: f / x.shape[0] for k, f in fisher.items()}


class EWC:
    """The EWC penalty summed over finished tasks, in O(1) memory (see the module docstring).

    Example::

        ewc = EWC(lam=100.0)
        for task in tasks:
            for x, y in batches(task):
                loss = F.cross_entropy(model(x), y) + ewc.penalty(model)
                ...
            ewc.consolidate(model, diagonal_fisher(model, loss_of, task_x[:1000], task_y[:1000]))
    """

    def __init__(self, lam: float) -> None:
        if not float(lam) >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.tasks = 0
        self._a: dict[str, torch.Tensor] = {}  # Σ F
        self._b: dict[str, torch.Tensor] = {}  # Σ F θ*
        self._c: dict[str, torch.Tensor] = {}  # Σ F θ*²

    @torch.no_grad()
    def consolidate(self, model: nn.Module, fisher: dict[str, torch.Tensor]) -> None:
        """Add the finished task's term: the current parameters as ``θ*`` with Fisher ``fisher``."""
        params = dict(model.named_parameters())
        missing = sorted(set(fisher) - set(params))
        if missing:
            raise ValueError(f"the Fisher names parameters the model lacks: {', '.join(missing)}")
        for k, f in fisher.items():
            theta = params[k].detach()
            if f.shape != theta.shape:
                raise ValueError(f"the Fisher of {k} has shape {tuple(f.shape)}, the parameter {tuple(theta.shape)}")
            if k not in self._a:
                self._a[k], self._b[k], self._c[k] = (torch.zeros_like(theta) for _ in range(3))
            self._a[k] += f
            self._b[k] += f * theta
            self._c[k] += f * theta * theta
        self.tasks += 1

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``(λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²`` for the model's current parameters (0 before any task)."""
        total = None
        if self.lam and self._a:
            for k, p in model.named_parameters():
                if k in self._a:
                    term = (self._a[k] * p * p - 2 * self._b[k] * p + self._c[k]).sum()
                    total = term if total is None else total + term
        if total is None:
            p0 = next(model.parameters())
            return p0.new_zeros(())
        return 0.5 * self.lam * total

    def state_dict(self) -> dict:
        return {"lam": self.lam, "tasks": self.tasks, "a": dict(self._a), "b": dict(self._b), "c": dict(self._c)}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.tasks = float(state["lam"]), int(state["tasks"])
        self._a, self._b, self._c = (dict(state[n]) for n in ("a", "b", "c"))
