"""Training throughput of ``fastbind lm-train`` against a plain PyTorch loop, and FLOP/s.

Three variants train the same model shape on the same data for the same number of steps:

* ``fastbind_softmax``: :func:`fastbind.lm.train` with a softmax head;
* ``fastbind_hebbian``: the same recipe with ``head=hebbian`` (memorize after every step);
* ``plain``: the simplest correct PyTorch loop, written below from scratch in the style of
  pytorch/examples ``word_language_model`` (embedding → dropout → LSTM → dropout → Linear
  decoder tied to the embedding; inputs ``(bptt, batch)``; state detached per chunk).

All use the same optimizer kind, learning rate, gradient clipping, dropout, batch, chunk
length and CPU threads, and both loops carry the (detached) LSTM state between chunks. The
variants run interleaved (``--rounds`` rounds, the order rotating each round) so that drift
of a shared machine hits all alike; each round builds a fresh model and only the step loop
is timed (data loading and model construction excluded). For fastbind the time is the
recipe's own ``summary["seconds_this_run"]`` (its loop, including the final checkpoint it
writes when ``max_steps`` is reached); the rate that the recipe itself logs at the last step
(the same loop without that checkpoint) is reported alongside as ``tokens_per_s_logged``.
Tokens/s is the median over rounds.

FLOPs per training token (counted analytically; multiply-add = 2 FLOPs)::

    forward  = sum over LSTM layers l of 4 gates · 2·(in_l + H)·H      (in_0 = emb, in_l = H)
             + 2·d·V                                                   (decoder, d = emb = H)
    training ≈ 3 · forward                                             (backward ≈ 2 · forward)

Embedding lookups, biases, gate nonlinearities, dropout, softmax, the optimizer and the
Hebbian memorize are ignored. Achieved FLOP/s = FLOPs per token × tokens/s, reported as a
fraction of a measured peak: the FLOP/s of a float32 ``torch.mm`` of ``--peak-size``³
(2·n³ FLOPs) on the same device and threads, from the median time of ``--peak-reps`` runs
before the first round and after each round (the best run is reported too).

Usage::

    python benchmarks/bench_lm.py                              # PTB when ../shared/data/ptb exists
    python benchmarks/bench_lm.py --data synthetic --steps 30 --rounds 3
    python benchmarks/bench_lm.py --hidden 650 --layers 2 --threads 2
    python benchmarks/bench_lm.py --device cuda --data synthetic
    python benchmarks/bench_lm.py --quick                      # a few seconds, for smoke tests

``checks`` says whether the timings compare like with like: ``equal_tokens`` (every variant
trained ``steps × batch × bptt`` tokens in every round) and ``mean_loss_gap_softmax_plain``
(the largest difference of the mean training loss of ``fastbind_softmax`` and ``plain`` over
the rounds; a broken loss or data pipeline shows as a gap of the order of ``log V``).

Writes JSON (default ``benchmarks/out/bench_lm.json``) and prints a table.
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
from fastbind.models.registry import LSTMConfig, ModelConfig
from fastbind.training.optim import OptimConfig

from _common import environment, interleaved_rounds, run_lm_train, sync, write_result  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
SHARED_PTB = REPO.parent / "shared" / "data" / "ptb"
VARIANTS = ("fastbind_softmax", "plain", "fastbind_hebbian")
DEFAULT_LR = {"adam": 2e-3, "sgd": 20.0}


# ---------------------------------------------------------------- the plain PyTorch loop


class PlainLSTMLM(nn.Module):
    """pytorch/examples' RNNModel, LSTM only: embedding → dropout → LSTM → dropout → decoder."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers)  # (L, B, H); no inter-layer dropout, like fastbind's
        self.decoder = nn.Linear(hidden, vocab_size)
        self.decoder.weight = self.encoder.weight  # tied
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: torch.Tensor, state):
        out, state = self.rnn(self.drop(self.encoder(x)), state)  # (L, B, H)
        return self.decoder(self.drop(out)), state  # (L, B, V)


