"""The language-model task: its settings, data, model, and a trained run loaded back.

``lm-train`` builds a run from these pieces; ``lm-eval``, ``lm-sweep`` and ``demo`` rebuild a
trained run's model and data from its folder with :func:`load_lm_run`, without importing the
training recipe::

    cfg = LMTrainConfig(data="ptb", model=LMConfig(head="hebbian"))
    corpus = load_data(cfg)                       # train/valid/test ids, vocabulary, counts
    model = build_model(cfg, len(corpus.vocab))
    ...
    run = load_lm_run("runs/ptb-hebb", "best")    # (cfg, model, corpus, checkpoint)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fastbind.data import Corpus, load_corpus
from fastbind.data.synthetic import SyntheticConfig
from fastbind.errors import BadSetting, UserError
from fastbind.layers.hebbian_adaptive import default_cutoffs
from fastbind.layers.hebbian_softmax import paper_settings
from fastbind.models.lstm_lm import LMConfig, LSTMLM
from fastbind.runs import RunFolder
from fastbind.training.buckets import DEFAULT_EDGES
from fastbind.training.config import alias, to_dict
from fastbind.training.optim import OptimConfig

__all__ = ["LMRun", "LMTrainConfig", "build_model", "load_data", "load_lm_run", "resolve_auto"]


@dataclass
class LMTrainConfig:
    """Settings of ``fastbind lm-train`` (every field is a ``key=value`` override).

    Saved as the run folder's ``config.json`` and in every checkpoint; the short keys
    ``arch``, ``head``, ``gamma``, ``T``, ``objective``, ``hidden``, ``emb_dim``, ``tied``, ``softmax``, ``cutoffs``,
    ``div_value`` and ``lr`` set the model's and the optimizer's fields of those names.
    ``gamma=auto`` / ``T=auto`` and the adaptive softmax's default ``cutoffs`` are resolved from
    the training counts (:func:`resolve_auto`) and saved as numbers.
    """

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
    patience: int = 0  # stop once validation has not improved for this many validations; 0 = off
    log_every: int = 10
    memorize_after: int = 0  # Hebbian: only count classes before this step, memorize after
    buckets: tuple[int, ...] = DEFAULT_EDGES
    tensorboard: bool | None = None  # None: when installed
    progress: bool = True
    model: LMConfig = alias("arch", "head", "gamma", "T", "objective", "hidden", "emb_dim", "tied", "softmax",
                            "cutoffs", "div_value", default_factory=LMConfig)
    optim: OptimConfig = alias("lr", default_factory=lambda: OptimConfig(name="adam", lr=2e-3, clip=1.0))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any work
        for name in ("batch_size", "bptt", "max_steps", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise BadSetting(name, "must be >= 1")
        for name in ("threads", "max_minutes", "stop_after", "eval_every", "eval_max_tokens", "patience",
                     "memorize_after"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if not 0 <= self.seed < 2**32:
            raise BadSetting("seed", "must lie in [0, 2**32)")
        if not self.data.strip():
            raise BadSetting("data", "must name a corpus (synthetic, wikitext-2, ptb, ...) or a folder")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise BadSetting("device", "must be auto, cpu, mps, cuda or cuda:N")
        if any(b < 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise BadSetting("buckets", "must be positive and strictly increasing, e.g. [100,1000,10000]")


def load_data(cfg: LMTrainConfig) -> Corpus:
    """The corpus ``cfg.data`` names (the synthetic one generated from ``cfg.synthetic`` and the seed)."""
    cache = Path(cfg.data_dir) if cfg.data_dir else None
    options = to_dict(cfg.synthetic) if cfg.data.strip().lower() == "synthetic" else {}
    return load_corpus(cfg.data, cache, seed=cfg.seed, **options)


def resolve_auto(cfg: LMTrainConfig, corpus: Corpus) -> LMTrainConfig:
    """``cfg`` with ``gamma=auto`` / ``T=auto`` replaced by numbers from the training counts.

    The paper's rule (:func:`fastbind.layers.hebbian_softmax.paper_settings`): γ = 1/N_min and
    T = N_min × epochs, with the epochs this run expects from its own step budget
    (``max_steps × batch_size × bptt`` training tokens over the training split's length).
    Settings that are numbers already are kept. An adaptive softmax without ``cutoffs`` gets the
    ranks that cover 80% and 95% of the training tokens (:func:`default_cutoffs`).
    """
    if cfg.model.softmax == "adaptive" and not cfg.model.cutoffs:
        cfg = replace(cfg, model=replace(cfg.model, cutoffs=tuple(default_cutoffs(corpus.train_counts))))
    if "auto" not in (cfg.model.gamma, cfg.model.T):
        return cfg
    epochs = cfg.max_steps * cfg.batch_size * cfg.bptt / max(len(corpus.train), 1)
    gamma, T = paper_settings(corpus.train_counts, epochs)
    model = replace(cfg.model, gamma=gamma if cfg.model.gamma == "auto" else cfg.model.gamma,
                    T=T if cfg.model.T == "auto" else cfg.model.T)
    return replace(cfg, model=model)


def build_model(cfg: LMTrainConfig, vocab_size: int) -> LSTMLM:
    """The (untrained) model of ``cfg`` for a vocabulary of ``vocab_size`` types."""
    return LSTMLM(replace(cfg.model, vocab_size=vocab_size))


class LMRun(NamedTuple):
    """A trained run loaded back (unpacks as ``cfg, model, corpus, checkpoint``)."""

    cfg: LMTrainConfig
    model: LSTMLM
    corpus: Corpus
    checkpoint: dict[str, Any]


def load_lm_run(run: RunFolder | str | os.PathLike[str], which: str = "best", device: str | torch.device = "cpu",
                data_dir: str | None = None) -> LMRun:
    """Rebuild a trained run's model (weights of ``<which>.pt``) and data from its folder.

    ``best`` falls back to ``last.pt`` for a run trained without validation.

    Args:
        run: The run folder.
        which: ``best`` or ``last``.
        device: Where the model goes.
        data_dir: Read the data from this cache folder instead of the run's.

    Raises:
        UserError: Not a run folder, no such checkpoint, a corrupt one, or one that does not
            match the run's settings or today's vocabulary of its data.
    """
    run = run if isinstance(run, RunFolder) else RunFolder(run, writer=False)
    cfg = run.load_config(LMTrainConfig)
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    ck, ck_path = run.load_checkpoint(which, fallback="last" if which == "best" else None)
    corpus = load_data(cfg)
    corpus.vocab.check_checkpoint(ck, ck_path, cfg.data)
    model = build_model(cfg, len(corpus.vocab))
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{ck_path} does not match the run's model settings ({str(e).splitlines()[0]})") from None
    return LMRun(cfg, model.to(device), corpus, ck)
