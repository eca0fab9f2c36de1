"""CUDA against CPU: the same module, weights and inputs give the same results on both devices.

Nothing else in the suite runs on a GPU, so these tests are the record that the CUDA paths
(the one-hot class sums of ``memorize``, cuDNN's LSTM, the memories' block computations)
compute what the CPU computes. They are marked ``cuda`` (``pytest -m cuda``;
``benchmarks/gpu_check.py`` runs them) and skip without a GPU.

Tolerances are for float32 with TF32 off (both cuBLAS and cuDNN), where only the order of
summation differs between the devices; bf16 results may differ by one unit in the last place
where float32 sums round to either side of a bf16 value.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fastbind import FastWeightMemory, HebbianAdaptiveSoftmax, HebbianSoftmax, MbPA, NeuralCache
from fastbind.models.fwm_lm import FWMConfig, FWMLSTMLM
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.registry import ModelConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

F32 = {"rtol": 1e-5, "atol": 1e-6}
BF16 = {"rtol": 2**-7, "atol": 1e-6}  # one bf16 unit in the last place


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 rounds float32 products to 10 mantissa bits; the comparisons need full float32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def both(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The module on CPU and an identical copy on CUDA."""
    return {"cpu": module, "cuda": copy.deepcopy(module).cuda()}


def assert_same(cuda: torch.Tensor, cpu: torch.Tensor, tol: dict = F32, what: str = "") -> None:
    assert cuda.device.type == "cuda" and cpu.device.type == "cpu", what
    torch.testing.assert_close(cuda.cpu(), cpu, **tol, msg=lambda m: f"{what}: {m}")


