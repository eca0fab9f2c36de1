"""HebbianAdaptiveSoftmax: the PyTorch module's computation, and memorize against a slow per-class loop."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastbind import HebbianAdaptiveSoftmax
from fastbind.layers.hebbian_adaptive import default_cutoffs

D, V, CUTOFFS = 8, 30, [6, 15]


def layer(**kw) -> HebbianAdaptiveSoftmax:
    torch.manual_seed(0)
    kw = {"gamma": 0.2, "T": 3, **kw}
    return HebbianAdaptiveSoftmax(D, V, CUTOFFS, div_value=2.0, head_bias=True, **kw)


def reference_memorize(m: HebbianAdaptiveSoftmax, h, y, *, tails=True, objective="l2"):
    """One class at a time, float64: (head weight, [tail output weights], counts) after memorize."""
    head = m.head.weight.detach().double().clone()
    tails_w = [t[1].weight.detach().double().clone() for t in m.tail]
    proj = [t[0].weight.detach().double() for t in m.tail]
    c = m.counts.clone()
    h, y = h.reshape(-1, D).double(), y.reshape(-1)
    bounds = [0, *m.cutoffs]
    for i in sorted(set(y.tolist()) - {m.ignore_index}):
        rows = [j for j in range(len(y)) if int(y[j]) == i]
        n = len(rows)
        h_bar = sum(h[j] for j in rows) / n
        lam = max(n / (int(c[i]) + n), m.gamma) if int(c[i]) < m.T else 0.0
        cluster = max(k for k in range(len(bounds) - 1) if bounds[k] <= i)
        if cluster == 0:
            target, W, r = h_bar, head, i
        elif tails:
            target, W, r = proj[cluster - 1] @ h_bar, tails_w[cluster - 1], i - bounds[cluster]
        else:
            c[i] += n
            continue
        if objective == "ip":
            target = target / target.norm() * m.max_norm
        W[r] = lam * target + (1 - lam) * W[r]
        c[i] += n
    return head, tails_w, c


def test_equals_the_pytorch_module_on_the_same_weights():
    m = layer()
    ref = nn.AdaptiveLogSoftmaxWithLoss(D, V, CUTOFFS, div_value=2.0, head_bias=True)
    missing, unexpected = ref.load_state_dict(m.state_dict(), strict=False)
    assert not missing and unexpected == ["counts"]
    x, y = torch.randn(40, D), torch.randint(0, V, (40,))
    a, b = m(x, y), ref(x, y)
    assert torch.equal(a.output, b.output) and torch.equal(a.loss, b.loss)
    assert torch.equal(m.log_prob(x), ref.log_prob(x))
    assert torch.equal(m.predict(x), ref.predict(x))
    torch.testing.assert_close(m.log_prob(x).exp().sum(1), torch.ones(40), rtol=0, atol=1e-5)
    torch.testing.assert_close(m.log_prob(x).gather(1, y[:, None])[:, 0], a.output, rtol=0, atol=1e-6)


def test_ignored_targets_output_zero_and_leave_the_loss():
    m = layer()
    x, y = torch.randn(20, D), torch.randint(0, V, (20,))
    y[::3] = -100
    out = m(x, y)
    keep = y != -100
    sub = m(x[keep], y[keep])
    assert torch.equal(out.output[~keep], torch.zeros(int((~keep).sum())))
    torch.testing.assert_close(out.output[keep], sub.output)
    torch.testing.assert_close(out.loss, sub.loss)
    none = m(x[:3], torch.full((3,), -100))
    assert float(none.loss) == 0 and torch.equal(none.output, torch.zeros(3))


@pytest.mark.parametrize("objective", ["l2", "ip"])
@pytest.mark.parametrize("tails", [True, False])
def test_memorize_matches_the_reference_loop(objective, tails):
    """Duplicates, ignore_index, the T cut-off and the γ floor, in the head and both tail clusters."""
    m = layer(objective=objective, memorize_tails=tails)
    g = torch.Generator().manual_seed(1)
    for step in range(5):  # counts pass T = 3 for some classes: those rows stop moving
        y = torch.randint(0, V, (6, 7), generator=g)
        y[0, :4] = torch.tensor([2, 2, 9, 20])  # duplicates in head, cluster 1 and cluster 2
        y[1, ::3] = -100
        h = torch.randn(6, 7, D, generator=g)
        with torch.no_grad():  # the projection moves between steps (as if by gradient descent)
            for t in m.tail:
                t[0].weight.add_(0.1 * torch.randn(t[0].weight.shape, generator=g))
        want_head, want_tails, want_counts = reference_memorize(m, h, y, tails=tails, objective=objective)
        m.memorize(h, y)
        torch.testing.assert_close(m.head.weight.double(), want_head, rtol=0, atol=1e-5)
        for t, w in zip(m.tail, want_tails):
            torch.testing.assert_close(t[1].weight.double(), w, rtol=0, atol=1e-5)
        assert torch.equal(m.counts, want_counts)
    assert int(m.counts.max()) > m.T  # the cut-off was exercised


def test_cluster_rows_and_projections_are_left_to_gradient_descent():
    m = layer(T=100)
    cluster_rows = m.head.weight[CUTOFFS[0]:].detach().clone()
    proj = [t[0].weight.detach().clone() for t in m.tail]
    bias = m.head.bias.detach().clone()
    m.memorize(torch.randn(50, D), torch.randint(0, V, (50,)))
    assert torch.equal(m.head.weight[CUTOFFS[0]:], cluster_rows) and torch.equal(m.head.bias, bias)
    for t, p in zip(m.tail, proj):
        assert torch.equal(t[0].weight, p)


def test_first_sighting_of_a_tail_class_sets_its_row_to_the_projected_mean():
    m = layer(gamma=0.0)
    h = torch.randn(3, D)
    y = torch.tensor([20, 20, 20])
    m.memorize(h, y)
    want = m.tail[1][0].weight.detach() @ h.mean(0)
    torch.testing.assert_close(m.tail[1][1].weight[20 - CUTOFFS[1]], want)


def test_state_dict_round_trip():
    m = layer()
    m.memorize(torch.randn(30, D), torch.randint(0, V, (30,)))
    other = HebbianAdaptiveSoftmax(D, V, CUTOFFS, div_value=2.0, head_bias=True, gamma=0.2, T=3)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.counts, m.counts) and int(m.counts.sum()) == 30
    x, y = torch.randn(10, D), torch.randint(0, V, (10,))
    assert torch.equal(other(x, y).output, m(x, y).output)


@pytest.mark.parametrize("h,y,match", [
    (torch.randn(4, D + 1), torch.zeros(4, dtype=torch.long), "last dimension"),
    (torch.randn(4, D), torch.zeros(5, dtype=torch.long), "does not match"),
    (torch.randn(4, D), torch.zeros(4), "integer"),
    (torch.randn(4, D), torch.tensor([0, 1, V, 2]), r"\[0, 30\)"),
    (torch.full((4, D), float("nan")), torch.zeros(4, dtype=torch.long), "non-finite"),
])
def test_bad_input_raises_and_changes_nothing(h, y, match):
    m = layer()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        m.memorize(h, y)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_constructor_arguments():
    for kw in ({"gamma": 1.5}, {"T": -1}, {"objective": "svm"}, {"max_norm": 0}):
        with pytest.raises(ValueError):
            HebbianAdaptiveSoftmax(D, V, CUTOFFS, div_value=2.0, **kw)
    with pytest.raises(ValueError, match="cutoffs"):
        HebbianAdaptiveSoftmax(D, V, [15, 6], div_value=2.0)


def test_default_cutoffs_cover_the_token_shares():
    counts = torch.tensor([50, 20, 10, 8, 5, 3, 2, 1, 1])  # 100 tokens, in frequency order
    assert default_cutoffs(counts) == [3, 6]  # 80% of the tokens after 3 classes, 96% (the first ≥ 95%) after 6
    assert default_cutoffs(counts, (0.5,)) == [1]
    assert default_cutoffs(torch.tensor([90, 5, 5]), (0.8, 0.95)) == [1, 2]  # never reaches V
    with pytest.raises(ValueError):
        default_cutoffs(counts, (0.9, 0.5))


# ---------------------------------------------------------------- distributed
def _ddp_worker(rank, world, init_file, out_dir, batches):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = layer()
        for step in batches:
            h, y = step[rank]
            m.memorize(h, y)
        torch.save(m.state_dict(), os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_unequal_batches_equal_one_process(rank_batches):
    batches = rank_batches(V, D)  # unequal, an empty local batch, ignored labels
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp, batches), nprocs=2, join=True)
        r0 = torch.load(os.path.join(tmp, "r0.pt"))
        r1 = torch.load(os.path.join(tmp, "r1.pt"))
    single = layer()
    for (h0, y0), (h1, y1) in batches:
        single.memorize(torch.cat([h0, h1]), torch.cat([y0, y1]))
    for k, v in single.state_dict().items():
        assert torch.equal(r0[k], r1[k]) and torch.equal(r0[k], v), k
