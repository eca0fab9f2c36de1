"""``fastbind lm-eval RUN_DIR [split=test] [key=value ...]``: perplexity by frequency bucket.

With ``cache.lambda=0.1`` and/or ``mbpa.lambda=0.04`` it also evaluates dynamic-evaluation
variants (Rae et al. 2018, Table 1): a neural cache and MbPA over the split's stream, mixed
with the model in probability space, reported as ``model``, ``+cache``, ``+mbpa`` and
``+cache+mbpa`` under ``"variants"`` (the top-level numbers stay the model's own).

Evaluates a trained run's checkpoint on one split as one contiguous stream (batch 1 by
default, recurrent state carried across chunks) and reports the perplexity overall and per
training-frequency bucket (``>10K``, ``1K-10K``, ``100-1K``, ``<100`` by default), as in
Table 2 of Rae et al. (2018). Prints a table and writes ``RUN_DIR/eval-<split>.json``::

    {"ppl": 124.5, "nll": 4.82, "tokens": 82430, "split": "test", "checkpoint": "best",
     "step": 9000, "buckets": [{"name": ">10K", "tokens": 51234, "ppl": 40.1}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.memory import MbPA, NeuralCache, mix_log_probs

from fastbind.errors import UserError
from fastbind.recipes.lm_train import LMTrainConfig, build_model, check_vocab, evaluate, load_data
from fastbind.training.buckets import BucketedNLL
from fastbind.training.checkpoint import atomic_write, load_checkpoint
from fastbind.training.config import from_dict, parse_cli


@dataclass
class CacheSettings:
    """Neural cache (Grave et al. 2016); on when ``lam > 0`` (the paper: 10000, 0.3, 0.1)."""

    size: int = 10000
    theta: float = 0.3
    lam: float = 0.0  # set on the command line as cache.lambda=...


@dataclass
class MbPASettings:
    """MbPA (Sprechmann et al. 2018); on when ``lam > 0`` (the paper: K 1024, 1 step, lr 0.3, l2 0.5, λ 0.04)."""

    lam: float = 0.0  # set on the command line as mbpa.lambda=...
    size: int = 0  # memory size; 0 = the cache size
    k: int = 1024
    steps: int = 1
    lr: float = 0.3
    l2: float = 0.5
    eps: float = 1e-3
    # Score MbPA on every n-th target only (the memory still sees every step): the +mbpa
    # variants are then estimated on that sample, and the model and +cache are also
    # reported on it ("model@sample", "+cache@sample") for a like-for-like comparison.
    stride: int = 1

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise UserError(f"mbpa.stride must be a positive integer, got {self.stride}")


SAMPLE = "@sample"  # suffix of the variants restricted to the MbPA-scored targets


@dataclass
class LMEvalConfig:
    """Settings of ``fastbind lm-eval`` (the run folder is the positional argument)."""

    split: Literal["valid", "test", "train"] = "test"
    checkpoint: Literal["best", "last"] = "best"
    batch_size: int = 1  # contiguous rows; 1 = the whole split as one stream
    bptt: int = 100  # chunk length (state is carried, so it only trades memory for speed)
    buckets: tuple[int, ...] | None = None  # bucket edges; None = the run's
    max_tokens: int = 0  # evaluate only the first N tokens (0 = all)
    device: str = "cpu"
    data_dir: str | None = None  # override the run's data cache folder
    progress: bool = True
    memory_chunk: int = 256  # queries per memory call (results do not depend on it)
    cache: CacheSettings = field(default_factory=CacheSettings)
    mbpa: MbPASettings = field(default_factory=MbPASettings)


def expand_lambda(argv: list[str]) -> list[str]:
    """``cache.lambda=`` / ``mbpa.lambda=`` -> the ``lam`` fields (``lambda`` is a Python keyword)."""
    return [a.replace(".lambda=", ".lam=", 1) if a.split("=", 1)[0].endswith(".lambda") else a for a in argv]


@torch.no_grad()
def collect_stream(model, tokens: torch.Tensor, *, bptt: int, device: torch.device, max_tokens: int = 0,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the model once over a split as one stream (batch 1, state carried).

    Returns the output layer's inputs ``H (N-1, d)``, the targets ``Y (N-1,)`` and the
    model's ``log p(y_t)`` ``LP (N-1,)``, so memories can be evaluated (and swept) on them
    without running the model again.
    """
    model.eval()
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    hs, ys, lps, state = [], [], [], None
    starts = range(0, tokens.numel() - 1, bptt)
    for s in tqdm(starts, desc="model", leave=False, disable=not progress):
        x = tokens[s : min(s + bptt, tokens.numel() - 1)].to(device)
        y = tokens[s + 1 : s + 1 + x.numel()].to(device)
        out = model(x.unsqueeze(0), state)
        state = out.state
        logp = F.log_softmax(out.logits[0].float(), dim=-1)  # (L, V)
        lps.append(logp.gather(1, y.unsqueeze(1)).squeeze(1))
        hs.append(out.hidden[0].float())
        ys.append(y)
    return torch.cat(hs), torch.cat(ys), torch.cat(lps)


