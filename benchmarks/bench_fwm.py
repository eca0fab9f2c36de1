"""Training throughput of the FWM-LSTM against an LSTM and against a per-step loop in the authors' style.

One training step on a catbAbI-sized problem: a ``(B, L)`` batch of token ids (vocabulary 180,
as catbAbI's), forward, cross-entropy on every token (LM mode), backward, Adam step, state
carried (detached) to the next step. Variants, all with embedding and hidden 256 and
``F`` of 32 × 32 × 32 with 3 reads:

* ``lstm``: fastbind's LSTM LM (fused ``nn.LSTM``), the baseline without memory;
* ``fwm``: fastbind's FWM-LSTM (``arch=fwm``): fused LSTM, both projections over the whole
  segment, and the fast-weight recurrence in the segment form (:mod:`fastbind.layers.fast_weights`);
* ``fwm_step``: the same model with ``impl="step"`` (the dense ``F`` updated and read at
  every step), to show what the segment form buys;
* ``authors_loop``: a straightforward loop written the way the authors' code is — one module
  call per step, an LSTM cell of separate matrix products, the write and read projections
  and every einsum per step;
* ``fwm_compiled`` (only when listed in ``--variants``): ``fwm`` with ``compiled=True``, each
  block through ``torch.compile``; the warm-up compiles, and its time is reported as
  ``compile_s``.

Rounds interleave the variants (lstm, fwm, fwm_step, authors_loop, lstm, ...) so drift of the
machine affects all alike; each reports the median tokens/s over rounds, and the ratios are
medians of the per-round ratios. Before timing, ``checks`` records that the variants compute
the same function: ``fwm`` against ``fwm_step`` (logits and gradients) and against the
authors'-style loop holding the same weights (logits), as max absolute differences.

Usage::

    python benchmarks/bench_fwm.py                    # B 32, L 200, all threads
    python benchmarks/bench_fwm.py --threads 1
    python benchmarks/bench_fwm.py --device cuda
    python benchmarks/bench_fwm.py --quick            # a few seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_fwm.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.models.fwm_lm import FWMConfig, FWMLSTMLM
from fastbind.models.language_model import LanguageModel
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.registry import ModelConfig

from _common import environment, full_float32, max_abs_diff, sync, write_result  # benchmarks/_common.py


class AuthorsStyleCell(nn.Module):
    """One time step as the authors' code computes it: LSTM cell, write, 3-hop read, residual."""

    def __init__(self, d: int, size: int, hops: int) -> None:
        super().__init__()
        self.d, self.size, self.hops = d, size, hops
        self.W_ih = nn.Parameter(torch.empty(4 * d, d).uniform_(-d ** -0.5, d ** -0.5))
        self.W_hh = nn.Parameter(torch.empty(4 * d, d).uniform_(-d ** -0.5, d ** -0.5))
        self.bias = nn.Parameter(torch.zeros(4 * d))
        self.W_write = nn.Linear(d, 3 * size + 1)
        self.W_read = nn.Linear(d, size * (hops + 1))
        self.ln = nn.LayerNorm(size, elementwise_affine=False)
        self.out = nn.Linear(size, d)

    def forward(self, x, state):
        (h, c), fw = state
        gates = torch.mm(x, self.W_ih.t()) + torch.mm(h, self.W_hh.t()) + self.bias
        i, f, g, o = torch.chunk(gates, 4, dim=1)
        c = torch.sigmoid(f + 1) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        z = h
        s, r, t, b = torch.split(self.W_write(z), [self.size] * 3 + [1], dim=1)
        s, r, t, b = torch.tanh(s), torch.tanh(r), torch.tanh(t), torch.sigmoid(b + 1)
        sr = torch.einsum("bs,br->bsr", s, r)
        v = torch.einsum("bsr,bsrv->bv", sr, fw)
        fw = fw + torch.einsum("bsr,bv->bsrv", sr, b.view(-1, 1) * (t - v) / self.size)
        norm = fw.view(fw.shape[0], -1).norm(dim=-1)
        fw = fw / (torch.relu(norm - 1) + 1).view(-1, 1, 1, 1)
        q, *rs = torch.split(self.W_read(z), [self.size] * (self.hops + 1), dim=1)
        for rk in rs:
            q = self.ln(torch.einsum("bsrv,bs,br->bv", fw, q, torch.tanh(rk)))
        return z + self.out(q), ((h, c), fw)


