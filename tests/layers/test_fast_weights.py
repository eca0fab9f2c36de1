import pytest
import torch
import torch.nn.functional as F

from fastbind import FastWeightMemory
from fastbind.layers.fast_weights import delta_write, fwm_read

IMPLS = ("segment", "step")


def reference(m: FastWeightMemory, z: torch.Tensor, fw: torch.Tensor):
    """The equations of the notes, one step at a time, every contraction an explicit einsum."""
    B, L, _ = z.shape
    outs, norms = [], []
    for i in range(L):
        s, r, t, b = m.W_write(z[:, i]).split([m.s, m.r, m.t, 1], -1)
        s, r, t, beta = s.tanh(), r.tanh(), t.tanh(), torch.sigmoid(b + 1)
        sr = torch.einsum("bs,br->bsr", s, r)
        v = torch.einsum("bsr,bsrt->bt", sr, fw)
        fw = fw + torch.einsum("bsr,bt->bsrt", sr, beta * (t - v) / m.t)
        n = fw.reshape(B, -1).norm(dim=-1)
        norms.append(n)
        fw = fw / torch.maximum(n, torch.ones_like(n)).view(-1, 1, 1, 1)
        q, *rs = m.W_read(z[:, i]).split([m.s] + [m.r] * m.hops, -1)
        for rk in rs:
            rk = rk.tanh() if m.read_keys == "tanh" else rk
            q = F.layer_norm(torch.einsum("bsrt,bs,br->bt", fw, q, rk), (m.t,))
        read = m.out(q)
        outs.append(z[:, i] + read if m.residual else read)
    return torch.stack(outs, 1), fw, torch.stack(norms, 1)


def layer(impl: str, chunk: int = 4, residual: bool = True, seed: int = 0) -> FastWeightMemory:
    torch.manual_seed(seed)
    return FastWeightMemory(12, s=4, r=3, t=4, hops=3, residual=residual, impl=impl, chunk=chunk).double()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("residual", [True, False])
def test_matches_the_slow_reference_with_the_clip_active(impl, residual):
    m = layer(impl, residual=residual)
    z = torch.randn(3, 11, 12, dtype=torch.double) * 3  # large writes: the norm clip acts
    for fw0 in (None, torch.randn(3, 4, 3, 4, dtype=torch.double) * 0.2):
        out, fw, norm = m(z, fw0)
        ref_out, ref_fw, ref_norm = reference(m, z, m.init_state(3) if fw0 is None else fw0)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(fw, ref_fw, rtol=0, atol=1e-12)
        torch.testing.assert_close(norm, ref_norm, rtol=0, atol=1e-12)
        assert bool((ref_norm > 1).any()) and bool((ref_norm < 1).any())  # both sides of the clip


def test_second_write_to_the_same_unit_key_replaces_the_first():
    torch.manual_seed(1)
    B, S, R, T = 2, 3, 4, 5
    s = F.normalize(torch.randn(B, S, dtype=torch.double), dim=1)
    r = F.normalize(torch.randn(B, R, dtype=torch.double), dim=1)  # ‖s ⊗ r‖ = ‖s‖‖r‖ = 1
    fw0 = torch.randn(B, S, R, T, dtype=torch.double) * 0.05  # small: the clip stays inactive
    t1, t2 = (torch.randn(B, T, dtype=torch.double) * 0.1 for _ in range(2))
    one = torch.ones(B, dtype=torch.double)
    fw1, n1 = delta_write(fw0, s, r, t1, one)
    fw2, n2 = delta_write(fw1, s, r, t2, one)
    only2, _ = delta_write(fw0, s, r, t2, one)
    assert bool((n1 < 1).all()) and bool((n2 < 1).all())
    torch.testing.assert_close(fw2, only2, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.einsum("bsrt,bs,br->bt", fw2, s, r), t2, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.einsum("bsrt,bs,br->bt", fw1, s, r), t1, rtol=0, atol=1e-14)


