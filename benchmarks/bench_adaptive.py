"""Training throughput of the adaptive softmax against the full softmax, and the cost of the Hebbian update.

One training step of fastbind's LSTM language model (embedding and LSTM 256, batch 32 × 35,
WikiText-2's vocabulary of 33,278 words and its training tokens when ../shared/data/wikitext-2
is present, otherwise Zipf-distributed ids over the same vocabulary size): forward, the loss,
backward, Adam step, and for Hebbian heads the memorize after the step. Variants:

* ``full``: ``softmax=full head=softmax`` (an ``nn.Linear`` over the vocabulary);
* ``full_hebbian``: ``softmax=full head=hebbian``;
* ``adaptive``: ``softmax=adaptive head=softmax`` (:class:`HebbianAdaptiveSoftmax` that never
  memorizes; the computation of ``nn.AdaptiveLogSoftmaxWithLoss``);
* ``adaptive_hebbian``: ``softmax=adaptive head=hebbian`` (memorize after every step);
* ``torch_adaptive``: embedding → LSTM → ``nn.AdaptiveLogSoftmaxWithLoss`` written plainly,
  the reference for what the module alone costs.

Cutoffs are the ranks covering 80% and 95% of the training tokens, ``div_value`` 4. Rounds
interleave the variants so drift affects all alike; tokens/s is the median over rounds and
ratios are medians of per-round ratios. ``--threads 1,2`` measures each thread count.
``checks`` holds correctness columns (see :func:`checks`): the adaptive head's training path
against its full distribution, and against PyTorch's module holding its weights.

Usage::

    python benchmarks/bench_adaptive.py --threads 1,2
    python benchmarks/bench_adaptive.py --device cuda --data path/to/wikitext-2
    python benchmarks/bench_adaptive.py --quick             # a few seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_adaptive.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.layers.hebbian_adaptive import default_cutoffs
from fastbind.models.lstm_lm import LSTMConfig, LSTMLM
from fastbind.models.registry import ModelConfig

from _common import environment, full_float32, max_abs_diff, sync, write_result  # benchmarks/_common.py

WT2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"
VARIANTS = ("full", "full_hebbian", "adaptive", "adaptive_hebbian", "torch_adaptive")


class TorchAdaptiveLM(nn.Module):
    def __init__(self, V: int, d: int, cutoffs: list[int]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(V, d)
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.out = nn.AdaptiveLogSoftmaxWithLoss(d, V, cutoffs, div_value=4.0, head_bias=True)

    def forward(self, x, y):
        h, _ = self.lstm(F.dropout(self.embedding(x), 0.3, self.training))
        h = F.dropout(h, 0.3, self.training)
        return self.out(h.reshape(-1, h.shape[-1]), y.reshape(-1)).loss


def tokens_and_vocab(quick: bool, data: str | None = None) -> tuple[torch.Tensor, int, str]:
    """Training ids in frequency order (id = rank) and the vocabulary size.

    ``data``: a WikiText-2 folder, ``zipf``, or None for ../shared/data/wikitext-2 when present
    (zipf otherwise, and always with ``quick``).
    """
    folder = Path(data) if data not in (None, "zipf") else (WT2 if data is None and not quick else None)
    if folder is not None and (data is not None or folder.is_dir()):
        from fastbind.data import load_corpus

        corpus = load_corpus(str(folder))
        return corpus.train, len(corpus.vocab), "wikitext-2"
    V = 2000 if quick else 33278
    p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    return torch.multinomial(p / p.sum(), 200_000, replacement=True, generator=g), V, "zipf"


def make_variant(name: str, V: int, d: int, cutoffs: list[int], device: torch.device):
    torch.manual_seed(0)
    if name == "torch_adaptive":
        model = TorchAdaptiveLM(V, d, cutoffs).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)

        def step(x, y):
            loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step
    cfg = ModelConfig(vocab_size=V, emb_dim=d, head="hebbian" if name.endswith("hebbian") else "softmax",
                      softmax="adaptive" if name.startswith("adaptive") else "full", cutoffs=tuple(cutoffs))
    model = LSTMLM(cfg, LSTMConfig(hidden=d)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def step(x, y):
        out = model(x, targets=y)
        loss = out.nll.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.memorize(out.hidden.detach(), y)

    return step


@torch.no_grad()
@full_float32()
def checks(V: int, d: int, cutoffs: list[int], x: torch.Tensor, y: torch.Tensor) -> dict:
    """Correctness columns: the adaptive head's two paths agree, and it computes PyTorch's module.

    ``nll_vs_log_prob_max_abs_diff``: the training path (``forward`` with targets, only the
    targets' clusters) against the full log-distribution (``log_prob``) at the targets;
    ``torch_module_max_abs_diff``: :class:`HebbianAdaptiveSoftmax` against
    ``nn.AdaptiveLogSoftmaxWithLoss`` holding its weights (outputs and loss).
    """
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, emb_dim=d, softmax="adaptive", cutoffs=tuple(cutoffs))
    model = LSTMLM(cfg, LSTMConfig(hidden=d, input_dropout=0.0, dropout=0.0)).to(x.device).eval()
    nll = model(x, targets=y).nll
    log_p = model(x).logits.gather(2, y.unsqueeze(2)).squeeze(2)
    head = model.head
    ref = nn.AdaptiveLogSoftmaxWithLoss(d, V, cutoffs, div_value=head.div_value, head_bias=True).to(x.device)
    ref.load_state_dict({k: v for k, v in head.state_dict().items() if k != "counts"})
    h = model(x).hidden.reshape(-1, d)
    a, b = head(h, y.reshape(-1)), ref(h, y.reshape(-1))
    return {"nll_vs_log_prob_max_abs_diff": max_abs_diff(nll, -log_p),
            "torch_module_max_abs_diff": max(max_abs_diff(a.output, b.output), max_abs_diff(a.loss, b.loss)),
            "nll_mean": float(nll.mean())}


def measure(threads: int, a: argparse.Namespace, ids: torch.Tensor, V: int, cutoffs: list[int],
            device: torch.device) -> dict:
    torch.set_num_threads(threads)
    names = [v for v in a.variants.split(",") if v]
    steps = {n: make_variant(n, V, a.hidden, cutoffs, device) for n in names}
    n_tok = a.batch * a.bptt
    g = torch.Generator().manual_seed(1)

    def batch():
        start = torch.randint(0, ids.numel() - a.bptt - 1, (a.batch,), generator=g)
        idx = start[:, None] + torch.arange(a.bptt + 1)
        seq = ids[idx].to(device)
        return seq[:, :-1], seq[:, 1:]

    for _ in range(a.warmup):
        x, y = batch()
        for n in names:
            steps[n](x, y)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(a.rounds):
        x, y = batch()
        for n in names:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                steps[n](x, y)
            sync(device)
            seconds[n].append((time.perf_counter() - t0) / a.steps)

    def ratio(fast: str, slow: str) -> float | None:
        if fast not in seconds or slow not in seconds:
            return None
        return statistics.median(s / f for f, s in zip(seconds[fast], seconds[slow]))

    return {
        "threads": threads,
        "results": {n: {"step_s_median": statistics.median(s), "tokens_per_s_median": n_tok / statistics.median(s),
                        "step_s_rounds": s} for n, s in seconds.items()},
        "ratios": {
            "adaptive_vs_full": ratio("adaptive", "full"),  # target >= 5
            "adaptive_hebbian_vs_full_hebbian": ratio("adaptive_hebbian", "full_hebbian"),
            "torch_adaptive_vs_full": ratio("torch_adaptive", "full"),
            # step-time ratio Hebbian adaptive / plain adaptive (target <= 1.05)
            "adaptive_hebbian_step_over_adaptive": ratio("adaptive", "adaptive_hebbian"),
            "adaptive_step_over_torch_adaptive": ratio("torch_adaptive", "adaptive"),
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=None,
                    help="a WikiText-2 folder or 'zipf' (default: ../shared/data/wikitext-2 when present)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "bench_adaptive.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.hidden, a.batch, a.bptt, a.steps, a.rounds, a.warmup = 16, 4, 8, 1, 2, 1
    device = torch.device(a.device)
    ids, V, source = tokens_and_vocab(a.quick, a.data)
    cutoffs = default_cutoffs(torch.bincount(ids, minlength=V))
    seq = ids[: 4 * (a.bptt + 1)].view(4, a.bptt + 1).to(device)
    check = checks(V, a.hidden, cutoffs, seq[:, :-1], seq[:, 1:])
    runs = [measure(int(t), a, ids, V, cutoffs, device) for t in a.threads.split(",")]
    result = {"benchmark": "adaptive_softmax_train_throughput", **environment(device),
              "settings": {"data": source, "vocab_size": V, "cutoffs": cutoffs, "div_value": 4.0,
                           **{k: getattr(a, k) for k in ("hidden", "batch", "bptt", "steps", "rounds", "warmup")}},
              "runs": runs, "checks": check,
              "targets": {"adaptive_vs_full": ">= 5", "adaptive_hebbian_step_over_adaptive": "<= 1.05"}}
    for r in runs:
        print(f"{r['threads']} thread(s), V {V} ({source}), cutoffs {cutoffs}, B {a.batch} x {a.bptt}, d {a.hidden}")
        for n, v in r["results"].items():
            print(f"  {n:<18}{v['step_s_median']:>9.4f} s/step{v['tokens_per_s_median']:>12,.0f} tok/s")
        for k, v in r["ratios"].items():
            if v is not None:
                print(f"  {k}: {v:.2f}")
    for k, v in check.items():
        print(f"{k}: {v:.1e}")
    write_result(a.out, result)


if __name__ == "__main__":
    main()