class AuthorsStyleLM(nn.Module):
    def __init__(self, vocab: int, d: int, size: int, hops: int) -> None:
        super().__init__()
        self.d, self.size = d, size
        self.embedding = nn.Embedding(vocab, d)
        self.cell = AuthorsStyleCell(d, size, hops)
        self.linear = nn.Linear(d, vocab, bias=False)

    def forward(self, x, state=None):
        B = x.shape[0]
        if state is None:
            z = torch.zeros(B, self.d, device=x.device)
            state = ((z, z.clone()), torch.zeros(B, self.size, self.size, self.size, device=x.device))
        outs = []
        for e in self.embedding(x).unbind(1):  # one module call per step
            y, state = self.cell(e, state)
            outs.append(y)
        return self.linear(torch.stack(outs, 1)), state


def detach(state):
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


def fwm_model(vocab: int, d: int, size: int, hops: int, arch: str = "fwm") -> LanguageModel:
    model = ModelConfig(vocab_size=vocab, arch=arch, emb_dim=d)
    lstm = LSTMConfig(hidden=d, input_dropout=0.0, dropout=0.0)
    return LSTMLM(model, lstm) if arch == "lstm" else FWMLSTMLM(model, lstm, FWMConfig(size=size, hops=hops))


@torch.no_grad()
def authors_copy(model: FWMLSTMLM) -> AuthorsStyleLM:
    """The authors'-style model holding ``model``'s weights (an FWM-LSTM of one layer, head bias 0)."""
    fwm, lstm = model.fwm, model.lstm
    ref = AuthorsStyleLM(model.cfg.vocab_size, model.lstm_cfg.hidden, fwm.s, fwm.hops).to(lstm.weight_ih_l0.device)
    d = model.lstm_cfg.hidden
    ref.embedding.weight.copy_(model.embedding.weight)
    ref.cell.W_ih.copy_(lstm.weight_ih_l0)  # both order the gates i, f, g, o
    ref.cell.W_hh.copy_(lstm.weight_hh_l0)
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    bias[d:2 * d] -= 1.0  # the authors' cell adds the forget gate's 1 itself
    ref.cell.bias.copy_(bias)
    for name in ("W_write", "W_read", "out"):
        getattr(ref.cell, name).load_state_dict(getattr(fwm, name).state_dict())
    ref.linear.weight.copy_(model.head.weight)
    assert not bool(model.head.bias.any()), "the authors' output layer has no bias"
    return ref