def cache_log_probs(H: torch.Tensor, Y: torch.Tensor, s: CacheSettings, chunk: int = 256,
                    progress: bool = False) -> torch.Tensor:
    """``log p_cache(y_t)`` over a stream, the cache starting empty."""
    cache = NeuralCache(size=s.size, theta=s.theta)
    parts = [cache.log_prob(H[i : i + chunk], Y[i : i + chunk])
             for i in tqdm(range(0, Y.numel(), chunk), desc="cache", leave=False, disable=not progress)]
    return torch.cat(parts)


def mbpa_log_probs(H: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   s: MbPASettings, default_size: int, chunk: int = 256, progress: bool = False) -> torch.Tensor:
    """``log p_mbpa(y_t)`` over a stream, the memory starting empty; the weights are not changed.
    With ``s.stride > 1`` only targets ``0, stride, 2·stride, …`` are scored (the rest are NaN)."""
    mbpa = MbPA(size=s.size or default_size, k=s.k, steps=s.steps, lr=s.lr, l2=s.l2, eps=s.eps)
    W, b = weight.detach().float(), None if bias is None else bias.detach().float()
    pos = torch.arange(Y.numel(), device=Y.device)
    parts = [mbpa.log_prob(H[i : i + chunk], Y[i : i + chunk], W, b,
                           mask=None if s.stride == 1 else pos[i : i + chunk] % s.stride == 0)
             for i in tqdm(range(0, Y.numel(), chunk), desc="mbpa", leave=False, disable=not progress)]
    return torch.cat(parts)


def variant_log_probs(lp: torch.Tensor, lp_cache: torch.Tensor | None, lp_mbpa: torch.Tensor | None,
                      lam_cache: float, lam_mbpa: float) -> dict[str, torch.Tensor]:
    """The model alone and mixed with each memory, as log-probabilities of the targets."""
    out = {"model": lp}
    if lp_cache is not None:
        out["+cache"] = mix_log_probs(lp, (lam_cache, lp_cache))
    if lp_mbpa is not None:
        out["+mbpa"] = mix_log_probs(lp, (lam_mbpa, lp_mbpa))
    if lp_cache is not None and lp_mbpa is not None:
        out["+cache+mbpa"] = mix_log_probs(lp, (lam_cache, lp_cache), (lam_mbpa, lp_mbpa))
    return with_sample_variants(out, lp_mbpa)


def with_sample_variants(lps: dict[str, torch.Tensor], lp_mbpa: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """When MbPA scored only a sample of the targets (NaN elsewhere), add the model and
    +cache restricted to that sample (``name@sample``), so that every variant can be compared
    on the same targets. :func:`bucket_results` skips NaN targets."""
    if lp_mbpa is None or not bool(torch.isnan(lp_mbpa).any()):
        return lps
    skipped = torch.isnan(lp_mbpa)
    extra = {name + SAMPLE: lp.masked_fill(skipped, float("nan")) for name, lp in lps.items() if "mbpa" not in name}
    return {**lps, **extra}


def bucket_results(lps: dict[str, torch.Tensor], Y: torch.Tensor, train_counts: torch.Tensor,
                   edges: tuple[int, ...]) -> dict[str, dict]:
    """Perplexity overall and per frequency bucket of each variant's target log-probabilities."""
    out = {}
    for name, lp in lps.items():
        acc = BucketedNLL.from_counts(train_counts, edges)
        scored = ~torch.isnan(lp)  # a sampled variant (MbPA stride > 1) scores only some targets
        acc.add(-lp[scored].cpu(), Y[scored].cpu())
        out[name] = acc.result()
    return out


def load_run(run_dir: Path, which: str = "best", device: str = "cpu", data_dir: str | None = None):
    """``(train_cfg, model, corpus, checkpoint)`` of a run folder; checks the vocabulary."""
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json)")
    try:
        train_cfg = from_dict(LMTrainConfig, json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e.msg})") from None
    if data_dir is not None:
        train_cfg = replace(train_cfg, data_dir=data_dir)
    ck_path = run_dir / f"{which}.pt"
    if not ck_path.is_file() and which == "best" and (run_dir / "last.pt").is_file():
        ck_path = run_dir / "last.pt"  # a run without validation has no best.pt
    if not ck_path.is_file():
        raise UserError(f"{run_dir} has no checkpoint {which}.pt")
    ck = load_checkpoint(ck_path)
    corpus = load_data(train_cfg)
    check_vocab(ck, ck_path, corpus, train_cfg.data)
    model = build_model(train_cfg, len(corpus.vocab))
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{ck_path} does not match the run's model settings ({str(e).splitlines()[0]})") from None
    return train_cfg, model.to(device), corpus, ck


