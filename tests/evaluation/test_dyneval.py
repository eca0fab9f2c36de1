"""Dynamic evaluation (Krause et al. 2018) against slow, plainly written references."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastbind.errors import BadSetting
from fastbind.evaluation import collect_stream
from fastbind.evaluation.dyneval import (
    DynamicEvaluator,
    DynEvalSettings,
    adapt,
    dyneval_stream,
    gradient_statistics,
    training_batches,
)
from fastbind.models.language_model import LMOutput
from fastbind.models.lstm_lm import LSTMConfig
from fastbind.models.registry import ModelConfig, build_lm

V = 23
UNSEEN = (V - 2, V - 1)  # token ids absent from the training tokens: their embedding rows get MS = 0


def tiny_lm(tied: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    cfg = SimpleNamespace(model=ModelConfig(vocab_size=V, emb_dim=8, tied=tied), lstm=LSTMConfig(hidden=8))
    return build_lm(cfg, V)


def train_tokens(n: int = 161, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V - len(UNSEEN), (n,), generator=torch.Generator().manual_seed(seed))


def eval_tokens(n: int = 23, seed: int = 2) -> torch.Tensor:
    t = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))
    t[3], t[9] = UNSEEN  # the adaptation meets the rows the statistics never saw
    return t


def stats_of(model, settings: DynEvalSettings) -> dict[str, torch.Tensor]:
    return gradient_statistics(model, training_batches(train_tokens(), settings))


# ----------------------------------------------------------------------------- references


def reference_rates(model, ms: dict, s: DynEvalSettings) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per parameter ``(RMS, λ·decay rate)`` written out as in the authors' code: the decay rate is
    RMS over the mean of the per-tensor mean RMS, clipped at 1/λ."""
    rms = {n: ms[n].sqrt() for n, p in model.named_parameters()}
    gsum = 0.0
    for r in rms.values():
        gsum += r.mean().item()
    gsum /= len(rms)
    out = {}
    for n, r in rms.items():
        rate = r / gsum
        if s.decay > 0:
            rate = torch.where(rate > 1 / s.decay, torch.full_like(rate, 1 / s.decay), rate)
        out[n] = (r, s.decay * rate)
    return out


