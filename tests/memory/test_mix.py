"""mix_log_probs: the probability-space mixture, evaluated in log space."""

from __future__ import annotations

import math

import pytest
import torch

from fastbind import mix_log_probs


def test_matches_the_direct_probability_mixture():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(-1)
    c = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(-1)
    m = torch.rand(3, 5, 7, generator=g, dtype=torch.float64).softmax(-1)
    got = mix_log_probs(p.log(), (0.1, c.log()), (0.04, m.log()))
    torch.testing.assert_close(got, (0.86 * p + 0.1 * c + 0.04 * m).log(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(3, 5, dtype=torch.float64))


def test_stable_for_very_negative_and_minus_inf_inputs():
    lp_model = torch.tensor([-1000.0, -1000.0, -2.0, -1000.0])
    lp_cache = torch.tensor([-1000.0, float("-inf"), float("-inf"), -1001.0])
    got = mix_log_probs(lp_model, (0.25, lp_cache))
    want = torch.tensor([-1000.0, -1000.0 + math.log(0.75), -2.0 + math.log(0.75),
                         -1000.0 + math.log(0.75 + 0.25 * math.exp(-1.0))])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert torch.isfinite(got).all()
    everything_impossible = mix_log_probs(torch.tensor([float("-inf")]), (0.1, torch.tensor([float("-inf")])))
    assert everything_impossible.item() == float("-inf")


def test_zero_weights_are_ignored_and_no_pairs_is_the_model():
    lp = torch.log(torch.tensor([0.2, 0.5]))
    torch.testing.assert_close(mix_log_probs(lp), lp)
    torch.testing.assert_close(mix_log_probs(lp, (0.0, torch.tensor([float("nan"), 0.0]))), lp)
    torch.testing.assert_close(mix_log_probs(lp, (0, torch.zeros(2)), (0.5, torch.zeros(2))),
                               torch.log(0.5 * lp.exp() + 0.5))


def test_gradient_flows_to_the_inputs():
    lp = torch.log(torch.tensor([0.2, 0.5])).requires_grad_(True)
    mix_log_probs(lp, (0.1, torch.log(torch.tensor([0.3, 0.3])))).sum().backward()
    assert lp.grad is not None and (lp.grad > 0).all()


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (((-0.1, torch.zeros(3)),), r"\[0, 1\)"),
        (((1.0, torch.zeros(3)),), r"\[0, 1\)"),
        (((float("nan"), torch.zeros(3)),), r"\[0, 1\)"),
        ((("0.1", torch.zeros(3)),), r"\[0, 1\)"),
        (((0.6, torch.zeros(3)), (0.4, torch.zeros(3))), "sum"),
        (((0.1, torch.zeros(4)),), "shape"),
        (((0.1, torch.zeros(3, 1)),), "shape"),
        (((0.1, torch.zeros(3, dtype=torch.float64)),), "float64"),
        (((0.1,),), "pair"),
    ],
)
def test_bad_inputs_raise(pairs, match):
    with pytest.raises(ValueError, match=match):
        mix_log_probs(torch.zeros(3), *pairs)


def test_undefined_components_are_left_out_and_the_rest_renormalised():
    """A cache with nothing stored (the first token of a stream) is no distribution: where its
    mask is False the mixture falls back to the defined components, renormalised."""
    torch.manual_seed(0)
    V, n = 7, 4
    p = torch.softmax(torch.randn(n, V, dtype=torch.float64), -1)
    c = torch.softmax(torch.randn(n, V, dtype=torch.float64), -1)
    m = torch.softmax(torch.randn(n, V, dtype=torch.float64), -1)
    c[0] = 0.0  # position 0: the cache is empty, its "distribution" is all zeros
    defined = torch.tensor([False, True, True, True])
    lc, lm = 0.2, 0.1
    y = torch.tensor([3, 1, 0, 6])
    pick = lambda q: q.gather(1, y[:, None]).squeeze(1)  # noqa: E731
    got = mix_log_probs(pick(p).log(), (lc, pick(c).log(), defined), (lm, pick(m).log()))
    full = (1 - lc - lm) * p + lc * c + lm * m
    want = full.clone()
    want[0] = ((1 - lc - lm) * p[0] + lm * m[0]) / (1 - lc)  # the defined components, renormalised
    torch.testing.assert_close(got, pick(want).log())
    # every row of the renormalised mixture is a distribution (the unmasked one is not at t = 0)
    assert torch.allclose(want.sum(-1), torch.ones(n, dtype=torch.float64))
    assert full[0].sum() < 0.85
    # a mask that is all True is the plain mixture; the cache alone, undefined, gives the model
    torch.testing.assert_close(mix_log_probs(pick(p).log(), (lc, pick(c).log(), torch.ones(n, dtype=torch.bool))),
                               pick((1 - lc) * p + lc * c).log())
    torch.testing.assert_close(mix_log_probs(pick(p).log(), (lc, pick(c).log(), defined))[0], pick(p).log()[0])


def test_a_bad_defined_mask_is_refused():
    lp = torch.zeros(3)
    for mask in (torch.ones(3), torch.ones(2, dtype=torch.bool), [True, True, True]):
        with pytest.raises(ValueError, match="defined 1 must be a bool tensor"):
            mix_log_probs(lp, (0.1, lp, mask))