def format_table(result: dict, title: str) -> str:
    lines = [title, f"  {'bucket':<10} {'tokens':>10} {'ppl':>12}"]
    for b in result["buckets"]:
        ppl = "–" if b["ppl"] is None else f"{b['ppl']:,.2f}"
        lines.append(f"  {b['name']:<10} {b['tokens']:>10,} {ppl:>12}")
    lines.append(f"  {'all':<10} {result['tokens']:>10,} {result['ppl']:>12,.2f}")
    return "\n".join(lines)


def run_eval(run_dir: Path, cfg: LMEvalConfig) -> dict:
    train_cfg, model, corpus, ck = load_run(run_dir, cfg.checkpoint, cfg.device, cfg.data_dir)
    edges = tuple(cfg.buckets) if cfg.buckets is not None else tuple(train_cfg.buckets)
    tokens = getattr(corpus, cfg.split)
    use_cache, use_mbpa = cfg.cache.lam > 0, cfg.mbpa.lam > 0
    if use_cache or use_mbpa:
        if cfg.batch_size != 1:
            raise UserError("cache/MbPA evaluation reads the split as one stream: use batch_size=1")
        H, Y, LP = collect_stream(model, tokens, bptt=cfg.bptt, device=torch.device(cfg.device),
                                  max_tokens=cfg.max_tokens, progress=cfg.progress)
        lp_c = cache_log_probs(H, Y, cfg.cache, cfg.memory_chunk, cfg.progress) if use_cache else None
        W, b = model.output_layer()
        lp_m = (mbpa_log_probs(H, Y, W, b, cfg.mbpa, cfg.cache.size, cfg.memory_chunk, cfg.progress)
                if use_mbpa else None)
        variants = bucket_results(variant_log_probs(LP, lp_c, lp_m, cfg.cache.lam, cfg.mbpa.lam), Y,
                                  corpus.train_counts, edges)
        result = dict(variants["model"])
        result["variants"] = variants
        result["settings"] = {"cache": vars(cfg.cache) if use_cache else None, "mbpa": vars(cfg.mbpa) if use_mbpa else None}
    else:
        acc = BucketedNLL.from_counts(corpus.train_counts, edges)
        result = evaluate(model, tokens, batch_size=cfg.batch_size, bptt=cfg.bptt, acc=acc,
                          device=torch.device(cfg.device), max_tokens=cfg.max_tokens, progress=cfg.progress)
    result.update({"split": cfg.split, "checkpoint": cfg.checkpoint, "step": int(ck["step"]),
                   "edges": list(edges), "head": train_cfg.model.head, "data": train_cfg.data})
    if corpus.entropy and cfg.split in corpus.entropy and not cfg.max_tokens:
        result["generator_entropy_nats"] = corpus.entropy[cfg.split]
    out = run_dir / f"eval-{cfg.split}.json"
    atomic_write(out, lambda fh: fh.write(json.dumps(result, indent=2).encode()))
    result["path"] = str(out)
    return result


CONFIG = LMEvalConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(expand_lambda(argv), LMEvalConfig)
    if len(rest) != 1:
        raise UserError("give exactly one run folder: fastbind lm-eval RUN_DIR [split=test] [key=value ...]")
    run_dir = Path(rest[0])
    result = run_eval(run_dir, cfg)
    title = f"{run_dir} ({result['head']}, step {result['step']}) — {cfg.split} perplexity"
    for name, v in result.get("variants", {"model": result}).items():
        print(format_table(v, title if name == "model" else f"{name}:"))
    print(f"wrote {result['path']}")
    return 0


__all__ = ["LMEvalConfig", "format_table", "load_run", "run_eval"]