@full_float32()
def equivalence(vocab: int, d: int, size: int, hops: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Correctness columns: the three FWM variants compute the same function.

    ``fwm`` against ``fwm_step`` (the same model with the other scan: logits and every
    parameter's gradient) and against ``authors_loop`` holding the same weights (logits).
    """
    torch.manual_seed(0)
    model = fwm_model(vocab, d, size, hops).to(x.device)
    step = copy.deepcopy(model)
    step.fwm.impl = "step"
    grads = {}
    for name, m in (("fwm", model), ("fwm_step", step)):
        logits = m(x).logits
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        grads[name] = (logits.detach(), {n: p.grad for n, p in m.named_parameters()})
    with torch.no_grad():
        authors = authors_copy(model)(x)[0]
    (lf, gf), (ls, gs) = grads["fwm"], grads["fwm_step"]
    return {"fwm_vs_fwm_step_logits_max_abs_diff": max_abs_diff(lf, ls),
            "fwm_vs_fwm_step_grad_max_abs_diff": max(max_abs_diff(gf[n], gs[n]) for n in gf),
            "fwm_vs_authors_loop_logits_max_abs_diff": max_abs_diff(lf, authors),
            "logits_max_abs": float(lf.abs().max())}


def make_variant(name: str, vocab: int, d: int, size: int, hops: int, seed: int, device: torch.device):
    torch.manual_seed(seed)
    if name == "authors_loop":
        model = AuthorsStyleLM(vocab, d, size, hops).to(device)

        def forward(x, state):
            return model(x, state)
    else:
        model = fwm_model(vocab, d, size, hops, "lstm" if name == "lstm" else "fwm").to(device)
        if name == "fwm_step":
            model.fwm.impl = "step"
        if name == "fwm_compiled":
            model.fwm.compiled = True

        def forward(x, state):
            out = model(x, state)
            return out.logits, out.state
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    holder = {"state": None}

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits, state = forward(x, holder["state"])
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        holder["state"] = detach(state)

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--size", type=int, default=32, help="s = r = t of the fast weights")
    ap.add_argument("--hops", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=180)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default="lstm,fwm,fwm_step,authors_loop")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "bench_fwm.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.length, args.hidden, args.size, args.rounds, args.warmup = 4, 12, 32, 4, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    steps = {n: make_variant(n, args.vocab, args.hidden, args.size, args.hops, seed=0, device=device) for n in names}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(args.vocab, (args.batch, args.length), generator=g).to(device)
    y = torch.randint(args.vocab, (args.batch, args.length), generator=g).to(device)
    checks = equivalence(args.vocab, args.hidden, args.size, args.hops, x, y)
    warmup_s = {n: 0.0 for n in names}
    for _ in range(args.warmup):
        for n in names:
            sync(device)
            t0 = time.perf_counter()
            steps[n](x, y)
            sync(device)
            warmup_s[n] += time.perf_counter() - t0
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            sync(device)
            t0 = time.perf_counter()
            steps[n](x, y)
            sync(device)
            seconds[n].append(time.perf_counter() - t0)
    tokens = args.batch * args.length
    results = {n: {"step_s_median": statistics.median(s), "tokens_per_s_median": tokens / statistics.median(s),
                   "step_s_rounds": s, "warmup_s": warmup_s[n]} for n, s in seconds.items()}
    if "fwm_compiled" in results:
        results["fwm_compiled"]["compile_s"] = warmup_s["fwm_compiled"] - results["fwm_compiled"]["step_s_median"]

    def ratio(a: str, b: str) -> float | None:  # how many times faster a is than b (median of per-round ratios)
        if a not in seconds or b not in seconds:
            return None
        return statistics.median(sb / sa for sa, sb in zip(seconds[a], seconds[b]))

    ratios = {"fwm_vs_authors_loop": ratio("fwm", "authors_loop"), "fwm_vs_fwm_step": ratio("fwm", "fwm_step"),
              "fwm_step_vs_authors_loop": ratio("fwm_step", "authors_loop"), "fwm_vs_lstm": ratio("fwm", "lstm"),
              "fwm_compiled_vs_fwm": ratio("fwm_compiled", "fwm")}
    result = {"benchmark": "fwm_train_throughput", **environment(device),
              "settings": {k: getattr(args, k) for k in ("batch", "length", "hidden", "size", "hops", "vocab",
                                                         "rounds", "warmup")},
              "results": results, "ratios": ratios, "checks": checks,
              "targets": {"fwm_vs_authors_loop": ">= 2"}}
    print(f"B {args.batch} x L {args.length}, hidden {args.hidden}, F {args.size}^3, {args.hops} reads, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'variant':<14}{'s/step':>10}{'tokens/s':>12}")
    for n, r in results.items():
        print(f"{n:<14}{r['step_s_median']:>10.3f}{r['tokens_per_s_median']:>12,.0f}")
    for k, v in ratios.items():
        if v is not None and math.isfinite(v):
            print(f"{k}: {v:.2f}x")
    for k, v in checks.items():
        print(f"{k}: {v:.1e}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
