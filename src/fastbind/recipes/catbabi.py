"""``fastbind catbabi``: train and evaluate an FWM-LSTM or an LSTM on catbAbI (Schlag et al. 2021).

catbAbI concatenates the 20 bAbI tasks into ``batch_size`` endless streams of stories (see
:mod:`fastbind.data.babi`); the model's state (LSTM state and, for ``arch=fwm``, the fast
weights) is carried across segments and stories. ``mode=qa`` trains on the answers only,
``mode=lm`` on every next token; accuracy is always measured on the answer tokens, per task.
Usage::

    fastbind catbabi data=../shared/data/babi out=runs/catbabi-fwm-qa arch=fwm mode=qa max_minutes=120
    fastbind catbabi out=runs/catbabi-lstm-qa arch=lstm mode=qa max_minutes=120    # the baseline
    fastbind catbabi out=runs/catbabi-fwm-qa test=now      # test accuracy of an unfinished run
    fastbind report runs/catbabi-fwm-qa runs/catbabi-lstm-qa                       # side by side

Re-running with the same ``out`` resumes from ``out/last.pt`` (model, optimizer, the stream's
position, the carried state and the random state), so ``max_minutes`` slices add up to one
uninterrupted run. Validation accuracy (per task) is logged every ``eval_every`` steps and the
best validation mean keeps ``best.pt``. When the run reaches ``max_steps`` (or with
``test=now``) the test split is evaluated with ``best.pt`` into ``results.json``
(``{"arch", "mode", "per_task": {"qa1": acc, ...}, "mean": acc, ...}``) and ``results.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.data.babi import IGNORE_INDEX, NUM_TASKS, CatbAbIEvalStream, CatbAbIStream, load_babi
from fastbind.errors import BadSetting, UserError
from fastbind.evaluation import answer_accuracy
from fastbind.models.language_model import detach_state
from fastbind.models.registry import MODEL_RENAMED, FWMConfig, LSTMConfig, ModelConfig, build_lm
from fastbind.runs import RunFolder, check_resume
from fastbind.training.checkpoint import rng_state, set_rng_state
from fastbind.training.config import alias, parse_cli, to_dict
from fastbind.training.distributed import DistInfo, check_device, resolve_device
from fastbind.training.optim import OptimConfig, build_optimizer, clip_grad
from fastbind.training.seed import seed_everything

RESULTS = "results"  # results.json / results.md in the run folder

# The model families catbabi runs: each row of the batch is one endless stream of stories, so the
# model must carry a state across segments (arch=lstm: (h, c); arch=fwm: also the fast weights).
ARCHS = ("lstm", "fwm")


def _check_model(cfg: CatbAbIConfig) -> None:
    """Model settings catbabi cannot run, refused in one line before any work."""
    if cfg.model.arch not in ARCHS:
        raise UserError(f"arch={cfg.model.arch} is not supported (no state across segments)")
    if cfg.model.head == "hebbian" and "auto" in (cfg.model.gamma, cfg.model.T):
        raise UserError("head=hebbian needs numbers for gamma and T here (auto is resolved by lm-train)")


@dataclass
class CatbAbIConfig:
    """Settings of ``fastbind catbabi`` (every field is a ``key=value`` override).

    ``arch``, ``emb_dim``, ``hidden`` and ``lr`` set the fields of those names in ``model``,
    ``lstm`` and ``optim``; ``fwm.size``, ``fwm.hops`` and ``fwm.residual`` the memory (also
    under their earlier names ``model.fwm_size``, ``model.fwm_hops``, ``model.fwm_residual``).
    The defaults are the authors' catbAbI model: embedding and LSTM 256, no dropout, F of
    32 × 32 × 32, 3 reads, and the output read from the memory alone (their catbAbI scripts turn
    the residual off; docs/RESULTS.md, "catbAbI", compares both); N(0, 1) embeddings and one LSTM
    bias vector with the forget gate at +1, as their code initialises them (with U(±0.1)
    embeddings one seed in two did not train; docs/RESULTS.md, "the authors' code differences").
    Their Xavier output layer and projection biases did not help and stay off.
    """

    out: str = "runs/catbabi"  # run folder: config, vocab, metrics, checkpoints, results
    data: str = "../shared/data/babi"  # the bAbI v1.2 release (folder with tasks_1-20_v1-2, or its en*/)
    mode: Literal["qa", "lm"] = "qa"  # qa: answers are the only targets; lm: every next token
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    max_steps: int = 50000  # the authors' budget
    max_minutes: float = 0.0  # also stop (with a checkpoint) after this much wall time; 0 = off
    batch_size: int = 32
    seg_len: int = 200
    valid_fraction: float = 0.1  # of each task's training stories, held out (as en-valid-10k)
    eval_every: int = 250  # validation (and checkpoint) period in steps; 0 = never validate
    eval_segments: int = 0  # validate on this many segments only (0 = the whole split)
    eval_batch: int = 0  # validation streams (0: batch_size); the authors validate at 128
    # validation streams start empty, or each from training stream 0's state at that step (the authors)
    eval_from: Literal["empty", "train"] = "empty"
    test_batch: int = 0  # test streams, from an empty state (0: batch_size); the authors test at 1
    log_every: int = 25
    test: Literal["end", "now"] = "end"  # end: test once max_steps is reached; now: also after this slice
    compile: bool = False  # arch=fwm: torch.compile the fast-weight blocks (minutes to compile, then faster)
    tensorboard: bool | None = None  # None: when installed
    progress: bool = True
    model: ModelConfig = alias("arch", "emb_dim", default_factory=lambda: ModelConfig(arch="fwm", emb_dim=256,
                                                                                      emb_init="normal"))
    lstm: LSTMConfig = alias("hidden", default_factory=lambda: LSTMConfig(hidden=256, input_dropout=0.0, dropout=0.0,
                                                                          bias="single"))
    fwm: FWMConfig = field(default_factory=lambda: FWMConfig(residual=False))
    # The authors: Adam 1e-3, no gradient clipping.
    optim: OptimConfig = alias("lr", default_factory=lambda: OptimConfig(name="adam", lr=1e-3, clip=0.0))

    RENAMED: ClassVar[dict[str, str]] = MODEL_RENAMED

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any work
        for name in ("batch_size", "seg_len", "max_steps", "log_every"):
            if getattr(self, name) < 1:
                raise BadSetting(name, "must be >= 1")
        for name in ("threads", "max_minutes", "eval_every", "eval_segments", "eval_batch", "test_batch"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if not 0 <= self.seed < 2**32:
            raise BadSetting("seed", "must lie in [0, 2**32)")
        if not 0 < self.valid_fraction < 1:
            raise BadSetting("valid_fraction", "must lie in (0, 1)")
        check_device(self.device)


def results_markdown(record: dict) -> str:
    """``results.json`` as a markdown table: one row per task, then the mean."""
    lines = [f"catbAbI {record['mode'].upper()}-mode test accuracy, {record['arch']} "
             f"(step {record['step']}, {record['answers']:,} answers)", "", "| task | accuracy |", "|---|---:|"]
    lines += [f"| {task} | {100 * acc:.2f}% |" for task, acc in record["per_task"].items()]
    lines.append(f"| **mean** | **{100 * record['mean']:.2f}%** |")
    return "\n".join(lines) + "\n"


def train(cfg: CatbAbIConfig) -> dict:
    """Run (or resume) training; returns the summary written to ``out/summary.json``."""
    _check_model(cfg)
    device = resolve_device(cfg.device, DistInfo())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = RunFolder(cfg.out)
    ck, ck_path = None, None
    if run.has_checkpoint("last"):
        ck, ck_path = run.load_checkpoint("last", map_location=device)
        check_resume(ck["config"], cfg, run.path, free=frozenset({"test_batch"}))
    data = load_babi(cfg.data, seed=cfg.seed, valid_fraction=cfg.valid_fraction)
    for note in data.notes:  # e.g. a task trained on its 1k file: always said
        print(f"catbabi: {note}", flush=True)
    digest = data.vocab.check_checkpoint(ck, ck_path, cfg.data)
    seed_everything(cfg.seed)
    model = build_lm(cfg, len(data.vocab)).to(device)
    if cfg.compile and cfg.model.arch == "fwm":
        model.fwm.compiled = True
    opt = build_optimizer(model.parameters(), cfg.optim)
    stream = CatbAbIStream(data.train, data.vocab, batch_size=cfg.batch_size, seg_len=cfg.seg_len, mode=cfg.mode,
                           seed=cfg.seed)
    step, best, state = 0, -math.inf, None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        stream.load_state_dict(ck["stream"])
        step, best = int(ck["step"]), float(ck["best_valid_mean"])
        state = tuple(t.to(device) for t in ck["state"]) if ck.get("state") is not None else None
        set_rng_state(ck["rng"])
    run.save_config(cfg, recipe="catbabi")
    data.vocab.save(run.path / "vocab.txt")
    log = run.metrics_writer(cfg.tensorboard)

    def checkpoint(name: str) -> None:
        run.save_checkpoint(name, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "config": to_dict(cfg), "step": step,
            "best_valid_mean": best, "stream": stream.state_dict(), "rng": rng_state(), "vocab_digest": digest,
            "vocab_size": len(data.vocab),
            "state": list(state) if state is not None else None,
        })

    def evaluate(split: str, segments: int = 0) -> dict:
        stories = data.valid if split == "valid" else data.test
        batch = (cfg.eval_batch if split == "valid" else cfg.test_batch) or cfg.batch_size
        start = None  # an empty state
        if split == "valid" and cfg.eval_from == "train" and state is not None:
            start = model.replicate_state(state, row=0, n=batch)
        es = CatbAbIEvalStream(stories, data.vocab, batch_size=batch, seg_len=cfg.seg_len, mode=cfg.mode,
                               seed=cfg.seed)
        return answer_accuracy(model, es, device=device, num_tasks=NUM_TASKS, max_segments=segments,
                               progress=cfg.progress, state=start)

    def validate() -> dict:
        nonlocal best
        val = evaluate("valid", cfg.eval_segments)
        log.log(step, {"val/acc": val["mean"], "val/acc_all": val["accuracy"], "val/loss": val["loss"],
                       "val/acc_task": val["per_task"]})
        if cfg.progress:
            bar.write(f"step {step}: validation accuracy {100 * val['mean']:.2f}% (mean over tasks)")
        if val["mean"] > best:
            best = val["mean"]
            checkpoint("best")
        return val

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"catbabi {cfg.model.arch} {cfg.mode}", dynamic_ncols=True,
               disable=not cfg.progress)
    loss_sum, loss_n, hits, answers, norm_sum, n, t_log = 0.0, 0, 0, 0, 0.0, 0, time.perf_counter()
    stopped = False
    model.train()
    while step < cfg.max_steps:
        x, y, _, answer = (t.to(device) for t in stream.next_segment())
        out = model(x, state)
        has = y != IGNORE_INDEX
        opt.zero_grad(set_to_none=True)
        if bool(has.any()):  # a QA-mode segment without a question has nothing to learn from
            loss = F.cross_entropy(out.logits[has], y[has])
            loss.backward()
            clip_grad(model.parameters(), cfg.optim)
            opt.step()
            # A Hebbian head memorizes the targets the loss used: y is IGNORE_INDEX (skipped) elsewhere.
            model.memorize(out.hidden.detach(), y)
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        state = detach_state(out.state)
        hits += int((out.logits[answer].argmax(-1) == y[answer]).sum())
        answers += int(answer.sum())
        if out.fwm_norm is not None:
            norm_sum += float(out.fwm_norm.mean())
        step, n = step + 1, n + 1
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            tps = n * cfg.batch_size * cfg.seg_len / max(now - t_log, 1e-9)
            rec = {"train/loss": loss_sum / max(loss_n, 1), "train/acc": hits / max(answers, 1),
                   "train/tokens_per_s": tps, "epoch": stream.epoch}
            if out.fwm_norm is not None:
                rec["train/fwm_norm"] = norm_sum / n
            log.log(step, rec)
            bar.set_postfix(loss=f"{rec['train/loss']:.3f}", acc=f"{100 * rec['train/acc']:.1f}", tok_s=f"{tps:,.0f}")
            loss_sum, loss_n, hits, answers, norm_sum, n, t_log = 0.0, 0, 0, 0, 0.0, 0, now
        bar.update(1)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            validate()
            checkpoint("last")
        out_of_time = cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if step < cfg.max_steps and out_of_time:
            if cfg.eval_every and step % cfg.eval_every:
                validate()  # a time-budgeted slice ends with a validation, so best.pt reflects it
            checkpoint("last")
            stopped = True
            break
    if step == cfg.max_steps and not cfg.eval_every:
        checkpoint("last")
    bar.close()
    finished = step >= cfg.max_steps
    summary = {"step": step, "max_steps": cfg.max_steps, "finished": finished, "arch": cfg.model.arch,
               "mode": cfg.mode, "best_valid_mean": best if best > -math.inf else None,
               "train_tokens": step * cfg.batch_size * cfg.seg_len, "seconds_this_run": time.perf_counter() - t0,
               "epochs": stream.epoch, "notes": data.notes}
    if finished or cfg.test == "now":
        which = "best" if run.has_checkpoint("best") else "last"
        if which == "last" and not run.has_checkpoint("last"):
            checkpoint("last")
        weights, _ = run.load_checkpoint(which, map_location=device)
        model.load_state_dict(weights["model"])
        test = evaluate("test")
        record = {"arch": cfg.model.arch, "mode": cfg.mode, "per_task": test["per_task"], "mean": test["mean"],
                  "accuracy": test["accuracy"], "answers": test["answers"], "loss": test["loss"],
                  "step": int(weights["step"]), "checkpoint": which, "notes": data.notes}
        run.write_result(RESULTS, record)
        run.write_text(f"{RESULTS}.md", results_markdown(record))
        summary["test_mean"] = test["mean"]
        if cfg.progress:
            print(results_markdown(record))
    summary["stopped_early"] = stopped
    run.write_summary(summary)
    log.close()
    return summary


CONFIG = CatbAbIConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, CatbAbIConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/catbabi)")
    s = train(cfg)
    best = s["best_valid_mean"]
    print(f"{cfg.out}: step {s['step']}/{cfg.max_steps}, best validation accuracy "
          f"{'–' if best is None else f'{100 * best:.2f}%'}"
          + (f", test {100 * s['test_mean']:.2f}%" if "test_mean" in s else ""))
    return 0
