"""Fine-tune a Hugging Face causal LM on a new domain with new tokens, with and without the
Hebbian output layer (the experiment of docs/RESULTS.md, "Hugging Face models").

Three steps, each a subcommand (needs ``pip install -e .[hf]``; no downloads)::

    # 1. a small GPT-2 (2 blocks of 256, word-level tokenizer of WikiText-2's 16K most
    #    frequent words) trained on WikiText-2: the "pre-trained model"
    python examples/hf_new_tokens.py pretrain --out runs/hf/base --minutes 45
    # 2. fine-tune it on Gutenberg books with the books' frequent out-of-vocabulary words added
    #    as new tokens, once with the model's own head and once with a Hebbian head
    python examples/hf_new_tokens.py finetune --base runs/hf/base --out runs/hf/ft-softmax
    python examples/hf_new_tokens.py finetune --base runs/hf/base --out runs/hf/ft-hebbian --hebbian
    # 3. the evaluation-time memories on a fine-tuned model
    fastbind lm-eval model=runs/hf/ft-hebbian/model text=runs/hf/data/test.txt \\
        train=runs/hf/data/train.txt out=runs/hf/eval-hebbian cache.lambda=0.1 ...

The Gutenberg books are read from ``../shared/data/gutenberg/gutenberg.zip`` (``--gutenberg``):
every book but the Bible, the first 90% of each book's lines for fine-tuning, the next 5% for
validation and the last 5% for test, kept as written (cased, raw punctuation). The tokenizer
splits words from punctuation (``\\w+|[^\\w\\s]+``) and maps unknown words to ``<unk>``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zipfile
from collections import Counter
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# ---------------------------------------------------------------------------- data
def word_tokenizer(train_file: Path, vocab_size: int):
    """A word-level fast tokenizer of the ``vocab_size`` most frequent words of ``train_file``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<eos>"])
    tok.train([str(train_file)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def encode_file(tokenizer, path: Path, block: int = 2000) -> torch.Tensor:
    """Token ids of a whole text file (lines tokenized in blocks, concatenated)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    ids: list[int] = []
    for i in range(0, len(lines), block):
        for row in tokenizer(lines[i : i + block], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    return torch.tensor(ids, dtype=torch.long)


def gutenberg_splits(zip_path: Path, out: Path) -> dict[str, Path]:
    """Write train/valid/test text files of the books (90/5/5% of each book's lines)."""
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    with zipfile.ZipFile(zip_path) as z:
        for name in sorted(z.namelist()):
            if not name.endswith(".txt") or "bible" in name:
                continue
            lines = [ln for ln in z.read(name).decode("latin-1").splitlines() if ln.strip()]
            a, b = int(0.9 * len(lines)), int(0.95 * len(lines))
            parts["train"] += lines[:a]
            parts["valid"] += lines[a:b]
            parts["test"] += lines[b:]
    paths = {}
    for split, lines in parts.items():
        paths[split] = out / f"{split}.txt"
        paths[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def batches(ids: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    """Endless random ``(batch, length + 1)`` windows of a token stream (the model shifts the labels)."""
    n = ids.numel() - length - 1
    while True:
        start = torch.randint(0, n, (batch,), generator=generator)
        yield torch.stack([ids[s : s + length + 1] for s in start.tolist()])


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, length: int, mask_ids: torch.Tensor | None = None,
               max_tokens: int = 0) -> dict:
    """Perplexity over consecutive non-overlapping windows; with ``mask_ids`` also on the
    targets whose id is in it (e.g. the new tokens)."""
    model.eval()
    if max_tokens:
        ids = ids[: max_tokens + 1]
    n = (ids.numel() - 1) // length * length
    x, y = ids[:n].view(-1, length), ids[1 : n + 1].view(-1, length)
    nll = torch.cat([torch.nn.functional.cross_entropy(model(input_ids=x[i : i + 32]).logits.float().flatten(0, 1),
                                                       y[i : i + 32].flatten(), reduction="none")
                     for i in range(0, x.shape[0], 32)])
    y = y.flatten()
    result = {"ppl": math.exp(nll.mean().item()), "tokens": int(y.numel())}
    if mask_ids is not None:
        sel = torch.isin(y, mask_ids)
        result["new_tokens"] = int(sel.sum())
        result["ppl_new"] = math.exp(nll[sel].mean().item()) if sel.any() else float("nan")
        result["ppl_old"] = math.exp(nll[~sel].mean().item())
    model.train()
    return result


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# ---------------------------------------------------------------------------- pretrain
def pretrain(args) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wt2 = Path(args.wikitext2)
    tokenizer = word_tokenizer(wt2 / "train.txt", args.vocab)
    train_ids, valid_ids = encode_file(tokenizer, wt2 / "train.txt"), encode_file(tokenizer, wt2 / "valid.txt")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.context, n_embd=args.width, n_layer=args.blocks,
                        n_head=args.heads, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        tie_word_embeddings=True)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    log = []
    t0 = time.time()
    step = 0
    for step, rows in enumerate(batches(train_ids, args.batch, args.context - 1, gen)):
        if step >= args.steps or time.time() - t0 > args.minutes * 60:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, 100)
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            el = time.time() - t0
            print(f"step {step} loss {loss.item():.3f} {el / 60:.1f} min "
                  f"{(step + 1) * args.batch * args.context / el:.0f} tok/s", flush=True)
        if step and step % 500 == 0:
            v = perplexity(model, valid_ids, args.context, max_tokens=50_000)
            log.append({"step": step, "minutes": (time.time() - t0) / 60, "valid_ppl_50k": v["ppl"]})
            print(log[-1], flush=True)
    v = perplexity(model, valid_ids, args.context)
    log.append({"step": step, "minutes": (time.time() - t0) / 60, "valid_ppl": v["ppl"], "final": True})
    print(log[-1], flush=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "func"}, "log": log}, indent=1))


