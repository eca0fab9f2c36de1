"""HebbianSoftmax against a slow, obviously-correct loop of its update rule (docs/hebbian_softmax.md)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fastbind import HebbianSoftmax
from fastbind.layers.hebbian_softmax import _class_means


def reference_memorize(weight, counts, h, y, *, gamma, T, ignore_index=-100):
    """One class at a time, in float64, exactly as written in the contract."""
    W = weight.detach().double().clone()
    c = counts.clone()
    h = h.reshape(-1, h.shape[-1]).double()
    y = y.reshape(-1)
    for i in sorted(set(y.tolist()) - {ignore_index}):
        rows = [j for j in range(len(y)) if int(y[j]) == i]
        n = len(rows)
        h_bar = sum(h[j] for j in rows) / n
        ci = int(c[i])
        lam = max(n / (ci + n), gamma) if ci < T else 0.0
        W[i] = lam * h_bar + (1 - lam) * W[i]
        c[i] += n
    return W, c


def train_step(model, head, opt, x, y):
    h = model(x)  # pre-dropout activations
    loss = F.cross_entropy(head(F.dropout(h, 0.1)).flatten(0, -2), y.flatten(), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return h.detach()


@pytest.mark.parametrize("opt_name", ["sgd", "rmsprop", "adam"])
def test_memorize_matches_reference_after_optimizer_step(opt_name):
    torch.manual_seed(0)
    V, d = 12, 8
    model = nn.Linear(5, d)
    head = HebbianSoftmax(d, V, gamma=0.3, T=6)
    params = list(model.parameters()) + list(head.parameters())
    opt = {"sgd": torch.optim.SGD(params, lr=0.1), "rmsprop": torch.optim.RMSprop(params, lr=1e-2),
           "adam": torch.optim.Adam(params, lr=1e-2)}[opt_name]
    # Classes 0..2 start near/over T, class 3 near the γ floor, the rest unseen.
    head.counts.copy_(torch.tensor([6, 5, 7, 40, 0, 0, 0, 0, 0, 0, 0, 0]))
    for step in range(4):
        x = torch.randn(3, 7, 5)
        y = torch.tensor([[0, 1, 1, 2, 3, 3, 4], [4, 4, 5, -100, 6, 1, 0], [7, 8, 8, 8, -100, 3, 9]])
        y = (y + step) % V * (y >= 0) + (-100) * (y < 0)  # vary classes, keep the ignores
        h = train_step(model, head, opt, x, y)
        ref_w, ref_c = reference_memorize(head.weight, head.counts, h, y, gamma=0.3, T=6)
        head.memorize(h, y)
        torch.testing.assert_close(head.weight.detach().double(), ref_w, rtol=1e-6, atol=1e-6)
        assert torch.equal(head.counts, ref_c)


def test_first_sighting_sets_row_to_mean_exactly_and_others_untouched():
    torch.manual_seed(1)
    head = HebbianSoftmax(6, 10, gamma=0.25, T=100)
    w0 = head.weight.detach().clone()
    h = torch.randn(5, 6)
    y = torch.tensor([3, 7, 7, 7, 9])
    head.memorize(h, y)
    assert torch.equal(head.weight[3], h[0])  # one occurrence: h̄ is h itself, bit for bit
    assert torch.equal(head.weight[9], h[4])
    # Three occurrences: the mean as the layer computes it (float32 sum / n), exactly.
    assert torch.equal(head.weight[7].detach(), (h[1] + h[2] + h[3]) / 3) or torch.allclose(
        head.weight[7], h[1:4].mean(0), rtol=0, atol=1e-7
    )
    untouched = [0, 1, 2, 4, 5, 6, 8]
    assert torch.equal(head.weight[untouched], w0[untouched])
    assert head.counts.tolist() == [0, 0, 0, 1, 0, 0, 0, 3, 0, 1]


def test_gamma_zero_without_gradient_gives_exact_running_mean():
    torch.manual_seed(2)
    head = HebbianSoftmax(4, 3, gamma=0.0, T=10**9)
    seen = {0: [], 1: [], 2: []}
    for _ in range(7):
        y = torch.randint(0, 3, (5,))
        h = torch.randn(5, 4)
        head.memorize(h, y)
        for hi, yi in zip(h, y.tolist()):
            seen[yi].append(hi.double())
    for cls, hs in seen.items():
        torch.testing.assert_close(head.weight[cls].detach().double(), torch.stack(hs).mean(0), rtol=0, atol=1e-6)
        assert int(head.counts[cls]) == len(hs)


def test_t_cutoff_and_gamma_floor():
    head = HebbianSoftmax(2, 3, gamma=0.4, T=10)
    with torch.no_grad():
        head.weight.fill_(1.0)
    head.counts.copy_(torch.tensor([10, 9, 100]))
    h = torch.zeros(3, 2)
    head.memorize(h, torch.tensor([0, 1, 2]))
    assert head.weight[0].tolist() == [1.0, 1.0]  # c = T: pure gradient descent from now on
    # c = 9 < T: λ = max(1/10, 0.4) = 0.4 → 0.6 · 1
    torch.testing.assert_close(head.weight[1].detach(), torch.full((2,), 0.6))
    assert head.weight[2].tolist() == [1.0, 1.0]  # far past T
    assert head.counts.tolist() == [11, 10, 101]


def test_tied_embedding_is_written_and_state_dict_roundtrip():
    torch.manual_seed(3)
    emb = nn.Embedding(8, 4)
    head = HebbianSoftmax(4, 8, weight=emb.weight, bias=False)
    assert head.weight is emb.weight
    h = torch.randn(3, 4)
    head.memorize(h, torch.tensor([1, 2, 2]))
    assert torch.equal(emb.weight[1], h[0])
    model = nn.ModuleDict({"emb": emb, "head": head})
    sd = model.state_dict()
    assert sd["head.counts"].dtype == torch.int64 and sd["head.counts"].tolist()[1:3] == [1, 2]
    emb2 = nn.Embedding(8, 4)
    model2 = nn.ModuleDict({"emb": emb2, "head": HebbianSoftmax(4, 8, weight=emb2.weight, bias=False)})
    model2.load_state_dict(sd)
    assert torch.equal(model2["head"].counts, head.counts)
    assert torch.equal(model2["emb"].weight, emb.weight)
    assert model2["head"].weight is model2["emb"].weight


def test_tied_weight_shape_must_match():
    with pytest.raises(ValueError, match="tied weight has shape"):
        HebbianSoftmax(4, 8, weight=nn.Embedding(8, 5).weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_accumulate_in_float32(dtype):
    torch.manual_seed(4)
    head = HebbianSoftmax(16, 6, gamma=0.5, T=100, dtype=dtype)
    head.counts.copy_(torch.tensor([0, 3, 0, 1, 0, 0]))
    h = (torch.randn(64, 16) * 3).to(dtype)
    y = torch.randint(0, 6, (64,))
    ref_w, ref_c = reference_memorize(head.weight.float(), head.counts, h.float(), y, gamma=0.5, T=100)
    head.memorize(h, y)
    assert head.weight.dtype == dtype
    # Exact up to the final rounding to the weight dtype (one ulp).
    torch.testing.assert_close(head.weight.double(), ref_w.to(dtype).double(), rtol=1e-2, atol=1e-2)
    assert torch.equal(head.counts, ref_c)


def test_class_means_matmul_and_index_add_agree():
    torch.manual_seed(5)
    h = torch.randn(50, 7)
    y = torch.randint(0, 9, (50,))
    a = _class_means(h, y, use_matmul=False)
    b = _class_means(h, y, use_matmul=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2])


def test_empty_and_all_ignored_batches_are_noops():
    head = HebbianSoftmax(3, 4)
    w0, c0 = head.weight.detach().clone(), head.counts.clone()
    head.memorize(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    head.memorize(torch.randn(2, 5, 3), torch.full((2, 5), -100))
    assert torch.equal(head.weight, w0) and torch.equal(head.counts, c0)


def test_count_only_updates_counters():
    head = HebbianSoftmax(3, 4)
    w0 = head.weight.detach().clone()
    head.count(torch.tensor([[1, 1, -100], [3, 0, 1]]))
    assert head.counts.tolist() == [1, 3, 0, 1]
    assert torch.equal(head.weight, w0)
    head.reset_counts()
    assert head.counts.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "h, y, match",
    [
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), "last dimension"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), "does not match y shape"),
        (torch.randn(2, 2, 3), torch.tensor([0, 1, 2, 3]), "does not match y shape"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 6]), "labels must lie in"),
        (torch.randn(4, 3), torch.tensor([0, -1, 2, 3]), "labels must lie in"),
        (torch.tensor([[0.0, 1, 2], [float("nan"), 0, 0]]), torch.tensor([0, 1]), "non-finite"),
        (torch.tensor([[0.0, 1, 2], [float("inf"), 0, 0]]), torch.tensor([0, 1]), "non-finite"),
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer tensor"),
        (torch.randint(0, 3, (4, 3)), torch.tensor([0, 1, 2, 3]), "floating-point"),
        (torch.randn(4, 3), torch.tensor([True, False, True, False]), "integer tensor"),
    ],
)
def test_bad_input_raises_and_changes_nothing(h, y, match):
    head = HebbianSoftmax(3, 6)
    head.counts.copy_(torch.tensor([1, 2, 3, 4, 5, 6]))
    w0, c0 = head.weight.detach().clone(), head.counts.clone()
    with pytest.raises(ValueError, match=match):
        head.memorize(h, y)
    assert torch.equal(head.weight, w0) and torch.equal(head.counts, c0)


def test_non_finite_at_ignored_position_is_fine():
    head = HebbianSoftmax(3, 6)
    h = torch.tensor([[0.0, 1, 2], [float("nan"), 0, 0]])
    head.memorize(h, torch.tensor([4, -100]))
    assert torch.equal(head.weight[4], h[0])


@pytest.mark.parametrize("kwargs", [dict(gamma=1.5), dict(T=-1), dict(objective="cos"), dict(k=0)])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        HebbianSoftmax(3, 6, **kwargs)


# ---------------------------------------------------------------- inner objectives
def _brute_force_neighbours(W, classes, h_mean, k):
    out = []
    for c, hm in zip(classes.tolist(), h_mean):
        d2 = ((W - hm) ** 2).sum(1)
        d2[c] = float("inf")
        out.append(W[d2.argsort()[:k]])
    return torch.stack(out)


def test_neighbours_are_the_k_nearest_other_classes():
    torch.manual_seed(6)
    head = HebbianSoftmax(5, 40, objective="svm", k=4)
    classes = torch.tensor([0, 7, 39])
    h_mean = head.weight.detach()[classes] + 0.01 * torch.randn(3, 5)  # own row would be nearest
    got = head._neighbours(classes, h_mean)
    want = _brute_force_neighbours(head.weight.detach(), classes, h_mean, 4)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("objective", ["ip", "svm", "smax"])
def test_inner_objectives_respect_norm_and_improve_over_mean(objective):
    torch.manual_seed(7)
    d, V = 8, 30
    head = HebbianSoftmax(d, V, objective=objective, k=5, max_norm=3.0, eps=0.0, xi=0.5, inner_lr=0.2)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, d))
    classes = torch.tensor([2, 11, 20, 25])
    h_mean = torch.randn(4, d)
    h_mean = h_mean / h_mean.norm(dim=1, keepdim=True) * 1.5  # feasible: ‖h̄‖ < max_norm
    nb = head._neighbours(classes, h_mean)
    w_star = head._inner_optimum(classes, h_mean)
    assert (w_star.norm(dim=1) <= 3.0 + 1e-5).all()
    g_star = head.inner_objective(w_star, h_mean, nb)
    g_mean = head.inner_objective(h_mean, h_mean, nb)
    assert (g_star >= g_mean - 1e-6).all()
    assert (g_star > g_mean + 1e-3).any()
    if objective == "ip":  # closed form: the ball's boundary along h̄
        torch.testing.assert_close(w_star, 3.0 * h_mean / h_mean.norm(dim=1, keepdim=True), atol=1e-5, rtol=0)
    else:  # pushed away from the neighbours, relative to the size of w
        def cos_to_nb(w):
            return F.cosine_similarity(w.unsqueeze(1), nb, dim=-1).mean(1)

        assert (cos_to_nb(w_star) < cos_to_nb(h_mean)).all()


@pytest.mark.parametrize("objective", ["ip", "svm", "smax"])
def test_memorize_mixes_the_inner_optimum(objective):
    torch.manual_seed(8)
    head = HebbianSoftmax(6, 20, objective=objective, gamma=0.5, T=100, k=3)
    head.counts[4] = 3  # λ = max(1/4, 0.5) = 0.5
    h = torch.randn(1, 6)
    y = torch.tensor([4])
    w_star = head._inner_optimum(torch.tensor([4]), h)[0]
    w_old = head.weight[4].detach().clone()
    head.memorize(h, y)
    torch.testing.assert_close(head.weight[4].detach(), 0.5 * w_star + 0.5 * w_old)


# ---------------------------------------------------------------- distributed
def _ddp_worker(rank, world, init_file, out_dir, batches):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        head = HebbianSoftmax(4, 10, gamma=0.2, T=3)
        for step_batches in batches:
            h, y = step_batches[rank]
            head.memorize(h, y)
        head.count(batches[0][rank][1])
        torch.save({"w": head.weight.detach(), "c": head.counts}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("objective", ["l2", "svm", "smax"])
@pytest.mark.parametrize("active_as", ["int", "mask"])
def test_active_rows_equal_a_smaller_layer(objective, active_as):
    """Memorizing among the first n of V rows is exactly memorizing in an n-row layer; the rest never move."""
    torch.manual_seed(0)
    V, n, d = 20, 8, 6
    big = HebbianSoftmax(d, V, gamma=0.2, T=5, objective=objective, k=3)
    small = HebbianSoftmax(d, n, gamma=0.2, T=5, objective=objective, k=3)
    with torch.no_grad():
        big.weight.mul_(0.1)  # the inactive rows sit nearest to every h̄: they must not be neighbours
        small.weight.copy_(big.weight[:n])
    before = big.weight.detach().clone()
    active = n if active_as == "int" else torch.arange(V) < n
    for _ in range(3):
        h, y = torch.randn(12, d) * 3, torch.randint(n, (12,))
        big.memorize(h, y, active=active)
        small.memorize(h, y)
    torch.testing.assert_close(big.weight[:n], small.weight, rtol=0, atol=0)
    assert torch.equal(big.weight[n:], before[n:]) and torch.equal(big.counts[:n], small.counts)
    if objective != "l2":  # without the restriction the result differs (the test can fail)
        free = HebbianSoftmax(d, V, gamma=0.2, T=5, objective=objective, k=3)
        with torch.no_grad():
            free.weight.copy_(before)
        torch.manual_seed(1)
        h, y = torch.randn(12, d) * 3, torch.randint(n, (12,))
        free.memorize(h, y)
        ref = HebbianSoftmax(d, n, gamma=0.2, T=5, objective=objective, k=3)
        with torch.no_grad():
            ref.weight.copy_(before[:n])
        ref.memorize(h, y)
        assert not torch.equal(free.weight[:n], ref.weight)


def test_active_rejects_inactive_labels_and_bad_values():
    head = HebbianSoftmax(4, 10)
    before = head.weight.detach().clone()
    with pytest.raises(ValueError, match="not among the active"):
        head.memorize(torch.randn(3, 4), torch.tensor([1, 2, 7]), active=5)
    for bad in (0, 11, True, torch.ones(9, dtype=torch.bool), torch.ones(10)):
        with pytest.raises(ValueError, match="active"):
            head.memorize(torch.randn(3, 4), torch.tensor([1, 2, 3]), active=bad)
    assert torch.equal(head.weight, before) and int(head.counts.sum()) == 0


def test_two_ranks_with_unequal_batches_equal_one_process(rank_batches):
    batches = rank_batches(10, 4)  # unequal, an empty local batch, ignored labels
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp, batches), nprocs=2, join=True)
        r0 = torch.load(os.path.join(tmp, "r0.pt"))
        r1 = torch.load(os.path.join(tmp, "r1.pt"))
    torch.manual_seed(0)
    single = HebbianSoftmax(4, 10, gamma=0.2, T=3)
    for (h0, y0), (h1, y1) in batches:
        single.memorize(torch.cat([h0, h1]), torch.cat([y0, y1]))
    single.count(torch.cat([batches[0][0][1], batches[0][1][1]]))
    assert torch.equal(r0["w"], r1["w"]) and torch.equal(r0["c"], r1["c"])
    assert torch.equal(r0["w"], single.weight.detach())
    assert torch.equal(r0["c"], single.counts)


def test_paper_settings_follow_the_rule_from_the_smallest_seen_count():
    from fastbind.layers.hebbian_softmax import paper_settings

    counts = torch.tensor([0, 7, 3, 50, 0, 12])  # classes that never occur are left out: N_min = 3
    assert paper_settings(counts, 10) == (1 / 3, 30)
    assert paper_settings(counts, 2.4) == (1 / 3, 7)  # 7.2 rounds to 7
    assert paper_settings(torch.tensor([1, 40]), 0.1) == (1.0, 1)  # N_min = 1 gives gamma = 1; T at least 1
    for bad, epochs in ((torch.zeros(4, dtype=torch.int64), 1), (torch.tensor([2, -1]), 1),
                        (torch.tensor([2, 3]), 0), (torch.tensor([[2]]), 1)):
        with pytest.raises(ValueError):
            paper_settings(bad, epochs)