def test_read_is_layernorm_of_the_contraction():
    torch.manual_seed(2)
    fw = torch.randn(2, 4, 3, 4, dtype=torch.double)
    q, rs = torch.randn(2, 4, dtype=torch.double), torch.randn(2, 2, 3, dtype=torch.double)
    want = q
    for k in range(2):
        want = F.layer_norm(torch.einsum("bsrt,bs,br->bt", fw, want, rs[:, k]), (4,))
    torch.testing.assert_close(fwm_read(fw, q, rs), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_norm_is_at_most_one_after_every_step(impl):
    m = layer(impl)
    z = torch.randn(2, 9, 12, dtype=torch.double) * 5
    fw = None
    with torch.no_grad():
        for i in range(9):  # one step per call: the state after every step
            _, fw, pre = m(z[:, i : i + 1], fw)
            assert float(fw.flatten(1).norm(dim=1).max()) <= 1 + 1e-12
        assert float(pre.max()) > 1  # the clip was needed
        _, last, _ = m(z)
        assert float(last.flatten(1).norm(dim=1).max()) <= 1 + 1e-12


@pytest.mark.parametrize("impl", IMPLS)
def test_segments_with_carried_state_equal_one_pass(impl):
    m = layer(impl, chunk=4)
    z = torch.randn(2, 23, 12, dtype=torch.double)
    whole = m(z)
    a = m(z[:, :10])
    b = m(z[:, 10:], a.state)
    torch.testing.assert_close(torch.cat([a.out, b.out], 1), whole.out, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.state, whole.state, rtol=0, atol=1e-12)


def test_both_forms_agree_on_outputs_and_gradients_over_a_long_segment():
    """300 steps of large writes, the clip acting at nearly every step: no overflow in the segment form."""
    z = torch.randn(2, 300, 12, dtype=torch.double) * 4
    fw0 = torch.randn(2, 4, 3, 4, dtype=torch.double) * 0.2
    grads = {}
    for impl, chunk in (("step", 1), ("segment", 300), ("segment", 32)):
        m = layer(impl, chunk=chunk)
        zz = z.clone().requires_grad_()
        out, fw, norm = m(zz, fw0)
        assert bool(torch.isfinite(out).all()) and float((norm > 1).double().mean()) > 0.5
        (out.pow(2).mean() + fw.sum()).backward()
        grads[(impl, chunk)] = (out.detach(), fw.detach(), zz.grad, m.W_write.weight.grad)
    ref = grads[("step", 1)]
    for key in (("segment", 300), ("segment", 32)):
        for got, want in zip(grads[key], ref):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_finite_differences(impl):
    torch.manual_seed(3)
    m = FastWeightMemory(5, s=2, r=2, t=2, hops=2, impl=impl, chunk=2).double()
    z = (torch.randn(2, 5, 5, dtype=torch.double) * 2).requires_grad_()
    fw0 = (torch.randn(2, 2, 2, 2, dtype=torch.double) * 0.3).requires_grad_()
    params = [m.W_write.weight, m.W_read.weight, m.out.weight]

    def f(z, fw0, *weights):
        out, fw, _ = torch.func.functional_call(m, dict(zip(["W_write.weight", "W_read.weight", "out.weight"],
                                                             weights)), (z, fw0))
        return out, fw

    assert torch.autograd.gradcheck(f, (z, fw0, *[p.detach().clone().requires_grad_() for p in params]),
                                    eps=1e-6, atol=1e-6)


def test_bad_input_is_refused():
    m = FastWeightMemory(8, s=4, r=4, t=4)
    with pytest.raises(ValueError, match=r"z must be \(batch, length, 8\)"):
        m(torch.randn(2, 8))
    with pytest.raises(ValueError, match="state must be"):
        m(torch.randn(2, 3, 8), torch.zeros(3, 4, 4, 4))
    with pytest.raises(ValueError, match="s == t"):
        FastWeightMemory(8, s=4, r=4, t=5, hops=2)
    FastWeightMemory(8, s=4, r=4, t=5, hops=1)  # one hop never feeds t back
    with pytest.raises(ValueError, match="impl"):
        FastWeightMemory(8, impl="fast")
    with pytest.raises(ValueError, match="chunk"):
        FastWeightMemory(8, chunk=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile
def test_compiled_blocks_match_eager():
    torch.manual_seed(4)
    m = FastWeightMemory(8, s=2, r=2, t=2, hops=2, chunk=3)
    z = torch.randn(2, 5, 8, requires_grad=True)
    eager = m(z)
    gz_eager, = torch.autograd.grad(eager.out.sum(), z)
    m.compiled = True
    comp = m(z)
    gz_comp, = torch.autograd.grad(comp.out.sum(), z)
    torch.testing.assert_close(comp.out, eager.out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comp.state, eager.state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gz_comp, gz_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("read_keys", ["tanh", "linear"])
def test_step_with_history_matches_the_reference(read_keys):
    """The agents' form (writes kept as history, no dense F) against the equations, values and gradients."""
    torch.manual_seed(0)
    m = FastWeightMemory(12, s=4, r=3, t=4, hops=3, read_keys=read_keys, proj_bias="torch").double()
    z = (torch.randn(3, 13, 12, dtype=torch.double) * 3).requires_grad_()
    ref_out, ref_fw, ref_norm = reference(m, z, m.init_state(3))
    assert bool((ref_norm > 1).any()) and bool((ref_norm < 1).any())  # both sides of the clip
    h, outs, norms = m.empty_history(3), [], []
    for i in range(13):
        o, h, n = m.step(z[:, i], h)
        outs.append(o)
        norms.append(n)
    out = torch.stack(outs, 1)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h.dense(), ref_fw, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.stack(norms, 1), ref_norm, rtol=0, atol=1e-12)
    w = torch.randn_like(out)
    g_step = torch.autograd.grad((out * w).sum(), [z, *m.parameters()])
    g_ref = torch.autograd.grad((ref_out * w).sum(), [z, *m.parameters()])
    for a, b in zip(g_step, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_projection_bias_initialisations():
    torch.manual_seed(0)
    zero = FastWeightMemory(64, s=8, r=8, t=8)
    assert not zero.W_write.bias.any() and not zero.W_read.bias.any()
    torch_init = FastWeightMemory(64, s=8, r=8, t=8, proj_bias="torch")
    for b in (torch_init.W_write.bias, torch_init.W_read.bias):
        assert b.abs().max() <= 1 / 8 and b.abs().max() > 0.1  # U(±1/√64)
    with pytest.raises(ValueError, match="proj_bias"):
        FastWeightMemory(8, proj_bias="ones")
    with pytest.raises(ValueError, match="read_keys"):
        FastWeightMemory(8, read_keys="sigmoid")
