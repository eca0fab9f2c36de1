"""``fastbind lm-train``: train an LSTM language model with a softmax or Hebbian Softmax head.

Reads top to bottom: settings, data, model, optimizer, resume, train loop (validation and
checkpoints inside), summary. Usage::

    fastbind lm-train out=runs/ptb-hebb data=ptb head=hebbian T=100 gamma=0.1 max_steps=20000
    fastbind lm-train --config wikitext103-paper            # a preset; see docs/language_modelling.md
    torchrun --nproc_per_node=2 -m fastbind lm-train out=runs/ddp batch_size=32

Re-running with the same ``out`` resumes from ``out/last.pt`` (the model settings and the
data must match); a resumed run ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.data import Corpus, load_corpus
from fastbind.data.stream import ChunkStream
from fastbind.data.synthetic import SyntheticConfig
from fastbind.errors import UserError
from fastbind.models.lstm_lm import LMConfig, LSTMLM, detach_state
from fastbind.training.buckets import DEFAULT_EDGES, BucketedNLL
from fastbind.training.checkpoint import atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fastbind.training.config import from_dict, parse_cli, save_config, to_dict
from fastbind.training.distributed import DistInfo, init_distributed
from fastbind.training.metrics import MetricsWriter
from fastbind.training.optim import OptimConfig, build_optimizer, build_scheduler, clip_grad
from fastbind.training.seed import seed_everything

# Short keys for the settings people change most.
ALIASES = {"head": "model.head", "gamma": "model.gamma", "T": "model.T", "lr": "optim.lr",
           "hidden": "model.hidden", "emb_dim": "model.emb_dim", "tied": "model.tied"}


@dataclass
class LMTrainConfig:
    """Settings of ``fastbind lm-train`` (every field is a ``key=value`` override)."""

    out: str = "runs/lm"  # run folder: config, vocab, metrics, checkpoints
    data: str = "synthetic"  # synthetic | wikitext-2 | wikitext-103 | ptb | PATH
    data_dir: str | None = None  # cache folder for named data sets (default ~/.cache/fastbind)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    max_steps: int = 2000
    max_minutes: float = 0.0  # also stop (with a checkpoint) after this much wall time; 0 = off
    stop_after: int = 0  # end this invocation after this many steps; re-running resumes
    batch_size: int = 32  # rows of the global batch (split across ranks)
    bptt: int = 35  # chunk length
    carry_state: bool = False  # pass the LSTM state between training chunks (the paper does not)
    eval_every: int = 500  # validation (and checkpoint) period; 0 = never validate
    eval_batch_size: int = 10
    eval_max_tokens: int = 0  # 0 = the whole validation split
    log_every: int = 10
    memorize_after: int = 0  # Hebbian: only count classes before this step, memorize after
    buckets: tuple[int, ...] = DEFAULT_EDGES
    tensorboard: bool | None = None  # None: when installed
    progress: bool = True
    model: LMConfig = field(default_factory=LMConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=2e-3, clip=1.0))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


def expand_aliases(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        key, eq, val = a.partition("=")
        out.append(f"{ALIASES[key]}={val}" if eq and key in ALIASES else a)
    return out


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if info.is_distributed:
        return info.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available")
    return dev


def load_data(cfg: LMTrainConfig) -> Corpus:
    cache = Path(cfg.data_dir) if cfg.data_dir else None
    options = to_dict(cfg.synthetic) if cfg.data.strip().lower() == "synthetic" else {}
    return load_corpus(cfg.data, cache, seed=cfg.seed, **options)


def vocab_digest(corpus: Corpus) -> str:
    return hashlib.sha1("\n".join(corpus.vocab.itos).encode("utf-8")).hexdigest()


def check_vocab(ck: dict, ck_path: Path, corpus: Corpus, data: str) -> str:
    """The corpus's vocabulary digest; UserError when the checkpoint was trained on another vocabulary."""
    digest = vocab_digest(corpus)
    if ck.get("vocab_digest") != digest:
        raise UserError(f"{ck_path} was trained on a different vocabulary ({ck.get('vocab_size')} types) than "
                        f"data={data} gives now ({len(corpus.vocab)} types)")
    return digest


def build_model(cfg: LMTrainConfig, vocab_size: int) -> LSTMLM:
    return LSTMLM(replace(cfg.model, vocab_size=vocab_size))


@torch.no_grad()
def evaluate(
    model: LSTMLM,
    tokens: torch.Tensor,
    *,
    batch_size: int,
    bptt: int,
    acc: BucketedNLL,
    device: torch.device,
    max_tokens: int = 0,
    info: DistInfo | None = None,
    progress: bool = False,
) -> dict:
    """Perplexity of a split as ``batch_size`` contiguous rows with the state carried.

    Under data parallelism the rows are split across ranks and the sums all-reduced.
    """
    was_training = model.training
    model.eval()
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    rank, world = (info.rank, info.world_size) if info else (0, 1)
    stream = ChunkStream(tokens, batch_size, bptt, rank, world)
    state = None
    for x, y in tqdm(stream, desc="eval", leave=False, disable=not progress):
        x, y = x.to(device), y.to(device)
        out = model(x, state)
        state = out.state
        nll = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten(), reduction="none")
        acc.add(nll, y)
    if world > 1:
        for t in (acc.nll, acc.tokens):
            dist.all_reduce(t)
    model.train(was_training)
    return acc.result()


