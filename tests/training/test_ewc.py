"""EWC: the per-example diagonal Fisher and the summed penalty against slow references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastbind.models.convnet import ConvClassifier, ConvNetConfig
from fastbind.training.ewc import EWC, diagonal_fisher


def _model(seed: int = 0, dropout: float = 0.0) -> ConvClassifier:
    torch.manual_seed(seed)
    return ConvClassifier(ConvNetConfig(max_classes=5, encoder="mlp", hidden=(7, 6), dropout=dropout, image_size=4))


def _loss(mod, x, y):
    return F.cross_entropy(mod(x, 5).logits, y)


def _slow_fisher(model, x, y):
    ref = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    model.eval()
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1], 5).logits, y[i:i + 1]).backward()
        for k, p in model.named_parameters():
            ref[k] += p.grad ** 2 / x.shape[0]
    return ref


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_fisher_is_the_mean_squared_per_example_gradient(chunk):
    model = _model(dropout=0.3)  # eval mode inside: dropout off, as in the reference
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(9, 1, 4, 4, generator=g), torch.randint(5, (9,), generator=g)
    fisher = diagonal_fisher(model, _loss, x, y, chunk=chunk)
    assert model.training  # the mode is restored
    ref = _slow_fisher(model, x, y)
    assert set(fisher) == set(ref)
    for k in ref:
        torch.testing.assert_close(fisher[k], ref[k], rtol=1e-5, atol=1e-8)
    # Not the square of the mean gradient (what a batch's .grad ** 2 would give).
    model.zero_grad()
    _loss(model, x, y).backward()
    assert not torch.allclose(fisher["head.weight"], model.head.weight.grad ** 2)


def test_penalty_equals_the_sum_over_tasks_value_and_gradient():
    model = _model()
    ewc = EWC(lam=3.5)
    assert float(ewc.penalty(model)) == 0.0
    g = torch.Generator().manual_seed(2)
    anchors, fishers = [], []
    for _ in range(3):  # three finished tasks, each with its own θ* and F
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        f = {k: torch.rand(p.shape, generator=g) for k, p in model.named_parameters()}
        ewc.consolidate(model, f)
        anchors.append({k: p.detach().clone() for k, p in model.named_parameters()})
        fishers.append(f)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    fast = ewc.penalty(model)
    grads_fast = torch.autograd.grad(fast, list(model.parameters()))
    slow = sum(0.5 * 3.5 * (f[k] * (p - a[k]) ** 2).sum()
               for a, f in zip(anchors, fishers, strict=True) for k, p in model.named_parameters())
    grads_slow = torch.autograd.grad(slow, list(model.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_state_round_trip_and_bad_input():
    model = _model()
    ewc = EWC(lam=2.0)
    ewc.consolidate(model, {k: torch.ones_like(p) for k, p in model.named_parameters()})
    other = EWC(lam=0.0)
    other.load_state_dict(ewc.state_dict())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert float(other.penalty(model).detach()) == float(ewc.penalty(model).detach()) > 0
    with pytest.raises(ValueError, match="lam must be >= 0"):
        EWC(lam=-1)
    with pytest.raises(ValueError, match="lacks: nope"):
        ewc.consolidate(model, {"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        diagonal_fisher(model, _loss, torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.int64))