def plain_batchify(tokens: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``(N,)`` -> ``(N // B, B)``: column ``j`` is the ``j``-th contiguous slice of the split."""
    n = tokens.numel() // batch_size
    return tokens[: n * batch_size].view(batch_size, n).t().contiguous().to(device)


def run_plain(data: torch.Tensor, V: int, a: argparse.Namespace, device: torch.device) -> dict:
    """Train ``a.steps`` chunks from chunk 0; returns the step loop's time (setup excluded)."""
    torch.manual_seed(a.seed)
    model = PlainLSTMLM(V, a.hidden, a.layers, a.dropout).to(device)
    opt = (torch.optim.Adam(model.parameters(), lr=a.lr) if a.optim == "adam"
           else torch.optim.SGD(model.parameters(), lr=a.lr))
    num_chunks = (data.size(0) - 1 + a.bptt - 1) // a.bptt
    model.train()
    state, total_loss = None, 0.0
    sync(device)
    t0 = time.perf_counter()
    for step in range(a.steps):
        i = (step % num_chunks) * a.bptt
        n = min(a.bptt, data.size(0) - 1 - i)
        x, y = data[i : i + n], data[i + 1 : i + 1 + n]  # (L, B)
        if state is not None:
            state = (state[0].detach(), state[1].detach())
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        total_loss += loss.item()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": a.steps * a.batch * a.bptt, "mean_loss": total_loss / a.steps}


# ---------------------------------------------------------------- fastbind's recipe


def fastbind_config(a: argparse.Namespace, head: str, out: Path, synthetic: SyntheticConfig) -> LMTrainConfig:
    model = ModelConfig(emb_dim=a.hidden, tied=True, head=head, T=500, gamma=0.25)  # as measured in RESULTS.md
    lstm = LSTMConfig(hidden=a.hidden, layers=a.layers, input_dropout=a.dropout, dropout=a.dropout)
    return LMTrainConfig(
        out=str(out), data=a.data, seed=a.seed, device=a.device, threads=a.threads, max_steps=a.steps,
        batch_size=a.batch, bptt=a.bptt, carry_state=True, eval_every=0, log_every=10**9, progress=False,
        tensorboard=False, model=model, lstm=lstm, optim=OptimConfig(name=a.optim, lr=a.lr, clip=a.clip),
        synthetic=synthetic)


def run_fastbind(a: argparse.Namespace, head: str, synthetic: SyntheticConfig) -> dict:
    return run_lm_train(lambda out: fastbind_config(a, head, out, synthetic), "bench_lm_")


# ---------------------------------------------------------------- FLOPs


def flops_per_token(V: int, emb: int, hidden: int, layers: int) -> dict:
    """Analytic training FLOPs per token (see the module docstring)."""
    lstm = sum(4 * 2 * ((emb if l == 0 else hidden) + hidden) * hidden for l in range(layers))
    decoder = 2 * emb * V
    forward = lstm + decoder
    return {"lstm_forward": lstm, "decoder_forward": decoder, "forward": forward, "train": 3 * forward}


# ---------------------------------------------------------------- main


def default_data() -> str:
    return str(SHARED_PTB) if SHARED_PTB.is_dir() else "synthetic"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None,
                   help="'synthetic', a named data set or a folder (default: ../shared/data/ptb if present)")
    p.add_argument("--synthetic-tokens", type=int, default=200_000, help="train tokens when --data synthetic")
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=3, help="one untimed run of each variant first")
    p.add_argument("--hidden", type=int, default=200, help="embedding = LSTM size (tied weights)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--optim", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=None, help="default: 2e-3 for adam, 20 for sgd")
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--peak-reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_lm.json")
    a = p.parse_args(argv)
    if a.quick:
        a.data, a.synthetic_tokens, a.hidden, a.layers = "synthetic", 20_000, 16, 1
        a.steps, a.rounds, a.warmup_steps, a.peak_size, a.peak_reps = 4, 2, 1, 256, 3
        a.threads = a.threads or 1
    a.data = a.data or default_data()
    a.lr = a.lr if a.lr is not None else DEFAULT_LR[a.optim]
    if a.threads:
        torch.set_num_threads(a.threads)
    a.threads = torch.get_num_threads()
    device = torch.device(a.device)

    # The corpus that train() will build too: same spec, same seed, same synthetic settings.
    synthetic = SyntheticConfig(train_tokens=a.synthetic_tokens, valid_tokens=1000, test_tokens=1000)
    if a.quick:
        synthetic = SyntheticConfig(train_tokens=a.synthetic_tokens, valid_tokens=500, test_tokens=500,
                                    background_vocab=2000, entity_pool=1000, topic_words=100)
    is_synthetic = a.data.strip().lower() == "synthetic"
    options = {k: getattr(synthetic, k) for k in synthetic.__dataclass_fields__} if is_synthetic else {}
    corpus = load_corpus(a.data, seed=a.seed, **options)
    V = len(corpus.vocab)
    plain_data = plain_batchify(corpus.train, a.batch, device)

    fpt = flops_per_token(V, a.hidden, a.hidden, a.layers)
    runners = {
        "fastbind_softmax": lambda: run_fastbind(a, "softmax", synthetic),
        "plain": lambda: run_plain(plain_data, V, a, device),
        "fastbind_hebbian": lambda: run_fastbind(a, "hebbian", synthetic),
    }
    rounds, results, peak = interleaved_rounds(runners, a, device, fpt["train"])

    def per_round(num: str, den: str) -> list[float]:
        return [n["tokens_per_s"] / d["tokens_per_s"] for n, d in zip(rounds[num], rounds[den])]

    ratios = {
        "fastbind_over_plain": results["fastbind_softmax"]["tokens_per_s_median"] / results["plain"]["tokens_per_s_median"],
        "fastbind_over_plain_rounds": per_round("fastbind_softmax", "plain"),
        "hebbian_over_softmax": (results["fastbind_hebbian"]["tokens_per_s_median"]
                                 / results["fastbind_softmax"]["tokens_per_s_median"]),
        "hebbian_over_softmax_rounds": per_round("fastbind_hebbian", "fastbind_softmax"),
    }
    # Correctness: every variant trained the same tokens, and fastbind's loop and the plain one
    # reach a similar training loss on the same model shape and data (a broken loss or data
    # pipeline shows as a gap of the order of the loss itself).
    checks = {
        "equal_tokens": all(t == a.steps * a.batch * a.bptt for r in results.values() for t in r["tokens_rounds"]),
        "mean_loss_gap_softmax_plain": max(abs(f - p) for f, p in zip(results["fastbind_softmax"]["mean_loss_rounds"],
                                                                     results["plain"]["mean_loss_rounds"])),
        "log_vocab": math.log(V),
    }
    data_label = "ptb (../shared/data/ptb)" if Path(a.data).resolve() == SHARED_PTB.resolve() else a.data
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "out"}
    settings["data"] = data_label
    result = {
        "benchmark": "lm_train_throughput", **environment(device),
        "argv": sys.argv[1:] if argv is None else list(argv), "settings": settings,
        "vocab_size": V, "train_corpus_tokens": int(corpus.train.numel()),
        "tokens_per_step": a.batch * a.bptt,
        "flops_per_token": fpt, "matmul_peak": peak, "results": results, "ratios": ratios, "checks": checks,
    }

    print(f"\ndata {data_label}  V={V}  hidden={a.hidden} layers={a.layers} batch={a.batch}x{a.bptt}  "
          f"{a.optim} clip={a.clip}  threads={a.threads}  device={device}  {a.rounds} rounds x {a.steps} steps")
    print(f"matmul peak ({a.peak_size}^3 fp32, median of {peak['runs']}): {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s "
          f"(best {peak['flops_per_s_best'] / 1e9:,.1f})   "
          f"training FLOPs/token: {fpt['train'] / 1e6:,.2f} M")
    print(f"{'variant':<18} {'tok/s (median)':>15} {'GFLOP/s':>9} {'of peak':>8}  tok/s per round")
    for name in VARIANTS:
        r = results[name]
        print(f"{name:<18} {r['tokens_per_s_median']:>15,.0f} {r['achieved_flops_per_s'] / 1e9:>9.2f} "
              f"{r['fraction_of_peak']:>8.1%}  " + ", ".join(f"{x:,.0f}" for x in r["tokens_per_s_rounds"]))
    print(f"ratio fastbind/plain: {ratios['fastbind_over_plain']:.3f} (target >= 1.0; per round "
          + ", ".join(f"{x:.3f}" for x in ratios["fastbind_over_plain_rounds"]) + ")")
    print(f"ratio hebbian/softmax (fastbind): {ratios['hebbian_over_softmax']:.3f}")
    print(f"checks: equal tokens {checks['equal_tokens']}, mean-loss gap softmax/plain "
          f"{checks['mean_loss_gap_softmax_plain']:.3f} (log V = {checks['log_vocab']:.2f})")
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