def replicas_identical(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters and buffers."""
    h = hashlib.sha1()
    for t in list(model.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, h.hexdigest())
    return len(set(digests)) == 1


def _gather_rng(info: DistInfo) -> list:
    states = rng_state()
    if not info.is_distributed:
        return [states]
    out = [None] * info.world_size
    dist.all_gather_object(out, states)
    return out


def train(cfg: LMTrainConfig) -> dict:
    """Run (or resume) training; returns the summary written to ``out/summary.json``."""
    info = init_distributed()
    device = resolve_device(cfg.device, info)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"

    # ---- resume check before anything is written
    ck = load_checkpoint(last_path) if last_path.exists() else None
    if ck is not None:
        saved = from_dict(LMTrainConfig, ck["config"])
        for name in ("model", "data", "batch_size", "bptt", "carry_state", "seed"):
            if to_dict(saved).get(name) != to_dict(cfg).get(name):
                raise UserError(f"{out} holds a run with a different '{name}' ({to_dict(saved).get(name)!r}); "
                                f"use another out= or the same settings to resume")

    seed_everything(cfg.seed + info.rank)
    corpus = load_data(cfg)
    V = len(corpus.vocab)
    digest = check_vocab(ck, last_path, corpus, cfg.data) if ck is not None else vocab_digest(corpus)
    model = build_model(cfg, V).to(device)
    opt = build_optimizer(model.parameters(), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, cfg.max_steps)
    step, best, train_state = 0, math.inf, None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, best = int(ck["step"]), float(ck["best_val_ppl"])
        rngs = ck["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        if ck.get("train_state") is not None:
            train_state = tuple(t.to(device) for t in ck["train_state"])
    ddp_model = model
    if info.is_distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    stream = ChunkStream(corpus.train, cfg.batch_size, cfg.bptt, info.rank, info.world_size)
    writer = None
    if info.is_primary:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
        corpus.vocab.save(out / "vocab.txt")
        writer = MetricsWriter(out, tensorboard=cfg.tensorboard)

    def checkpoint(path: Path) -> None:
        rngs = _gather_rng(info)
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "config": to_dict(cfg), "step": step, "best_val_ppl": best, "rng": rngs,
            "vocab_digest": digest, "vocab_size": V, "data_position": step % len(stream),
            "train_state": list(train_state) if train_state is not None else None,
        }
        save_checkpoint(path, state)

    def validate() -> dict:
        """Validate, log it, and keep best.pt when it improves."""
        nonlocal best
        acc = BucketedNLL.from_counts(corpus.train_counts, cfg.buckets)
        val = evaluate(model, corpus.valid, batch_size=cfg.eval_batch_size, bptt=cfg.bptt, acc=acc,
                       device=device, max_tokens=cfg.eval_max_tokens, info=info)
        if writer:
            writer.log(step, {"val/ppl": val["ppl"], "val/loss": val["nll"], "tokens": step * tokens_per_step})
        if info.is_primary and cfg.progress:
            bar.write(f"step {step}: validation perplexity {val['ppl']:.2f}")
        if val["ppl"] < best:
            best = val["ppl"]
            checkpoint(best_path)
        return val

    start_step, t0 = step, time.perf_counter()
    tokens_per_step = cfg.batch_size * cfg.bptt
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {model.cfg.head}", dynamic_ncols=True,
               disable=not (info.is_primary and cfg.progress))
    loss_sum, loss_n, t_log, val = 0.0, 0, time.perf_counter(), None
    stopped_early = False
    while step < cfg.max_steps:
        model.train()
        x, y = (t.to(device) for t in stream.chunk(step))
        res = ddp_model(x, train_state if cfg.carry_state else None)
        loss = F.cross_entropy(res.logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad(model.parameters(), cfg.optim)
        opt.step()
        sched.step()
        model.memorize(res.hidden.detach(), y, count_only=step < cfg.memorize_after)
        if cfg.carry_state:
            train_state = detach_state(res.state)
        step += 1
        loss_sum += float(loss.detach())
        loss_n += 1
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            mean = loss_sum / loss_n
            tps = loss_n * tokens_per_step / max(now - t_log, 1e-9)
            if writer:
                writer.log(step, {"train/loss": mean, "train/ppl": math.exp(min(mean, 50)),
                                  "train/tokens_per_s": tps, "lr": sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}", tok_s=f"{tps:,.0f}")
            loss_sum, loss_n, t_log = 0.0, 0, now
        bar.update(1)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            val = validate()
            checkpoint(last_path)
        out_of_time = cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if step == cfg.max_steps and not cfg.eval_every:
            checkpoint(last_path)
        if step < cfg.max_steps and ((cfg.stop_after and step - start_step >= cfg.stop_after) or out_of_time):
            if out_of_time and cfg.eval_every and step % cfg.eval_every:
                # A time-budgeted run ends with a validation, so best.pt reflects its last step.
                val = validate()
            checkpoint(last_path)
            stopped_early = True
            break
    bar.close()
    if step == start_step and ck is not None and info.is_primary and cfg.progress:
        print(f"{out}: already trained for {step} steps (max_steps={cfg.max_steps})")
    summary = {
        "step": step, "max_steps": cfg.max_steps, "finished": step >= cfg.max_steps and not stopped_early,
        "best_val_ppl": best, "last_val_ppl": val["ppl"] if val else None,
        "train_tokens": step * tokens_per_step, "seconds_this_run": time.perf_counter() - t0,
        "world_size": info.world_size, "head": model.cfg.head, "data": cfg.data, "vocab_size": V,
    }
    if info.is_distributed:
        summary["replicas_identical"] = replicas_identical(model)
    if info.is_primary:
        atomic_write(out / "summary.json", lambda fh: fh.write(json.dumps(summary, indent=2).encode()))
    if writer:
        writer.close()
    if info.is_distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


CONFIG = LMTrainConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(expand_aliases(argv), LMTrainConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/x)")
    train(cfg)
    return 0
