"""The A2C loss of one episode against a hand computation, for both critics."""

from __future__ import annotations

import pytest
import torch

from fastbind.training.a2c import a2c_loss, discounted_returns


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    R = discounted_returns(r, 0.5)
    assert torch.allclose(R, torch.tensor([[1 + 0.5 * 0 + 0.25 * 3, 0 + 0.5 * 2 + 0.25 * -1],
                                           [0 + 0.5 * 3, 2 + 0.5 * -1], [3.0, -1.0]]))


def _by_hand(logp, ent, V, r, gamma, cv, ce, critic):
    """The loss written as the authors' loop does it: returns backwards, then per step the terms."""
    T, B = len(r), len(r[0])
    loss, R = 0.0, [0.0] * B
    for t in range(T):
        loss += ce * -(sum(ent[t]) / B)
    for t in reversed(range(T)):
        R = [gamma * R[b] + r[t][b] for b in range(B)]
        if critic == "per_env":
            loss += cv * sum((R[b] - V[t][b]) ** 2 for b in range(B)) / B
            loss -= sum(logp[t][b] * (R[b] - V[t][b]) for b in range(B)) / B
        else:  # the (B, B) table of R_j − V_i
            loss += cv * sum((R[j] - V[t][i]) ** 2 for i in range(B) for j in range(B)) / B**2
            loss -= sum(logp[t][j] * (R[j] - V[t][i]) for i in range(B) for j in range(B)) / B**2
    return loss / T


@pytest.mark.parametrize("critic", ["authors", "per_env"])
def test_a2c_loss_equals_the_hand_computation(critic):
    g = torch.Generator().manual_seed(0)
    T, B = 4, 3
    logp = -torch.rand(T, B, generator=g, dtype=torch.float64)
    ent = torch.rand(T, B, generator=g, dtype=torch.float64)
    V = torch.randn(T, B, generator=g, dtype=torch.float64)
    r = torch.randn(T, B, generator=g, dtype=torch.float64)
    out = a2c_loss(logp, ent, V, r, gamma=0.9, value_coef=0.1, entropy_coef=0.03, critic=critic)
    want = _by_hand(logp.tolist(), ent.tolist(), V.tolist(), r.tolist(), 0.9, 0.1, 0.03, critic)
    assert float(out.loss) == pytest.approx(want, rel=1e-12)
    assert float(out.policy + out.value + out.entropy) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("critic", ["authors", "per_env"])
def test_the_policy_term_sends_no_gradient_into_the_critic(critic):
    g = torch.Generator().manual_seed(1)
    T, B = 3, 5
    logp = (-torch.rand(T, B, generator=g)).requires_grad_()
    V = torch.randn(T, B, generator=g).requires_grad_()
    r = torch.randn(T, B, generator=g)
    out = a2c_loss(logp, torch.zeros(T, B), V, r, value_coef=0.0, critic=critic)
    out.loss.backward()
    assert V.grad is None or torch.count_nonzero(V.grad) == 0
    R = discounted_returns(r, 0.9)
    base = V.detach() if critic == "per_env" else V.detach().mean(1, keepdim=True)
    assert torch.allclose(logp.grad, -(R - base) / (B * T))


def test_the_authors_critic_regresses_every_value_to_the_batch_mean_return():
    T, B = 1, 4
    V = torch.zeros(T, B, requires_grad=True)
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    a2c_loss(torch.zeros(T, B), torch.zeros(T, B), V, r, value_coef=1.0, critic="authors").loss.backward()
    # d/dV_i mean_{i,j} (R_j − V_i)² = 2 (V_i − mean R) / B
    assert torch.allclose(V.grad, torch.full((1, B), 2 * (0 - 3.0) / B))


def test_a2c_refuses_an_unknown_critic():
    with pytest.raises(ValueError, match="critic"):
        a2c_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), critic="mine")
