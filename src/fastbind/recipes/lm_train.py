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

import math
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from fastbind.data.stream import ChunkStream
from fastbind.errors import UserError
from fastbind.evaluation import evaluate
from fastbind.lm import LMTrainConfig, build_model, load_data, resolve_auto
from fastbind.models.lstm_lm import detach_state
from fastbind.runs import RunFolder, check_resume
from fastbind.training.buckets import BucketedNLL
from fastbind.training.checkpoint import gather_rng_states, set_rng_state
from fastbind.training.config import parse_cli, to_dict
from fastbind.training.distributed import init_distributed, replicas_identical, resolve_device
from fastbind.training.optim import build_optimizer, build_scheduler, clip_grad
from fastbind.training.seed import seed_everything


def train(cfg: LMTrainConfig) -> dict:
    """Run (or resume) training; returns the summary written to ``out/summary.json``."""
    info = init_distributed()
    device = resolve_device(cfg.device, info)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = RunFolder(cfg.out)  # writes on the primary rank only
    out = run.path

    ck, last_path = run.load_checkpoint("last") if run.has_checkpoint("last") else (None, None)
    seed_everything(cfg.seed + info.rank)
    corpus = load_data(cfg)
    cfg = resolve_auto(cfg, corpus)  # gamma=auto / T=auto become numbers before they are compared or saved
    # ---- resume check before anything is written
    if ck is not None:
        check_resume(ck["config"], cfg, out)
    V = len(corpus.vocab)
    digest = corpus.vocab.check_checkpoint(ck, last_path, cfg.data)
    model = build_model(cfg, V).to(device)
    opt = build_optimizer(model.parameters(), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, cfg.max_steps)
    step, best, train_state, since_best = 0, math.inf, None, 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, best = int(ck["step"]), float(ck["best_val_ppl"])
        since_best = int(ck.get("evals_since_best", 0))
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
    run.save_config(cfg)
    if run.writer:
        corpus.vocab.save(out / "vocab.txt")
    log = run.metrics_writer(cfg.tensorboard)

    def checkpoint(name: str) -> None:
        rngs = gather_rng_states()
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "config": to_dict(cfg), "step": step, "best_val_ppl": best, "evals_since_best": since_best, "rng": rngs,
            "vocab_digest": digest, "vocab_size": V, "data_position": step % len(stream),
            "train_state": list(train_state) if train_state is not None else None,
        }
        run.save_checkpoint(name, state)

    def validate() -> dict:
        """Validate, log it, and keep best.pt when it improves."""
        nonlocal best, since_best
        acc = BucketedNLL.from_counts(corpus.train_counts, cfg.buckets)
        val = evaluate(model, corpus.valid, batch_size=cfg.eval_batch_size, bptt=cfg.bptt, acc=acc,
                       device=device, max_tokens=cfg.eval_max_tokens, info=info)
        log.log(step, {"val/ppl": val["ppl"], "val/loss": val["nll"], "tokens": step * tokens_per_step,
                       # per training-frequency bucket, for curves of each bucket over training
                       "val/bucket_ppl": {b["name"]: b["ppl"] for b in val["buckets"]},
                       "val/bucket_tokens": {b["name"]: b["tokens"] for b in val["buckets"]}})
        if info.is_primary and cfg.progress:
            bar.write(f"step {step}: validation perplexity {val['ppl']:.2f}")
        if val["ppl"] < best:
            best, since_best = val["ppl"], 0
            checkpoint("best")
        else:
            since_best += 1
        return val

    start_step, t0 = step, time.perf_counter()
    tokens_per_step = cfg.batch_size * cfg.bptt
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {model.cfg.head}", dynamic_ncols=True,
               disable=not (info.is_primary and cfg.progress))
    loss_sum, loss_n, t_log, val = 0.0, 0, time.perf_counter(), None
    stopped_early = False

    def converged() -> bool:
        return bool(cfg.patience) and since_best >= cfg.patience

    while step < cfg.max_steps and not converged():
        model.train()
        x, y = (t.to(device) for t in stream.chunk(step))
        res = ddp_model(x, train_state if cfg.carry_state else None, targets=y)
        loss = res.nll.mean()
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
            log.log(step, {"train/loss": mean, "train/ppl": math.exp(min(mean, 50)),
                           "train/tokens_per_s": tps, "lr": sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}", tok_s=f"{tps:,.0f}")
            loss_sum, loss_n, t_log = 0.0, 0, now
        bar.update(1)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            val = validate()
            checkpoint("last")
            if converged():
                if info.is_primary and cfg.progress:
                    bar.write(f"step {step}: no improvement in {cfg.patience} validations, stopping")
                break
        out_of_time = cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if step == cfg.max_steps and not cfg.eval_every:
            checkpoint("last")
        if step < cfg.max_steps and ((cfg.stop_after and step - start_step >= cfg.stop_after) or out_of_time):
            if out_of_time and cfg.eval_every and step % cfg.eval_every:
                # A time-budgeted run ends with a validation, so best.pt reflects its last step.
                val = validate()
            checkpoint("last")
            stopped_early = True
            break
    bar.close()
    if step == start_step and ck is not None and info.is_primary and cfg.progress:
        print(f"{out}: already trained for {step} steps (max_steps={cfg.max_steps}"
              + (f", stopped after {cfg.patience} validations without improvement)" if converged() else ")"))
    summary = {
        "step": step, "max_steps": cfg.max_steps,
        "finished": (step >= cfg.max_steps or converged()) and not stopped_early, "converged": converged(),
        "best_val_ppl": best, "last_val_ppl": val["ppl"] if val else None,
        "train_tokens": step * tokens_per_step, "seconds_this_run": time.perf_counter() - t0,
        "world_size": info.world_size, "head": model.cfg.head, "data": cfg.data, "vocab_size": V,
    }
    if info.is_distributed:
        summary["replicas_identical"] = replicas_identical(model)
    run.write_summary(summary)
    log.close()
    if info.is_distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


CONFIG = LMTrainConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, LMTrainConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/x)")
    train(cfg)
    return 0