def batches(V: int, d: int, shapes, *, seed: int, dtype=torch.float32):
    """Batches of ``(h, y)`` whose labels repeat within a batch (so class means average several
    rows) and include ignored positions (-100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        y = torch.randint(0, V, shape, generator=g)
        y.view(-1)[::7] = -100
        out.append((torch.randn(*shape, d, generator=g).to(dtype), y))
    return out


# ---------------------------------------------------------------- Hebbian heads


# smax takes a small ascent step: with the default step (1.0) the projected ascent oscillates and
# its best iterate depends on last-bit rounding (a relative change of 2e-7 in h moves w* by 1e-2
# on the CPU alone), so the devices could not agree to float32 precision even if both are right.
@pytest.mark.parametrize("objective,inner_lr", [("l2", 1.0), ("ip", 1.0), ("smax", 0.05)])
def test_hebbian_softmax_memorize(objective, inner_lr):
    torch.manual_seed(0)
    layers = both(HebbianSoftmax(16, 40, gamma=0.2, T=6, objective=objective, k=3, inner_lr=inner_lr))
    data = batches(40, 16, [(4, 9), (30,), (2, 3, 5), (50,)], seed=1)
    for h, y in data:
        for dev, m in layers.items():
            m.memorize(h.to(dev), y.to(dev))
    assert_same(layers["cuda"].weight.detach(), layers["cpu"].weight.detach(), {"rtol": 1e-5, "atol": 1e-5}, "weight")
    assert torch.equal(layers["cuda"].counts.cpu(), layers["cpu"].counts)
    assert int(layers["cpu"].counts.max()) >= 6  # some classes reached T and stopped memorizing
    h = data[0][0]
    assert_same(layers["cuda"](h.cuda()), layers["cpu"](h), what="logits")


def test_hebbian_softmax_memorize_bf16():
    torch.manual_seed(0)
    layers = both(HebbianSoftmax(16, 40, gamma=0.2, T=6, dtype=torch.bfloat16))
    for h, y in batches(40, 16, [(4, 9), (30,), (50,)], seed=2, dtype=torch.bfloat16):
        for dev, m in layers.items():
            m.memorize(h.to(dev), y.to(dev))
    w_cuda, w_cpu = layers["cuda"].weight.detach(), layers["cpu"].weight.detach()
    assert w_cuda.dtype == w_cpu.dtype == torch.bfloat16
    assert_same(w_cuda.float(), w_cpu.float(), BF16, "bf16 weight")
    assert float((w_cuda.cpu() == w_cpu).float().mean()) > 0.95  # nearly all rows bit-equal
    assert torch.equal(layers["cuda"].counts.cpu(), layers["cpu"].counts)


def test_hebbian_adaptive_head():
    torch.manual_seed(0)
    layers = both(HebbianAdaptiveSoftmax(12, 50, [8, 20], div_value=2.0, head_bias=True, gamma=0.25, T=5))
    data = batches(50, 12, [(40,), (3, 11), (60,)], seed=3)
    for h, y in data:
        flat_h, flat_y = h.reshape(-1, 12), y.reshape(-1)
        res = {}
        for dev, m in layers.items():
            out = m(flat_h.to(dev), flat_y.to(dev))
            res[dev] = (out.output, out.loss, m.log_prob(flat_h.to(dev)))
            m.memorize(h.to(dev), y.to(dev))
        for name, a, b in zip(("output", "loss", "log_prob"), res["cuda"], res["cpu"]):
            assert_same(a.detach(), b.detach(), what=name)
    cpu, cuda = (dict(layers[d].named_parameters()) for d in ("cpu", "cuda"))
    for name in cpu:
        assert_same(cuda[name].detach(), cpu[name].detach(), what=name)
    assert torch.equal(layers["cuda"].counts.cpu(), layers["cpu"].counts)


# ---------------------------------------------------------------- evaluation-time memories


def memory_chunks(d: int, V: int, lengths, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g), torch.randint(0, V, (n,), generator=g)) for n in lengths]


def test_neural_cache():
    chunks = memory_chunks(8, 12, [5, 17, 0, 30, 9], seed=4)
    # A small block budget makes the long chunks take the blocked path on both devices.
    caches = {dev: NeuralCache(size=24, theta=0.7, budget_bytes=2048) for dev in ("cpu", "cuda")}
    for h, y in chunks:
        lp = {dev: c.log_prob(h.to(dev), y.to(dev)) for dev, c in caches.items()}
        assert torch.equal(torch.isneginf(lp["cuda"]).cpu(), torch.isneginf(lp["cpu"]))
        assert_same(lp["cuda"], lp["cpu"], what="log_prob")
    q = torch.randn(6, 8)
    dist = {dev: c.distribution(q.to(dev), 12) for dev, c in caches.items()}
    assert_same(dist["cuda"], dist["cpu"], what="distribution")


@pytest.mark.parametrize("steps", [1, 3])
def test_mbpa(steps):
    g = torch.Generator().manual_seed(5)
    W, b = torch.randn(15, 8, generator=g) * 0.5, torch.randn(15, generator=g) * 0.1
    chunks = memory_chunks(8, 15, [6, 20, 1, 13], seed=6)
    memories = {dev: MbPA(size=16, k=5, steps=steps, lr=0.3, l2=0.5, knn_backend="torch") for dev in ("cpu", "cuda")}
    for h, y in chunks:
        lp = {dev: m.log_prob(h.to(dev), y.to(dev), W.to(dev), b.to(dev)) for dev, m in memories.items()}
        assert_same(lp["cuda"], lp["cpu"], {"rtol": 1e-4, "atol": 1e-5}, "log_prob")
    q = torch.randn(4, 8)
    logits = {dev: m.logits(q.to(dev), W.to(dev), b.to(dev)) for dev, m in memories.items()}
    assert_same(logits["cuda"], logits["cpu"], {"rtol": 1e-4, "atol": 1e-5}, "logits")


# ---------------------------------------------------------------- Fast Weight Memory


@pytest.mark.parametrize("impl", ["segment", "step"])
def test_fast_weight_memory_forward_and_gradients(impl):
    torch.manual_seed(0)
    layers = both(FastWeightMemory(12, s=4, r=3, t=4, hops=3, impl=impl, chunk=5))
    g = torch.Generator().manual_seed(7)
    z0 = torch.randn(3, 13, 12, generator=g) * 2  # large writes: the norm clip acts
    fw0 = torch.randn(3, 4, 3, 4, generator=g) * 0.2
    res = {}
    for dev, m in layers.items():
        z = z0.clone().to(dev).requires_grad_()  # a leaf of its own on each device (.to("cpu") would alias z0)
        out, fw, norm = m(z, fw0.to(dev))
        (out.square().mean() + fw.square().sum()).backward()
        res[dev] = {"out": out.detach(), "state": fw.detach(), "norm": norm, "dz": z.grad,
                    **{f"d{n}": p.grad for n, p in m.named_parameters()}}
    assert bool((res["cpu"]["norm"] > 1).any())
    for name, a in res["cpu"].items():
        assert_same(res["cuda"][name], a, {"rtol": 1e-4, "atol": 1e-5}, name)


# ---------------------------------------------------------------- the language model


@pytest.mark.parametrize("arch", ["lstm", "fwm"])
@pytest.mark.parametrize("head,softmax", [("softmax", "full"), ("hebbian", "full"), ("hebbian", "adaptive")])
def test_lstm_lm_forward_backward(arch, head, softmax):
    V = 40
    cfg = ModelConfig(vocab_size=V, arch=arch, emb_dim=16, head=head, softmax=softmax,
                      cutoffs=(10, 25) if softmax == "adaptive" else (), gamma=0.2, T=4)
    lstm = LSTMConfig(hidden=16, layers=2, input_dropout=0.0, dropout=0.0)
    torch.manual_seed(0)
    models = both(LSTMLM(cfg, lstm) if arch == "lstm" else FWMLSTMLM(cfg, lstm, FWMConfig(size=4, hops=2)))
    g = torch.Generator().manual_seed(8)
    x, y = torch.randint(0, V, (4, 9), generator=g), torch.randint(0, V, (4, 9), generator=g)
    res = {}
    for dev, m in models.items():
        state = None
        for _ in range(2):  # the second chunk starts from the first one's state
            out = m(x.to(dev), state, targets=y.to(dev))
            m.zero_grad(set_to_none=True)
            out.nll.mean().backward()
            state = tuple(s.detach() for s in out.state)
        m.memorize(out.hidden.detach(), y.to(dev))
        res[dev] = {"nll": out.nll.detach(), "hidden": out.hidden.detach(),
                    **{f"state{i}": s for i, s in enumerate(state)},
                    **{f"d{n}": p.grad for n, p in m.named_parameters() if p.grad is not None},
                    **{f"after memorize {n}": p.detach() for n, p in m.named_parameters()}}
        with torch.no_grad():
            full = m(x.to(dev), state).logits  # logits (full) / log-probabilities (adaptive), no targets
        res[dev]["logits"] = full
    tol = {"rtol": 1e-4, "atol": 1e-5}
    assert res["cpu"].keys() == res["cuda"].keys()
    for name, a in res["cpu"].items():
        assert_same(res["cuda"][name], a, tol, name)
    if head == "hebbian":
        assert torch.equal(models["cuda"].head.counts.cpu(), models["cpu"].head.counts)
        assert int(models["cpu"].head.counts.sum()) == y.numel()
    lp = F.log_softmax(res["cpu"]["logits"], -1)
    assert bool(torch.isfinite(lp).all())
