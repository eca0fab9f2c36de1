"""Transformer LM training throughput of ``fastbind lm-train`` against a plain PyTorch loop, and FLOP/s.

Three variants train the same ``arch=transformer`` model (:class:`fastbind.models.transformer_lm.TransformerLM`)
on the same data for the same number of steps:

* ``fastbind_softmax``: :func:`fastbind.lm.train` with ``arch=transformer`` and a softmax head;
* ``fastbind_hebbian``: the same recipe with ``head=hebbian`` (memorize after every step);
* ``plain``: the same ``TransformerLM`` module (softmax head) trained by a hand-written loop:
  forward to logits, ``F.cross_entropy``, backward, ``clip_grad_norm_``, Adam step, nothing else
  (no fastbind data stream, scheduler, metrics or checkpoint).

All use Adam with the same learning rate, gradient clipping, dropout, batch, context and CPU
threads; a transformer carries no state, so every chunk of ``context`` tokens is read from an
empty context (``bptt=0`` in the recipe: the transformer's context). The defaults are the PTB
transformer experiment's shape: embedding and width 256, 2 blocks, 4 heads, GELU MLP with
``mlp_ratio`` 2, rotary positions, context 128, batch 16, dropout 0.2, untied, Adam 1e-3, clip 1.0
(Hebbian γ = 0.05, T = 100, the ``model`` defaults).

The variants run interleaved (``--rounds`` rounds, the order rotating each round) so that drift
of a shared machine hits all alike; each round builds a fresh model and only the step loop is
timed (data loading and model construction excluded). For fastbind the time is the recipe's own
``summary["seconds_this_run"]`` (its loop, including the final checkpoint it writes when
``max_steps`` is reached); the rate that the recipe itself logs at the last step (the same loop
without that checkpoint) is reported alongside as ``tokens_per_s_logged``. Tokens/s is the
median over rounds.

Targets: ``fastbind_over_plain`` (fastbind softmax tokens/s ÷ plain tokens/s) ≥ 0.95, and the
Hebbian overhead ``hebbian_time_over_softmax`` (fastbind Hebbian loop time ÷ fastbind softmax
loop time for the same steps = softmax tokens/s ÷ Hebbian tokens/s) ≤ 1.03.

FLOPs per training token (counted analytically; multiply-add = 2 FLOPs; W = width, E = emb,
M = round(mlp_ratio · W), L = context, V = vocabulary, g = 2 for SwiGLU else 1)::

    N_matmul = blocks · (3W² + W² + (g + 1)·W·M)          qkv, attention output, MLP in, MLP out
             + E·W  (when W ≠ E)                          input projection
             + W·E  (when tied and W ≠ E)                 output projection
             + d_out·V,  d_out = E if tied else W         output layer
    forward  = 2·N_matmul + blocks · 4·L·W                 QKᵀ and attention·V over the L×L matrix
    training = 3 · forward = 6·N_matmul + 12·blocks·L·W    (backward ≈ 2 · forward)

Embedding lookups, positions, biases, LayerNorms, GELU, dropout, softmax, the optimizer and the
Hebbian memorize are ignored; the attention term counts the whole L×L matrix (the usual
convention, e.g. PaLM's 6N + 12·n_layer·H·Q·T), although a causal kernel may skip about half of
it. The formula is checked against two simple counts, reported under ``flops_per_token.check``:
the weights of every ``nn.Linear`` of the built model plus its output layer's matrix
(``matmul_params_counted``), and torch's ``FlopCounterMode`` over one forward + backward of the
built model on one row of ``L`` tokens with PyTorch's math attention kernel, which spells the
attention out as matrix products (``counted_train``). Achieved FLOP/s = FLOPs per token ×
tokens/s, reported as a fraction of a measured peak: the FLOP/s of a float32 ``torch.mm`` of
``--peak-size``³ (2·n³ FLOPs) on the same device and threads, from the median time of
``--peak-reps`` runs before the first round and after each round (``_common.matmul_peak``).

Usage::

    python benchmarks/bench_transformer.py                      # PTB when ../shared/data/ptb exists
    python benchmarks/bench_transformer.py --data ../shared/data/ptb --threads 1
    python benchmarks/bench_transformer.py --data synthetic --steps 30 --rounds 3
    python benchmarks/bench_transformer.py --device cuda --batch 64
    python benchmarks/bench_transformer.py --smoke              # a few seconds, for smoke tests

Without PTB the corpus is fastbind's synthetic one, shaped to a vocabulary of 10,000 types.
``checks`` says whether the timings compare like with like: ``equal_tokens`` (every variant
trained ``steps × batch × context`` tokens in every round), ``mean_loss_gap_softmax_plain``
(the largest difference of the mean training loss of ``fastbind_softmax`` and ``plain`` over the
rounds; a broken loss or data pipeline shows as a gap of the order of ``log V``), ``finite``
(every mean loss and rate finite) and ``flops_formula_matches_count``.

Writes JSON (default ``benchmarks/out/bench_transformer.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.data import load_corpus
from fastbind.data.synthetic import SyntheticConfig
from fastbind.lm import LMTrainConfig
from fastbind.models.registry import ModelConfig
from fastbind.models.transformer_lm import TransformerConfig, TransformerLM, mlp_hidden
from fastbind.training.optim import OptimConfig

from _common import environment, interleaved_rounds, run_lm_train, sync, write_result  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
SHARED_PTB = REPO.parent / "shared" / "data" / "ptb"
VARIANTS = ("fastbind_softmax", "plain", "fastbind_hebbian")
# The synthetic corpus's vocabulary is background + entity types + 153 (cue words and markers):
# these sizes give V = 10,000, PTB's.
SYNTHETIC_V10K = {"background_vocab": 8047, "entity_pool": 1800}


# ---------------------------------------------------------------- the model settings


def model_config(a: argparse.Namespace, head: str, V: int = 0) -> ModelConfig:
    return ModelConfig(vocab_size=V, arch="transformer", emb_dim=a.emb, tied=a.tied, head=head,
                       T=a.T, gamma=a.gamma)


def transformer_config(a: argparse.Namespace) -> TransformerConfig:
    return TransformerConfig(blocks=a.blocks, heads=a.heads, width=a.width, context=a.context,
                             positions=a.positions, mlp=a.mlp, mlp_ratio=a.mlp_ratio, dropout=a.dropout)


# ---------------------------------------------------------------- the plain PyTorch loop


def plain_rows(tokens: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``(N,)`` -> ``(B, N // B)``: row ``j`` is the ``j``-th contiguous slice of the split."""
    n = tokens.numel() // batch_size
    return tokens[: n * batch_size].view(batch_size, n).long().to(device)


