"""The advantage actor-critic loss of one episode, with Monte-Carlo returns (the FWM authors' meta-RL).

For an episode of ``T`` steps over ``B`` environments, with returns inside the episode and no
bootstrap, ``R_t = r_t + γ R_{t+1}`` (``R_T = 0``)::

    loss = (1/T) Σ_t [ −mean_b log π(a_t|·) · A_t  +  c_v · mean_b (R_t − V_t)²  −  c_H · mean_b H(π_t) ]

with the advantage ``A_t = R_t − V_t`` held constant (no gradient into the critic through the
policy term). ``critic`` chooses what ``V_t`` and ``A_t`` are:

* ``"per_env"``: each environment's own value, the textbook A2C;
* ``"authors"``: the authors' code subtracts the value head's ``(B, 1)`` output from the
  ``(B,)`` returns, which broadcasts to a ``(B, B)`` table: the value term becomes
  ``mean_{i,j} (R_j − V_i)²`` (every ``V_i`` regresses to the batch's mean return) and the
  policy term ``−mean_j log π_j · (R_j − mean_i V_i)`` (the baseline is the batch's mean value).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

__all__ = ["A2CLoss", "a2c_loss", "discounted_returns"]


class A2CLoss(NamedTuple):
    loss: torch.Tensor  # scalar, what is differentiated
    policy: torch.Tensor  # the three terms, each already divided by T (detached)
    value: torch.Tensor
    entropy: torch.Tensor


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``R_t = r_t + γ R_{t+1}`` with ``R_T = 0``, for ``rewards (T, B)``; a loop over the T steps."""
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def a2c_loss(log_prob: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor, rewards: torch.Tensor, *,
             gamma: float = 0.9, value_coef: float = 0.1, entropy_coef: float = 0.03,
             critic: Literal["authors", "per_env"] = "authors") -> A2CLoss:
    """The loss above from ``(T, B)`` tensors: the taken actions' log-probabilities, the policies'
    entropies, the values and the rewards."""
    if critic not in ("authors", "per_env"):
        raise ValueError(f"critic must be 'authors' or 'per_env', got {critic!r}")
    T = rewards.shape[0]
    R = discounted_returns(rewards, gamma)  # (T, B)
    if critic == "per_env":
        adv = R - values
        value_term = adv.pow(2).mean(1)  # (T,)
    else:  # the (B, 1) − (B,) broadcast, in closed form: mean_{i,j} (R_j − V_i)²
        adv = R - values.mean(1, keepdim=True)
        value_term = (R.pow(2).mean(1) - 2 * R.mean(1) * values.mean(1) + values.pow(2).mean(1))
    policy = -(log_prob * adv.detach()).mean(1).sum() / T
    value = value_coef * value_term.sum() / T
    ent = -entropy_coef * entropy.mean(1).sum() / T
    return A2CLoss(policy + value + ent, policy.detach(), value.detach(), ent.detach())