def reference_update(model, theta_g: dict, rates: dict, s: DynEvalSettings) -> None:
    """One step from the ``.grad`` left by ``loss.backward()``, one parameter at a time."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            rms, rate = rates[n]
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            dw = rate * (theta_g[n] - p) - s.lr * g / (rms + s.eps)
            p += dw
            p.grad = None


def reference_stream(model, tokens, s: DynEvalSettings, ms: dict):
    """Score a segment, then adapt on its mean NLL; the same by hand on a fresh copy of the model."""
    model = copy.deepcopy(model).eval()
    theta_g = {n: p.detach().clone() for n, p in model.named_parameters()}
    rates = reference_rates(model, ms, s)
    hs, lps, state = [], [], None
    for start in range(0, tokens.numel() - 1, s.segment):
        x = tokens[start : start + s.segment]
        x = x[: tokens.numel() - 1 - start]
        y = tokens[start + 1 : start + 1 + x.numel()]
        out = model(x[None], state)
        logp = out.logits[0].log_softmax(-1)
        lp = logp[torch.arange(y.numel()), y]
        lps.append(lp.detach())
        hs.append(out.hidden[0].detach())
        state = tuple(t.detach() for t in out.state)
        (-lp).mean().backward()
        reference_update(model, theta_g, rates, s)
    return torch.cat(hs), torch.cat(lps)


# ----------------------------------------------------------------------------- settings


def test_settings_on_and_record():
    s = DynEvalSettings()
    assert not s.on and DynEvalSettings(lr=5e-5).on
    assert s.record() == {"lr": 0.0, "decay": 0.002, "eps": 2e-5, "segment": 0, "stats_tokens": 0,
                          "stats_batch": 100}


def test_segment_resolves_per_family():
    # a recurrent model: 0 is the authors' 5 tokens, a given segment stays
    assert DynEvalSettings().resolve_segment(True, 64).segment == 5
    assert DynEvalSettings(segment=20).resolve_segment(True, 64).segment == 20
    # a transformer: one step per window of its reading, so the segment is the stride
    assert DynEvalSettings().resolve_segment(False, 64).segment == 64
    assert DynEvalSettings(segment=16).resolve_segment(False, 16).segment == 16
    with pytest.raises(ValueError, match="must be its stride"):
        DynEvalSettings(segment=16).resolve_segment(False, 64)


@pytest.mark.parametrize("key,value", [("lr", -1e-5), ("lr", math.nan), ("decay", -0.1), ("decay", math.nan),
                                       ("eps", 0.0), ("segment", -1), ("stats_tokens", -1), ("stats_batch", 0)])
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(BadSetting) as e:
        DynEvalSettings(**{key: value})
    assert e.value.field == key and str(e.value).startswith(f"{key}: ")


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("tied", [False, True])
def test_gradient_statistics_equal_a_hand_computation(tied):
    model = tiny_lm(tied).train()  # statistics are taken in eval mode (no dropout), whatever the mode
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, V, (3, 4), generator=g), torch.randint(0, V, (3, 4), generator=g)) for _ in range(2)]
    ms = gradient_statistics(model, batches)

    ref = copy.deepcopy(model).eval()
    squares, state = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}, None
    for x, y in batches:
        out = ref(x, state)
        F.cross_entropy(out.logits.reshape(-1, V), y.reshape(-1)).backward()  # the batch's mean NLL
        for n, p in ref.named_parameters():
            squares[n] += p.grad**2
            p.grad = None
        state = tuple(t.detach() for t in out.state)
    assert ms.keys() == squares.keys()
    for n in ms:
        torch.testing.assert_close(ms[n], squares[n] / 2, rtol=1e-5, atol=1e-12)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind


def test_unseen_rows_have_zero_statistics():
    model = tiny_lm()
    ms = stats_of(model, DynEvalSettings(stats_batch=4))
    assert bool((ms["embedding.weight"][list(UNSEEN)] == 0).all())
    assert bool((ms["embedding.weight"][: V - len(UNSEEN)].sum(1) > 0).all())


# ----------------------------------------------------------------------------- the update


@pytest.mark.parametrize("tied", [False, True])
def test_steps_match_the_reference(tied):
    s = DynEvalSettings(lr=3e-3, decay=0.05, eps=1e-3, segment=4, stats_batch=4)
    model = tiny_lm(tied).eval()
    ms = stats_of(model, s)
    ref = copy.deepcopy(model)
    theta_g = {n: p.detach().clone() for n, p in ref.named_parameters()}
    rates = reference_rates(ref, ms, s)
    ev = DynamicEvaluator(model, ms, s)
    tokens, state, ref_state = eval_tokens(), None, None
    for start in range(0, 20, s.segment):
        x, y = tokens[None, start : start + 4], tokens[None, start + 1 : start + 5]
        out = model(x, state, targets=y)
        adapt(ev, out.nll)
        state = tuple(t.detach() for t in out.state)
        r = ref(x, ref_state)
        F.cross_entropy(r.logits.reshape(-1, V), y.reshape(-1)).backward()
        reference_update(ref, theta_g, rates, s)
        ref_state = tuple(t.detach() for t in r.state)
    moved = 0.0
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((p.detach() - theta_g[n]).abs().max()))
        assert p.grad is None
    assert moved > 1e-3  # the steps did something


def test_restore_gives_back_the_trained_weights_exactly():
    s = DynEvalSettings(lr=1e-2, decay=0.01, segment=5, stats_batch=4)
    model = tiny_lm().eval()
    before = copy.deepcopy(model.state_dict())
    ev = DynamicEvaluator(model, stats_of(model, s), s)
    tokens = eval_tokens()
    for start in range(0, 20, 5):
        ev.step(model(tokens[None, start : start + 5], targets=tokens[None, start + 1 : start + 6]).nll.mean())
    assert not torch.equal(model.embedding.weight, before["embedding.weight"])
    ev.restore()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def perturbed(model, seed: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p += 0.1 * torch.randn(p.shape, generator=g)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_decay_only_pulls_back_to_the_trained_weights():
    s = DynEvalSettings(lr=1e-12, decay=0.3, stats_batch=4)
    model = tiny_lm().eval()
    ms = stats_of(model, s)
    ev = DynamicEvaluator(model, ms, s)
    theta_g = {n: p.detach().clone() for n, p in model.named_parameters()}
    rates = reference_rates(model, ms, s)
    old = perturbed(model)
    x = eval_tokens()[None]
    ev.step(model(x[:, :-1], targets=x[:, 1:]).nll.mean())
    for n, p in model.named_parameters():
        rate = rates[n][1]
        assert bool((rate <= 1).all()) and bool(rate.isfinite().all())
        torch.testing.assert_close(p - theta_g[n], (1 - rate) * (old[n] - theta_g[n]), rtol=1e-4, atol=1e-6)
        assert float((p.detach() - theta_g[n]).norm()) < float((old[n] - theta_g[n]).norm())


def test_a_large_decay_is_clipped_at_the_trained_weights():
    s = DynEvalSettings(lr=1e-12, decay=1e6, stats_batch=4)  # λ·RMS_norm > 1 nearly wherever MS > 0
    model = tiny_lm().eval()
    ms = stats_of(model, s)
    ev = DynamicEvaluator(model, ms, s)
    theta_g = {n: p.detach().clone() for n, p in model.named_parameters()}
    old = perturbed(model)
    x = eval_tokens()[None]
    ev.step(model(x[:, :-1], targets=x[:, 1:]).nll.mean())
    for n, p in model.named_parameters():
        rate = ev.rate[ev.names.index(n)]
        assert float(rate.max()) == 1.0
        full, zero = rate == 1, ms[n] == 0
        assert int(full.sum()) >= 0.9 * int((~zero).sum())
        torch.testing.assert_close(p[full], theta_g[n][full], rtol=0, atol=1e-6)  # back, not beyond
        torch.testing.assert_close(p[zero], old[n][zero], rtol=0, atol=1e-6)  # rate 0 where MS = 0


def test_zero_statistics_stay_finite():
    s = DynEvalSettings(lr=5e-5, decay=0.002, eps=2e-5, stats_batch=4)  # the authors' values
    model = tiny_lm().eval()
    ms = stats_of(model, s)
    ev = DynamicEvaluator(model, ms, s)
    assert all(bool(r.isfinite().all()) for r in ev.rate) and all(bool(d.isfinite().all()) for d in ev.denom)
    assert bool((ev.rate[ev.names.index("embedding.weight")][list(UNSEEN)] == 0).all())
    before = model.embedding.weight.detach().clone()
    x = eval_tokens()[None]
    ev.step(model(x[:, :-1], targets=x[:, 1:]).nll.mean())
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    assert not torch.equal(model.embedding.weight[UNSEEN[0]], before[UNSEEN[0]])  # an unseen row adapts


def test_a_step_without_lr_and_decay_changes_nothing():
    s = DynEvalSettings(lr=0.0, decay=0.0, stats_batch=4)
    model = tiny_lm().eval()
    before = copy.deepcopy(model.state_dict())
    ev = DynamicEvaluator(model, stats_of(model, s), s)
    x = eval_tokens()[None]
    ev.step(model(x[:, :-1], targets=x[:, 1:]).nll.mean())
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_statistics_of_another_model_are_refused():
    model = tiny_lm()
    ms = stats_of(model, DynEvalSettings(stats_batch=4))
    with pytest.raises(ValueError, match="no gradient statistics"):
        DynamicEvaluator(model, {k: v for k, v in ms.items() if k != "head.bias"}, DynEvalSettings())
    with pytest.raises(ValueError, match="shape"):
        DynamicEvaluator(model, {**ms, "head.bias": ms["head.bias"][:-1]}, DynEvalSettings())


# ----------------------------------------------------------------------------- the stream


@pytest.mark.parametrize("decay", [0.0, 0.002])
def test_static_stream_equals_collect_stream(decay):
    s = DynEvalSettings(lr=0.0, decay=decay, segment=5, stats_batch=4)
    model = tiny_lm().train()
    ms = stats_of(model, s)
    tokens = eval_tokens()
    H, Y, LP = dyneval_stream(model, tokens, s, ms, device=torch.device("cpu"))
    assert model.training  # mode restored
    H0, Y0, LP0 = collect_stream(model, tokens, bptt=5, device=torch.device("cpu"))
    assert torch.equal(Y, Y0) and torch.equal(H, H0) and torch.equal(LP, LP0)
    assert H.shape == (tokens.numel() - 1, 8) and H.dtype == torch.float32


def test_adapted_stream_scores_first_then_adapts():
    s = DynEvalSettings(lr=1e-3, decay=0.01, eps=1e-3, segment=5, stats_batch=4)
    model = tiny_lm()
    before = copy.deepcopy(model.state_dict())
    ms = stats_of(model, s)
    tokens = eval_tokens()
    H, Y, LP = dyneval_stream(model, tokens, s, ms, device=torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the trained weights are back
    H0, Y0, LP0 = collect_stream(model, tokens, bptt=5, device=torch.device("cpu"))
    assert torch.equal(Y, Y0)
    # scored before any step (a scoring forward with gradients: PyTorch's LSTM kernel rounds differently)
    torch.testing.assert_close(LP[:5], LP0[:5], rtol=0, atol=1e-6)
    torch.testing.assert_close(H[:5], H0[:5], rtol=0, atol=1e-6)
    assert bool((LP[5:] - LP0[5:]).abs().min() > 1e-5)  # every later target sees an adapted model


def test_stream_matches_the_reference_loop():
    s = DynEvalSettings(lr=2e-3, decay=0.02, eps=1e-3, segment=4, stats_batch=4)
    model = tiny_lm(tied=True)
    ms = stats_of(model, s)
    tokens = eval_tokens(26)  # 25 targets: a last, shorter segment
    H, Y, LP = dyneval_stream(model, tokens, s, ms, device=torch.device("cpu"), max_tokens=24)
    Href, LPref = reference_stream(model, tokens[:25], s, ms)
    assert Y.numel() == 24 and torch.equal(Y, tokens[1:25])
    torch.testing.assert_close(LP, LPref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(H, Href, rtol=1e-5, atol=1e-5)


class Stateless(nn.Module):
    """A model without recurrent state (``init_state`` is ``()``): a bigram table through a hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embedding = nn.Embedding(V, 6)
        self.head = nn.Linear(6, V)

    def init_state(self, batch_size, device=None):
        return ()

    def forward(self, x, state=None, targets=None):
        assert state in (None, ())
        h = torch.tanh(self.embedding(x))
        logits = self.head(h)
        nll = None if targets is None else F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return LMOutput(logits, (), h, None, nll)


def test_a_stateless_model_passes_its_empty_state_along():
    s = DynEvalSettings(lr=1e-3, decay=0.01, eps=1e-3, segment=4, stats_batch=4)
    model = Stateless()
    ms = stats_of(model, s)
    assert set(ms) == {"embedding.weight", "head.weight", "head.bias"}
    tokens = eval_tokens()
    _, _, LP = dyneval_stream(model, tokens, s, ms, device=torch.device("cpu"))
    _, _, LP0 = collect_stream(model, tokens, bptt=4, device=torch.device("cpu"))
    assert torch.equal(LP[:4], LP0[:4]) and not torch.equal(LP[4:], LP0[4:])
