"""Fine-tuning throughput of a Hugging Face model with fastbind's Hebbian callback against without.

Three variants fine-tune the same GPT-2 (random weights, new tokens appended to its vocabulary)
with ``transformers.Trainer`` on the same random token rows for the same number of steps:

* ``linear``: the model's own output layer (untied, ``nn.Linear``), no callback;
* ``hebbian_head``: :func:`fastbind.hf.hebbian_head` (``counts="pretrained"``, the new tokens at
  count 0), no callback: the layer alone;
* ``hebbian_callback``: the same with :class:`fastbind.hf.HebbianCallback`: forward hooks record
  every micro-batch's output-layer input and labels, memorize runs after each optimizer step.

The variants run interleaved (``--rounds`` rounds, the order rotating each round), each round on
a fresh model; the time is ``Trainer.train``'s own ``train_runtime`` (its loop: data loading,
forward, backward, clipping, AdamW, scheduler, callbacks), tokens/s the median over rounds. The
defaults are the shape of the fine-tuning experiment in docs/RESULTS.md: width 256, 2 blocks, 4
heads, vocabulary 16,384 + 2,000 new tokens, context 64, batch 32, one CPU thread.

Target: ``callback_time_over_none`` (the callback's loop time ÷ the loop time without it, both
with the Hebbian layer; = tokens/s without ÷ tokens/s with) ≤ 1.05.

Usage::

    python benchmarks/bench_hf.py                      # the experiment's shape, one thread
    python benchmarks/bench_hf.py --threads 2 --steps 40 --rounds 5
    python benchmarks/bench_hf.py --smoke              # a few seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from _common import environment, write_result

VARIANTS = ("linear", "hebbian_head", "hebbian_callback")


def build(args: argparse.Namespace, variant: str):
    """A fresh model of ``variant`` and its callbacks."""
    import transformers

    from fastbind.hf import HebbianCallback, hebbian_head

    torch.manual_seed(args.seed)
    vocab = args.vocab + args.new
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=args.context, n_embd=args.width, n_layer=args.blocks,
                                  n_head=args.heads, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    callbacks = []
    if variant != "linear":
        hebbian_head(model, counts="pretrained", new_tokens=torch.arange(args.vocab, vocab))
    if variant == "hebbian_callback":
        callbacks.append(HebbianCallback(model))
    return model, callbacks


def run_variant(args: argparse.Namespace, variant: str, rows: torch.Tensor) -> dict:
    import transformers

    model, callbacks = build(args, variant)
    with tempfile.TemporaryDirectory() as tmp:
        targs = transformers.TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=5e-4,
            warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, report_to=[], use_cpu=True, save_strategy="no",
            logging_strategy="no", disable_tqdm=True, seed=args.seed, dataloader_num_workers=0)
        data = [{"input_ids": r, "labels": r} for r in rows]
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=data, callbacks=callbacks)
        out = trainer.train()
    seconds = float(out.metrics["train_runtime"])
    tokens = args.steps * args.batch * args.context
    memorized = callbacks[0].memorizer.steps if callbacks else 0
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "memorize_calls": memorized}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--new", type=int, default=2000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_hf.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.vocab, args.new, args.width, args.blocks, args.heads = 200, 20, 32, 1, 2
        args.context, args.batch, args.steps, args.rounds = 16, 4, 3, 1
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    rows = torch.randint(0, args.vocab + args.new, (args.steps * args.batch, args.context), generator=g)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
        for variant in order:
            runs[variant].append(run_variant(args, variant, rows))
            print(f"round {r + 1} {variant}: {runs[variant][-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    rate = {v: statistics.median(x["tokens_per_s"] for x in runs[v]) for v in VARIANTS}
    result = {
        "benchmark": "bench_hf",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(torch.device("cpu")),
        "tokens_per_s": rate,
        "callback_time_over_none": rate["hebbian_head"] / rate["hebbian_callback"],
        "hebbian_layer_time_over_linear": rate["linear"] / rate["hebbian_head"],
        "target": {"callback_time_over_none": "<= 1.05"},
        "equal_tokens": len({x["tokens"] for v in VARIANTS for x in runs[v]}) == 1,
        "memorize_calls_per_round": [x["memorize_calls"] for x in runs["hebbian_callback"]],
        "runs": runs,
    }
    print(f"callback/none time ratio {result['callback_time_over_none']:.3f} (target <= 1.05); "
          f"Hebbian layer/linear {result['hebbian_layer_time_over_linear']:.3f}")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