def run_plain(rows: torch.Tensor, V: int, a: argparse.Namespace, device: torch.device) -> dict:
    """Train ``a.steps`` chunks of ``a.context`` tokens from chunk 0; returns the step loop's time."""
    torch.manual_seed(a.seed)
    model = TransformerLM(model_config(a, "softmax", V), transformer_config(a)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    L = a.context
    num_chunks = (rows.size(1) - 1 + L - 1) // L
    model.train()
    total_loss, tokens = 0.0, 0
    sync(device)
    t0 = time.perf_counter()
    for step in range(a.steps):
        i = (step % num_chunks) * L
        n = min(L, rows.size(1) - 1 - i)
        x, y = rows[:, i : i + n], rows[:, i + 1 : i + 1 + n]  # (B, L)
        logits = model(x).logits  # (B, L, V)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        total_loss += loss.item()
        tokens += y.numel()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": tokens, "mean_loss": total_loss / a.steps}


# ---------------------------------------------------------------- fastbind's recipe


def fastbind_config(a: argparse.Namespace, head: str, out: Path, synthetic: SyntheticConfig) -> LMTrainConfig:
    return LMTrainConfig(
        out=str(out), data=a.data, seed=a.seed, device=a.device, threads=a.threads, max_steps=a.steps,
        batch_size=a.batch, bptt=0, eval_every=0, log_every=10**9, progress=False, tensorboard=False,
        model=model_config(a, head), transformer=transformer_config(a),
        optim=OptimConfig(name="adam", lr=a.lr, clip=a.clip), synthetic=synthetic)


def run_fastbind(a: argparse.Namespace, head: str, synthetic: SyntheticConfig) -> dict:
    return run_lm_train(lambda out: fastbind_config(a, head, out, synthetic), "bench_transformer_")


# ---------------------------------------------------------------- FLOPs


def flops_per_token(V: int, a: argparse.Namespace) -> dict:
    """Analytic training FLOPs per token (the formula in the module docstring)."""
    E, L = a.emb, a.context
    W = a.width or E
    M = mlp_hidden(W, a.mlp_ratio)
    gate = 2 if a.mlp == "swiglu" else 1
    d_out = E if a.tied else W
    params = {
        "blocks": a.blocks * (3 * W * W + W * W + (gate + 1) * W * M),
        "input_projection": E * W if W != E else 0,
        "output_projection": W * E if a.tied and W != E else 0,
        "output_layer": d_out * V,
    }
    n_matmul = sum(params.values())
    attention = a.blocks * 4 * L * W
    forward = 2 * n_matmul + attention
    return {"matmul_params": n_matmul, "matmul_params_by_part": params, "matmul_forward": 2 * n_matmul,
            "attention_forward": attention, "forward": forward, "train": 3 * forward}


def counted_flops(V: int, a: argparse.Namespace) -> dict:
    """The simple counts the formula is checked against (see the module docstring), on the CPU."""
    torch.manual_seed(a.seed)
    model = TransformerLM(model_config(a, "softmax", V), transformer_config(a))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not model.head)
    res: dict = {"matmul_params_counted": linear + model.head.weight.numel()}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # an older torch: the parameter count only
        return {**res, "counted_forward": None, "counted_train": None}
    x = torch.randint(0, V, (1, a.context), generator=torch.Generator().manual_seed(a.seed))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x, targets=x)
        forward = counter.get_total_flops()
        out.nll.mean().backward()
        total = counter.get_total_flops()
    return {**res, "counted_forward": forward / a.context, "counted_train": total / a.context}