# ---------------------------------------------------------------------------- finetune
def new_words(tokenizer, train_file: Path, min_count: int, limit: int) -> list[str]:
    """Words of the fine-tuning text the tokenizer maps to ``<unk>``, seen at least ``min_count``
    times, the ``limit`` most frequent (ties by first sighting)."""
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    vocab = tokenizer.get_vocab()
    counts: Counter[str] = Counter()
    for line in train_file.read_text(encoding="utf-8").splitlines():
        counts.update(w for w, _ in pre.pre_tokenize_str(line) if w not in vocab)
    return [w for w, c in counts.most_common(limit) if c >= min_count]


def curve_callback(model, valid: torch.Tensor, length: int, new_ids: torch.Tensor, every: int, log: list):
    """A Trainer callback: validation perplexity (all, new tokens, the rest) every ``every`` steps."""
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.time()

        def on_train_begin(self, args, state, control, **kwargs):
            self.on_step_end(args, state, control)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                v = perplexity(model, valid, length, new_ids)
                log.append({"step": state.global_step, "minutes": (time.time() - self.t0) / 60, **v})
                print(log[-1], flush=True)

    return Curve()


def finetune(args) -> None:
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from fastbind.hf import HebbianCallback, hebbian_head, save_pretrained

    if args.max_norm not in (None, "rows"):
        args.max_norm = float(args.max_norm)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    files = {s: data / f"{s}.txt" for s in ("train", "valid", "test")}
    if not all(f.is_file() for f in files.values()):
        files = gutenberg_splits(Path(args.gutenberg), data)
    tokenizer = AutoTokenizer.from_pretrained(args.base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.base, local_files_only=True)
    old_size = len(tokenizer)
    words = new_words(tokenizer, files["train"], args.min_count, args.new_tokens)
    tokenizer.add_tokens([AddedToken(w, single_word=True) for w in words])
    model.resize_token_embeddings(len(tokenizer))
    new_ids = torch.arange(old_size, len(tokenizer))
    ids = {s: encode_file(tokenizer, f) for s, f in files.items()}
    head = None
    if args.hebbian:
        head = hebbian_head(model, gamma=args.gamma, T=args.T, counts="pretrained", new_tokens=new_ids,
                            objective=args.objective, max_norm=args.max_norm)
    elif args.untie:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    n = (ids["train"].numel() - 1) // args.context
    rows = ids["train"][: n * args.context].view(n, args.context)
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    log: list[dict] = []
    callbacks = [curve_callback(model, ids["valid"], args.context, new_ids, args.eval_every, log)]
    if head is not None:
        callbacks.insert(0, HebbianCallback(model, center=args.center))
    targs = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=args.batch,
                              max_steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup,
                              weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear", report_to=[],
                              use_cpu=True, save_strategy="no", logging_steps=100, disable_tqdm=True,
                              seed=args.seed, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, callbacks=callbacks)
    t0 = time.time()
    train_out = trainer.train()
    minutes = (time.time() - t0) / 60
    test = perplexity(model, ids["test"], args.context, new_ids)
    print({"test": test}, flush=True)
    save_pretrained(model, out / "model")
    tokenizer.save_pretrained(out / "model")
    (out / "finetune.json").write_text(json.dumps({
        "args": {k: v for k, v in vars(args).items() if k != "func"}, "new_tokens": len(words),
        "examples_new": words[:20], "train_tokens": int(ids["train"].numel()), "minutes": minutes,
        "train_loss": train_out.training_loss, "curve": log, "test": test,
        "new_in_test": int(torch.isin(ids["test"], new_ids).sum())}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pretrain", help="train the base model on WikiText-2")
    a.add_argument("--out", required=True)
    a.add_argument("--wikitext2", default=str(DATA / "wikitext-2"))
    a.add_argument("--vocab", type=int, default=16384)
    a.add_argument("--context", type=int, default=64)
    a.add_argument("--width", type=int, default=256)
    a.add_argument("--blocks", type=int, default=2)
    a.add_argument("--heads", type=int, default=4)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--steps", type=int, default=2000)
    a.add_argument("--minutes", type=float, default=45)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=pretrain)
    f = sub.add_parser("finetune", help="fine-tune on Gutenberg with new tokens (Trainer)")
    f.add_argument("--base", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--data", default="runs/hf/data", help="where the Gutenberg splits are written (once)")
    f.add_argument("--gutenberg", default=str(DATA / "gutenberg" / "gutenberg.zip"))
    f.add_argument("--hebbian", action="store_true", help="a Hebbian head (untied; pretrained counts)")
    f.add_argument("--untie", action="store_true", help="softmax arm: untie the head as the Hebbian arm does")
    f.add_argument("--gamma", type=float, default=0.05)
    f.add_argument("--T", type=int, default=100)
    f.add_argument("--objective", default="ip", help="the Hebbian head's inner objective (ip | l2: the paper's)")
    f.add_argument("--max-norm", default=None, help="ip: the rows' norm bound, a number or 'rows' (the default)")
    f.add_argument("--center", action=argparse.BooleanOptionalAction, default=True,
                   help="memorize h minus the step's mean activation (--no-center: the paper's rule)")
    f.add_argument("--new-tokens", type=int, default=2000)
    f.add_argument("--min-count", type=int, default=5)
    f.add_argument("--context", type=int, default=64)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--lr", type=float, default=5e-4)
    f.add_argument("--warmup", type=int, default=50)
    f.add_argument("--steps", type=int, default=1000)
    f.add_argument("--eval-every", type=int, default=250)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=finetune)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