# ---------------------------------------------------------------- main


def default_data() -> str:
    return str(SHARED_PTB) if SHARED_PTB.is_dir() else "synthetic"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None,
                   help="'synthetic', a named data set or a folder (default: ../shared/data/ptb if present)")
    p.add_argument("--synthetic-tokens", type=int, default=200_000, help="train tokens when --data synthetic")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=3, help="one untimed run of each variant first")
    p.add_argument("--emb", type=int, default=256, help="model.emb_dim")
    p.add_argument("--width", type=int, default=256, help="transformer.width (0: = --emb)")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", choices=("gelu", "swiglu"), default="gelu")
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--positions", choices=("rotary", "learned"), default="rotary")
    p.add_argument("--context", type=int, default=128, help="transformer.context = the training chunk (bptt=0)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--tied", action="store_true", help="tie the output layer to the embedding")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--T", type=int, default=100, help="Hebbian T")
    p.add_argument("--gamma", type=float, default=0.05, help="Hebbian gamma")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--peak-reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", "--quick", dest="smoke", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_transformer.json")
    a = p.parse_args(argv)
    if a.smoke:
        a.data, a.synthetic_tokens, a.emb, a.width, a.blocks, a.heads, a.context, a.batch = \
            "synthetic", 20_000, 16, 16, 1, 2, 16, 4
        a.steps, a.rounds, a.warmup_steps, a.peak_size, a.peak_reps = 4, 2, 1, 256, 3
        a.threads = a.threads or 1
    a.data = a.data or default_data()
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.threads = torch.get_num_threads()
    device = torch.device(a.device)

    # The corpus that train() will build too: same spec, same seed, same synthetic settings.
    synthetic = SyntheticConfig(train_tokens=a.synthetic_tokens, valid_tokens=1000, test_tokens=1000,
                                **SYNTHETIC_V10K)
    if a.smoke:
        synthetic = SyntheticConfig(train_tokens=a.synthetic_tokens, valid_tokens=500, test_tokens=500,
                                    background_vocab=2000, entity_pool=1000, topic_words=100)
    is_synthetic = a.data.strip().lower() == "synthetic"
    options = {k: getattr(synthetic, k) for k in synthetic.__dataclass_fields__} if is_synthetic else {}
    corpus = load_corpus(a.data, seed=a.seed, **options)
    V = len(corpus.vocab)
    rows = plain_rows(corpus.train, a.batch, device)
    if a.steps > (rows.size(1) - 1) // a.context:
        print(f"note: {a.steps} steps pass the end of the training split "
              f"({(rows.size(1) - 1) // a.context} full chunks); a shorter last chunk makes the tokens differ")

    fpt = flops_per_token(V, a)
    counted = counted_flops(V, a)
    fpt["check"] = {**counted, "matmul_params_equal": counted["matmul_params_counted"] == fpt["matmul_params"],
                    "train_equal": counted["counted_train"] is None or counted["counted_train"] == fpt["train"]}

    runners = {
        "fastbind_softmax": lambda: run_fastbind(a, "softmax", synthetic),
        "plain": lambda: run_plain(rows, V, a, device),
        "fastbind_hebbian": lambda: run_fastbind(a, "hebbian", synthetic),
    }
    rounds, results, peak = interleaved_rounds(runners, a, device, fpt["train"])

    def per_round(num: str, den: str) -> list[float]:
        return [n["tokens_per_s"] / d["tokens_per_s"] for n, d in zip(rounds[num], rounds[den])]

    soft, heb, plain = (results[n]["tokens_per_s_median"] for n in ("fastbind_softmax", "fastbind_hebbian", "plain"))
    soft_logged, heb_logged = (results[n]["tokens_per_s_logged_median"] for n in ("fastbind_softmax", "fastbind_hebbian"))
    ratios = {
        "fastbind_over_plain": soft / plain,
        "fastbind_over_plain_rounds": per_round("fastbind_softmax", "plain"),
        "fastbind_over_plain_logged": soft_logged / plain if soft_logged else None,
        "hebbian_time_over_softmax": soft / heb,
        "hebbian_time_over_softmax_rounds": [1 / x for x in per_round("fastbind_hebbian", "fastbind_softmax")],
        "hebbian_time_over_softmax_logged": soft_logged / heb_logged if soft_logged and heb_logged else None,
        "targets": {"fastbind_over_plain": ">= 0.95", "hebbian_time_over_softmax": "<= 1.03"},
    }
    tokens_per_step = a.batch * a.context
    losses = [x for r in results.values() for x in r["mean_loss_rounds"]]
    rates = [x for r in results.values() for x in r["tokens_per_s_rounds"]]
    checks = {
        "equal_tokens": all(t == a.steps * tokens_per_step for r in results.values() for t in r["tokens_rounds"]),
        "mean_loss_gap_softmax_plain": max(abs(f - p) for f, p in zip(results["fastbind_softmax"]["mean_loss_rounds"],
                                                                     results["plain"]["mean_loss_rounds"])),
        "log_vocab": math.log(V),
        "finite": all(x is not None and math.isfinite(x) for x in losses + rates),
        "flops_formula_matches_count": fpt["check"]["matmul_params_equal"] and fpt["check"]["train_equal"],
    }
    data_label = "ptb (../shared/data/ptb)" if Path(a.data).resolve() == SHARED_PTB.resolve() else a.data
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "out"}
    settings["data"] = data_label
    result = {
        "benchmark": "transformer_lm_train_throughput", **environment(device),
        "argv": sys.argv[1:] if argv is None else list(argv), "settings": settings,
        "vocab_size": V, "train_corpus_tokens": int(corpus.train.numel()), "tokens_per_step": tokens_per_step,
        "flops_per_token": fpt, "matmul_peak": peak, "results": results, "ratios": ratios, "checks": checks,
    }

    print(f"\ndata {data_label}  V={V}  emb={a.emb} width={a.width or a.emb} blocks={a.blocks} heads={a.heads} "
          f"mlp={a.mlp}x{a.mlp_ratio:g} {a.positions}  batch={a.batch}x{a.context}  adam lr={a.lr:g} clip={a.clip}  "
          f"threads={a.threads}  device={device}  {a.rounds} rounds x {a.steps} steps")
    print(f"matmul peak ({a.peak_size}^3 fp32, median of {peak['runs']}): {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s "
          f"(best {peak['flops_per_s_best'] / 1e9:,.1f})   training FLOPs/token: {fpt['train'] / 1e6:,.2f} M "
          f"(6 x {fpt['matmul_params'] / 1e6:,.2f} M matmul weights + attention {3 * fpt['attention_forward'] / 1e6:,.2f} M; "
          f"formula = count: {checks['flops_formula_matches_count']})")
    print(f"{'variant':<18} {'tok/s (median)':>15} {'GFLOP/s':>9} {'of peak':>8}  tok/s per round")
    for name in VARIANTS:
        r = results[name]
        print(f"{name:<18} {r['tokens_per_s_median']:>15,.0f} {r['achieved_flops_per_s'] / 1e9:>9.2f} "
              f"{r['fraction_of_peak']:>8.1%}  " + ", ".join(f"{x:,.0f}" for x in r["tokens_per_s_rounds"]))
    print(f"ratio fastbind/plain: {ratios['fastbind_over_plain']:.3f} (target >= 0.95; per round "
          + ", ".join(f"{x:.3f}" for x in ratios["fastbind_over_plain_rounds"])
          + (f"; from the recipe's logged rate {ratios['fastbind_over_plain_logged']:.3f})"
             if ratios["fastbind_over_plain_logged"] else ")"))
    print(f"Hebbian overhead (hebbian time / softmax time): {ratios['hebbian_time_over_softmax']:.3f} (target <= 1.03; "
          "per round " + ", ".join(f"{x:.3f}" for x in ratios["hebbian_time_over_softmax_rounds"]) + ")")
    print(f"checks: equal tokens {checks['equal_tokens']}, mean-loss gap softmax/plain "
          f"{checks['mean_loss_gap_softmax_plain']:.3f} (log V = {checks['log_vocab']:.2f}), finite {checks['finite']}")
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
