"""The language-model task: its settings, data, model, training, and a trained run evaluated.

The recipes ``lm-train``, ``lm-eval``, ``lm-sweep`` and ``demo`` are command lines over these
functions (a recipe imports no other recipe)::

    cfg = LMTrainConfig(data="ptb", model=ModelConfig(head="hebbian"), lstm=LSTMConfig(hidden=512))
    corpus = load_data(cfg)                       # train/valid/test ids, vocabulary, counts
    model = build_model(cfg, len(corpus.vocab))
    train(cfg)                                    # a run folder at cfg.out
    run = load_lm_run("runs/ptb-hebb", "best")    # (cfg, model, corpus, checkpoint)
    evaluate_run("runs/ptb-hebb", LMEvalConfig(cache=CacheSettings(lam=0.1)))   # eval-test.json
    sweep_run("runs/ptb-hebb", SweepConfig())     # sweep-valid.json, then eval-test.json
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from tqdm.auto import tqdm

from fastbind.buckets import DEFAULT_EDGES, BucketedNLL
from fastbind.data import Corpus, load_corpus
from fastbind.data.stream import ChunkStream
from fastbind.data.synthetic import SyntheticConfig
from fastbind.errors import BadSetting, UserError
from fastbind.evaluation import (
    MEMORIES, CacheSettings, KNNLMSettings, MbPASettings, bucket_results, cache_log_probs, check_sample_strides,
    collect_stream, evaluate, knnlm_log_probs, mbpa_log_probs, stream_parts, variant_log_probs, variant_settings,
)
from fastbind.evaluation.dyneval import DynEvalSettings, dyneval_stream, gradient_statistics, training_batches
from fastbind.evaluation.sweep import (
    SweepConfig, best_row, apply_best, best_parts, grid_search, memory_log_probs, mixture_rows, row_parts, sweep_markdown,
)
from fastbind.layers.hebbian_adaptive import default_cutoffs
from fastbind.layers.hebbian_softmax import paper_settings
from fastbind.models.language_model import LanguageModel, detach_state
from fastbind.models.registry import (
    MODEL_RENAMED, FWMConfig, LSTMConfig, ModelConfig, TransformerConfig, build_lm, default_bptt,
)
from fastbind.runs import RunFolder, check_resume, eval_record
from fastbind.training.checkpoint import gather_rng_states, set_rng_state
from fastbind.training.config import alias, to_dict
from fastbind.training.distributed import barrier, check_device, cleanup, init_distributed, replicas_identical, resolve_device
from fastbind.training.optim import OptimConfig, build_optimizer, build_scheduler, clip_grad
from fastbind.training.seed import seed_everything

__all__ = ["LMEvalConfig", "LMRun", "LMTrainConfig", "apply_to_split", "build_model", "evaluate_run", "load_data",
           "load_lm_run", "resolve_auto", "sweep_run", "train"]


@dataclass
class LMTrainConfig:
    """Settings of ``fastbind lm-train`` (every field is a ``key=value`` override).

    Saved as the run folder's ``config.json`` and in every checkpoint. ``model`` holds what every
    model family shares, ``lstm``, ``fwm`` and ``transformer`` the families' own settings (``model.arch`` picks the
    family, :mod:`fastbind.models.registry`). The short keys ``arch``, ``head``, ``gamma``, ``T``,
    ``objective``, ``emb_dim``, ``tied``, ``softmax``, ``cutoffs``, ``div_value``, ``hidden`` and ``lr``
    set the fields of those names in ``model``, ``lstm`` and ``optim``; the keys of the single
    ``model`` section of earlier versions (``model.hidden``, ``model.fwm_size`` ...) still work.
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
    bptt: int = 0  # training chunk length (a transformer's training context); 0 = the arch's: 35, transformer.context
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
    model: ModelConfig = alias("arch", "head", "gamma", "T", "objective", "emb_dim", "tied", "softmax", "cutoffs",
                               "div_value", default_factory=ModelConfig)
    lstm: LSTMConfig = alias("hidden", default_factory=LSTMConfig)
    fwm: FWMConfig = field(default_factory=FWMConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    optim: OptimConfig = alias("lr", default_factory=lambda: OptimConfig(name="adam", lr=2e-3, clip=1.0))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    RENAMED: ClassVar[dict[str, str]] = MODEL_RENAMED

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any work
        for name in ("batch_size", "max_steps", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise BadSetting(name, "must be >= 1")
        for name in ("bptt", "threads", "max_minutes", "stop_after", "eval_every", "eval_max_tokens", "patience",
                     "memorize_after"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, "must be >= 0")
        if not 0 <= self.seed < 2**32:
            raise BadSetting("seed", "must lie in [0, 2**32)")
        if not self.data.strip():
            raise BadSetting("data", "must name a corpus (synthetic, wikitext-2, ptb, ...) or a folder")
        check_device(self.device)
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
    ranks that cover 80% and 95% of the training tokens (:func:`default_cutoffs`), and
    ``bptt=0`` the family's training context (:func:`~fastbind.models.registry.default_bptt`).
    """
    if not cfg.bptt:
        cfg = replace(cfg, bptt=default_bptt(cfg))
    if cfg.model.softmax == "adaptive" and not cfg.model.cutoffs:
        cfg = replace(cfg, model=replace(cfg.model, cutoffs=tuple(default_cutoffs(corpus.train_counts))))
    if "auto" not in (cfg.model.gamma, cfg.model.T):
        return cfg
    epochs = cfg.max_steps * cfg.batch_size * cfg.bptt / max(len(corpus.train), 1)
    gamma, T = paper_settings(corpus.train_counts, epochs)
    model = replace(cfg.model, gamma=gamma if cfg.model.gamma == "auto" else cfg.model.gamma,
                    T=T if cfg.model.T == "auto" else cfg.model.T)
    return replace(cfg, model=model)


def check_train(cfg: LMTrainConfig) -> None:
    """Settings of ``lm-train`` that do not go together (after :func:`resolve_auto`): one-line errors."""
    if cfg.model.arch == "transformer":
        if cfg.carry_state:
            raise UserError("carry_state=true needs a recurrent model (arch=lstm or fwm): a transformer has no "
                            "state across chunks")
        if cfg.bptt > cfg.transformer.context:
            raise UserError(f"bptt={cfg.bptt} is longer than the transformer's context "
                            f"(transformer.context={cfg.transformer.context})")


def reading(train_cfg: LMTrainConfig, model: LanguageModel, window: int = 0, stride: int = 0
            ) -> tuple[int, int, dict]:
    """How evaluation reads a split for this run: ``(window, stride, record)``.

    A transformer slides a window over the text (:func:`~fastbind.evaluation.window_spans`):
    ``window`` 0 is the run's training context (``bptt``), ``stride`` 0 half the window; every
    target after the first ``window − stride`` is scored with at least ``window − stride``
    earlier tokens, which ``record`` states (``{"window", "stride", "min_context"}``; empty for
    a recurrent model, which carries its state instead).

    Raises:
        UserError: a window longer than the model's context, or a stride outside [1, window].
    """
    if model.recurrent:
        if window or stride:
            raise UserError("window/stride apply to arch=transformer; a recurrent model carries its state "
                            "across chunks (set bptt)")
        return 0, 0, {}
    window = window or train_cfg.bptt
    stride = stride or max(1, window // 2)
    if window > model.context:
        raise UserError(f"window={window} is longer than the model's context ({model.context} tokens)")
    if stride > window:
        raise UserError(f"stride={stride} must be <= window={window} (every target is scored once)")
    return window, stride, {"window": window, "stride": stride, "min_context": window - stride}


def build_model(cfg: LMTrainConfig, vocab_size: int) -> LanguageModel:
    """The (untrained) model of ``cfg`` (the family ``cfg.model.arch``) for a vocabulary of ``vocab_size`` types."""
    return build_lm(cfg, vocab_size)


class LMRun(NamedTuple):
    """A trained run loaded back (unpacks as ``cfg, model, corpus, checkpoint``)."""

    cfg: LMTrainConfig
    model: LanguageModel
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


@dataclass
class LMEvalConfig:
    """Settings of ``fastbind lm-eval``: a run folder (the positional argument), or with
    ``model=PATH text=FILE out=DIR`` a local Hugging Face model folder (:func:`fastbind.hf.evaluate_model`)."""

    model: str = ""  # a Hugging Face causal LM folder to evaluate instead of a run (needs fastbind[hf])
    text: str = ""  # model=: the text to evaluate, a file or a corpus name (its `split`)
    train: str = ""  # model=: a training text (file or corpus) for buckets, the kNN-LM and dyneval
    out: str = ""  # model=: folder for the record and the datastore (never the model's)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # model=: weights' dtype (auto: as saved)
    bos: bool = True  # model=: start the stream with the tokenizer's BOS token (if it has one)
    split: Literal["valid", "test", "train"] = "test"
    checkpoint: Literal["best", "last"] = "best"
    batch_size: int = 1  # contiguous rows; 1 = the whole split as one stream
    bptt: int = 100  # chunk length (state is carried, so it only trades memory for speed)
    window: int = 0  # arch=transformer: tokens per forward; 0 = the run's training context (bptt)
    stride: int = 0  # arch=transformer: new targets per window (each sees >= window - stride context); 0 = window/2
    buckets: tuple[int, ...] | None = None  # bucket edges; None = the run's
    max_tokens: int = 0  # evaluate only the first N tokens (0 = all)
    device: str = "cpu"
    data_dir: str | None = None  # override the run's data cache folder
    progress: bool = True
    memory_chunk: int = 256  # queries per memory call (results do not depend on it)
    cache: CacheSettings = field(default_factory=CacheSettings)
    mbpa: MbPASettings = field(default_factory=MbPASettings)
    knnlm: KNNLMSettings = field(default_factory=KNNLMSettings)
    dyneval: DynEvalSettings = field(default_factory=DynEvalSettings)

    def __post_init__(self) -> None:  # bad settings fail before the run is loaded
        for name in ("batch_size", "bptt", "memory_chunk"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("window", "stride"):
            if getattr(self, name) < 0:
                raise BadSetting(name, f"must be >= 1, or 0 for the default, got {getattr(self, name)}")
        if self.max_tokens < 0:
            raise BadSetting("max_tokens", f"must be >= 0 (0 = all), got {self.max_tokens}")
        if self.buckets is not None and (not self.buckets or list(self.buckets) != sorted(set(self.buckets))
                                         or self.buckets[0] < 1):
            raise BadSetting("buckets", f"must be strictly increasing counts >= 1, got {list(self.buckets)}")
        check_device(self.device)
        check_memories(self.cache, self.mbpa, self.knnlm)
        if self.model:
            for name in ("text", "out"):
                if not getattr(self, name).strip():
                    raise BadSetting(name, f"model= needs {name}= (e.g. model=PATH text=test.txt out=runs/eval)")
            if self.batch_size != 1:
                raise BadSetting("batch_size", "a Hugging Face model is read as one stream: use batch_size=1")
        else:
            for name in ("text", "train", "out"):
                if getattr(self, name):
                    raise BadSetting(name, "goes with model=PATH (a Hugging Face model); a run is evaluated on "
                                           "its own data")
        if self.knnlm.lam > 0 and self.split == "train":
            raise UserError("knnlm on split=train finds every query in its own datastore: evaluate valid or test")
        if (self.cache.lam > 0 or self.mbpa.lam > 0 or self.knnlm.lam > 0 or self.dyneval.on) and self.batch_size != 1:
            raise BadSetting("batch_size", "the memories and dynamic evaluation read the split as one stream: "
                                           "use batch_size=1")


def check_memories(cache: CacheSettings, mbpa: MbPASettings, knnlm: KNNLMSettings) -> None:
    """The memories' settings that span several keys: one-line errors."""
    lams = {"cache": cache.lam, "mbpa": mbpa.lam, "knnlm": knnlm.lam}
    on = {k: v for k, v in lams.items() if v > 0}
    if sum(on.values()) >= 1:  # several keys: no single one to name as typed
        raise UserError(f"{' + '.join(f'{k}.lambda' for k in on)} must be < 1 (the model keeps the rest), got "
                        f"{' + '.join(str(v) for v in on.values())}")
    if mbpa.lam > 0 and knnlm.lam > 0:
        check_sample_strides(mbpa.stride, knnlm.stride)


def evaluate_run(run_dir: str | os.PathLike[str], cfg: LMEvalConfig) -> dict:
    """Evaluate a run on ``cfg.split``, with the memories ``cfg`` switches on; writes and returns
    its :func:`~fastbind.runs.eval_record` (plus ``path``)."""
    run = RunFolder(run_dir)
    train_cfg, model, corpus, ck = load_lm_run(run, cfg.checkpoint, resolve_device(cfg.device), cfg.data_dir)
    edges = tuple(cfg.buckets) if cfg.buckets is not None else tuple(train_cfg.buckets)
    window, stride, context = reading(train_cfg, model, cfg.window, cfg.stride)
    device = resolve_device(cfg.device)
    lm = LMRun(train_cfg, model, corpus, ck)
    variants, settings = evaluate_tokens(
        model, getattr(corpus, cfg.split), corpus.train_counts, edges, cfg, window=window, stride=stride,
        device=device, context=context,
        store=lambda s: knnlm_store(run, lm, s, window, stride, device, cfg.progress),
        statistics=lambda s: dyneval_statistics(lm, s, window, device, cfg.progress))
    context.update({"split": cfg.split, "checkpoint": cfg.checkpoint, "step": int(ck["step"]),
                    "edges": list(edges), "head": train_cfg.model.head, "data": train_cfg.data})
    if corpus.entropy and cfg.split in corpus.entropy and not cfg.max_tokens:
        context["generator_entropy_nats"] = corpus.entropy[cfg.split]
    result = eval_record(variants, variant_settings=settings, **context)
    result["path"] = str(run.write_eval(result))
    return result


def evaluate_tokens(model: Any, tokens: torch.Tensor, train_counts: torch.Tensor, edges: tuple[int, ...],
                    cfg: LMEvalConfig, *, window: int, stride: int, device: torch.device, context: dict,
                    store: Any, statistics: Any) -> tuple[dict[str, dict], dict[str, dict | None]]:
    """The evaluation of ``lm-eval`` on a token stream: the model alone, or with the memories and
    dynamic evaluation ``cfg`` switches on (each variant's bucketed result, and its settings).

    ``model`` is a :class:`~fastbind.models.language_model.LanguageModel` or anything that
    answers like one (:class:`fastbind.hf.HFCausalLM`). ``store(knnlm_settings)`` gives the
    kNN-LM's datastore and ``statistics(dyneval_settings)`` dynamic evaluation's gradient
    statistics, called only when those are on; ``context`` receives the kNN-LM's recall under
    ``backend=faiss``. Buckets are by ``train_counts`` at ``edges``.
    """
    cache = cfg.cache if cfg.cache.lam > 0 else None
    mbpa = replace(cfg.mbpa, size=cfg.mbpa.size or cfg.cache.size) if cfg.mbpa.lam > 0 else None
    knnlm = cfg.knnlm if cfg.knnlm.lam > 0 else None
    dyneval = dyneval_reading(model, cfg.dyneval, stride, "dyneval.segment") if cfg.dyneval.on else None
    if mbpa is not None and model.is_adaptive:
        raise UserError("MbPA adapts a full softmax output layer; this run has softmax=adaptive (use the cache alone)")
    if not any(m is not None for m in (cache, mbpa, knnlm, dyneval)):
        acc = BucketedNLL.from_counts(train_counts, edges)
        result = evaluate(model, tokens, batch_size=cfg.batch_size, bptt=cfg.bptt, acc=acc, device=device,
                          max_tokens=cfg.max_tokens, progress=cfg.progress, window=window, stride=stride)
        return {"model": result}, {}
    found_store = store(knnlm) if knnlm else None
    streams = {False: collect_stream(model, tokens, bptt=cfg.bptt, device=device, max_tokens=cfg.max_tokens,
                                     progress=cfg.progress, window=window, stride=stride)}
    if dyneval is not None:
        streams[True] = dyneval_stream(model, tokens, dyneval, statistics(dyneval), device=device,
                                       max_tokens=cfg.max_tokens, progress=cfg.progress, window=window, stride=stride)
    if knnlm is not None and knnlm.backend == "faiss":
        context.update(knnlm_recall(found_store, streams[False][0], knnlm))
    lps, settings = {}, {}
    for dyn, (H, Y, LP) in streams.items():
        found, made = memory_variants(H, Y, LP, model, cache=cache, mbpa=mbpa, knnlm=knnlm, store=found_store,
                                      dyneval=dyneval if dyn else None, chunk=cfg.memory_chunk, progress=cfg.progress)
        lps.update(found)
        settings.update(made)
    return bucket_results(lps, Y, train_counts, edges), settings


def memory_variants(H: torch.Tensor, Y: torch.Tensor, LP: torch.Tensor, model: LanguageModel, *,
                    cache: CacheSettings | None = None, mbpa: MbPASettings | None = None,
                    knnlm: KNNLMSettings | None = None, store: Any = None, dyneval: DynEvalSettings | None = None,
                    chunk: int = 256, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, dict | None]]:
    """Every variant of one stream (``H, Y, LP`` of :func:`collect_stream`, or of
    :func:`dyneval_stream` when ``dyneval`` names its settings) with the memories given: their
    target log-probabilities and settings by variant name (``+dyneval`` prefixed to each name
    and its settings when given).

    MbPA adapts the *trained* output layer also over a dynamically evaluated stream (its
    queries are the adapted model's ``h``). ``store`` is the kNN-LM's datastore (:func:`knnlm_store`).
    """
    given: dict[str, Any] = {"cache": cache, "mbpa": mbpa, "knnlm": knnlm}
    memory_lps: dict[str, tuple[float, torch.Tensor]] = {}
    if cache is not None:
        memory_lps["cache"] = (cache.lam, cache_log_probs(H, Y, cache, chunk, progress))
    if mbpa is not None:
        W, b = model.output_layer()
        memory_lps["mbpa"] = (mbpa.lam, mbpa_log_probs(H, Y, W, b, mbpa, mbpa.size, chunk, progress))
    if knnlm is not None:
        memory_lps["knnlm"] = (knnlm.lam, knnlm_log_probs(H, Y, store, knnlm, progress=progress))
    lps = variant_log_probs(LP, **memory_lps, dyneval=dyneval is not None)
    settings = {}
    for name in lps:
        parts = name.split("@", 1)[0].split("+")[1:]
        settings[name.split("@", 1)[0]] = variant_settings(**{m: given[m] for m in MEMORIES if m in parts},
                                                           dyneval=dyneval)
    return lps, settings


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of a model's state (names and bytes, any dtype): what a datastore's keys came from."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def knnlm_store(run: RunFolder, lm: LMRun, s: KNNLMSettings, window: int, stride: int, device: torch.device,
                progress: bool = False) -> Any:
    """The run's kNN-LM datastore: ``(h_t, y_{t+1})`` of every target of the training split, read
    as evaluation reads a split (a transformer in the same windows), in
    ``<run>/knnlm-step<N>-<dtype>/`` (:class:`~fastbind.memory.KNNLM`, memory-mapped).

    Built on first use and reused while its checkpoint step, weights (:func:`weights_digest`),
    vocabulary and reading match; with ``backend=faiss`` its IVF index is built once beside it.
    """
    _, model, corpus, ck = lm
    source = {"step": int(ck["step"]), "weights": weights_digest(model), "vocab_digest": ck.get("vocab_digest"),
              "tokens": int(corpus.train.numel()), "window": window, "stride": stride}
    return datastore(run.path / f"knnlm-step{int(ck['step'])}-{s.dtype}", model, corpus.train, source, s, window,
                     stride, device, progress)


def datastore(path: Path, model: Any, train: torch.Tensor, source: dict, s: KNNLMSettings, window: int, stride: int,
              device: torch.device, progress: bool = False) -> Any:
    """The kNN-LM datastore at ``path`` of ``model`` over the token stream ``train``: loaded when
    its ``source`` record equals ``source``, (re)built otherwise; with ``backend=faiss`` its IVF
    index is built once beside it."""
    from fastbind.memory.knn_lm import KNNLM  # noqa: PLC0415 — numpy-backed module, loaded on use

    try:
        store = KNNLM.load(path)
        if store.source != source:
            store = None
    except (ValueError, FileNotFoundError):
        store = None
    if store is None:
        n = train.numel() - 1
        with KNNLM.build(path, n, model.d_out, s.dtype, source=source, overwrite=True) as writer:
            for h, y, _ in stream_parts(model, train, bptt=100, device=device, window=window, stride=stride,
                                        progress=progress, desc="datastore"):
                writer.add(h, y)
        store = KNNLM.load(path)
    if s.backend == "faiss":
        store.build_index(s.nlist)
    return store


def knnlm_recall(store: Any, H: torch.Tensor, s: KNNLMSettings, queries: int = 256) -> dict:
    """Recall@k of the FAISS index against exact search, on the first ``queries`` of the queries
    ``H[::s.stride]`` (the share of the exact ``k`` nearest entries the index returns), for the
    evaluation record: ``{"knnlm_recall_at_k", "knnlm_recall_queries"}``."""
    from fastbind.memory.knn_lm import recall_at_k  # noqa: PLC0415 — numpy-backed module, loaded on use

    q = H[:: s.stride][:queries]
    _, _, approx = store.search(q, s.k, backend="faiss", nprobe=s.nprobe, return_index=True)
    _, _, exact = store.search(q, s.k, backend="exact", return_index=True)
    return {"knnlm_recall_at_k": recall_at_k(approx, exact), "knnlm_recall_queries": int(q.shape[0])}


def dyneval_reading(model: LanguageModel, s: DynEvalSettings, stride: int, key: str) -> DynEvalSettings:
    """``s`` with its segment made concrete for ``model`` read at ``stride``
    (:meth:`~fastbind.evaluation.dyneval.DynEvalSettings.resolve_segment`); a transformer's
    segment other than its stride is a one-line error naming ``key`` as the user typed it."""
    try:
        return s.resolve_segment(model.recurrent, stride)
    except ValueError:
        raise UserError(f"{key}={s.segment}: a transformer adapts once per window of its reading, so its segment "
                        f"is the reading's stride ({stride}); set stride={s.segment} instead") from None


def dyneval_statistics(lm: LMRun, s: DynEvalSettings, window: int, device: torch.device,
                       progress: bool = False) -> dict[str, torch.Tensor]:
    """Dynamic evaluation's gradient statistics over the run's training split
    (:func:`training_statistics`)."""
    return training_statistics(lm.model, lm.corpus.train, s, window, device, progress)


def training_statistics(model: Any, train: torch.Tensor, s: DynEvalSettings, window: int, device: torch.device,
                        progress: bool = False) -> dict[str, torch.Tensor]:
    """Dynamic evaluation's gradient statistics over a training stream (its first
    ``s.stats_tokens``), each batch's gradient taken as evaluation takes its steps: a recurrent
    model in the authors' batches (``stats_batch`` rows × ``segment`` tokens, state carried), a
    transformer in ``stats_batch`` rows of ``window`` tokens whose loss is the mean over each
    row's last ``segment`` targets (the others ``-100``), as a window of dynamic evaluation
    scores ``segment`` new targets with the rest as context. ``s`` has its segment made concrete
    (:func:`dyneval_reading`)."""
    if model.recurrent:
        return gradient_statistics(model, training_batches(train, s), device=device, progress=progress)
    tokens = train[: s.stats_tokens + 1] if s.stats_tokens else train
    chunks = ChunkStream(tokens, s.stats_batch, window)
    batches = [(x, last_targets(y, s.segment)) for x, y in chunks]
    return gradient_statistics(model, batches, device=device, progress=progress)


def last_targets(y: torch.Tensor, n: int) -> torch.Tensor:
    """``y (B, L)`` with every target but the last ``n`` of each row set to ``-100`` (ignored)."""
    keep = torch.arange(y.shape[1], device=y.device) >= y.shape[1] - n
    return y.masked_fill(~keep, -100)


def sweep_run(run_dir: str | os.PathLike[str], cfg: SweepConfig) -> dict:
    """Grid-search the memories on ``cfg.split`` (:func:`~fastbind.evaluation.sweep.grid_search`),
    each alone, then (:func:`~fastbind.evaluation.sweep.mixture_rows`) the λs of their
    combinations, with dynamic evaluation tuned on the split's first ``dyneval_max_tokens``
    tokens when ``cfg.dyneval``; writes ``sweep-<split>[-<tag>].json``/``.md`` and, with
    ``apply_test``, the test evaluation (under ``"test"``, see :func:`apply_to_split`); returns
    the sweep result."""
    run = RunFolder(run_dir)
    device = resolve_device(cfg.device)
    lm = load_lm_run(run, cfg.checkpoint, device)
    _, model, corpus, ck = lm
    if cfg.mbpa and model.is_adaptive:
        raise UserError("MbPA adapts a full softmax output layer; this run has softmax=adaptive: sweep the cache "
                        "alone with mbpa=false")
    window, stride, reads = reading(lm.cfg, model, cfg.window, cfg.stride)
    tokens = getattr(corpus, cfg.split)
    H, Y, LP = collect_stream(model, tokens, bptt=cfg.bptt, device=device,
                              max_tokens=cfg.max_tokens, progress=cfg.progress, window=window, stride=stride)
    W, b = model.output_layer() if cfg.mbpa else (None, None)
    store = knnlm_store(run, lm, cfg.knnlm_settings(1, 1.0), window, stride, device, cfg.progress) if cfg.knnlm else None
    memo: dict = {}  # the grid's memory passes, reused by the combinations
    result = {"split": cfg.split, "step": int(ck["step"]), **reads, **grid_search(H, Y, LP, W, b, cfg, store, memo)}
    parts = best_parts(result)
    grids = mixture_rows(LP, parts, memory_log_probs(H, Y, parts, W, b, store, cfg, memo), cfg.mix_lambdas)
    del memo
    stats = None
    if cfg.dyneval:
        def settings(lr: float, decay: float) -> DynEvalSettings:
            return dyneval_reading(model, cfg.dyneval_settings(lr, decay), stride, "dyneval_segment")

        stats = dyneval_statistics(lm, settings(1.0, 0.0), window, device, cfg.progress)
        n = min(Y.numel(), cfg.dyneval_max_tokens or Y.numel())
        rows = []
        for lr, decay in tqdm(list(itertools.product(cfg.dyneval_lrs, cfg.dyneval_decays)), desc="dyneval sweep",
                              disable=not cfg.progress):
            s = settings(lr, decay)
            _, _, lp = dyneval_stream(model, tokens[: n + 1], s, stats, device=device, window=window, stride=stride)
            rows.append({"dyneval": s.record(), "ppl": math.exp(float(-lp.double().mean())), "tokens": n})
        best = row_parts(best_row(rows))["dyneval"]
        result.update({"best_dyneval": best_row(rows), "dyneval_tokens": n,
                       "model_ppl_dyneval_tokens": math.exp(float(-LP[:n].double().mean()))})
        result["grid"]["dyneval"] = rows
        Hd, Yd, LPd = dyneval_stream(model, tokens, best, stats, device=device, max_tokens=cfg.max_tokens,
                                     progress=cfg.progress, window=window, stride=stride)
        grids.update(mixture_rows(LPd, parts, memory_log_probs(Hd, Yd, parts, W, b, store, cfg), cfg.mix_lambdas,
                                  dyneval=best))
    result["best_mixtures"] = {name: best_row(rows) for name, rows in grids.items()}
    result["grid"]["mixtures"] = grids
    name = f"sweep-{cfg.split}-{cfg.tag}" if cfg.tag else f"sweep-{cfg.split}"
    run.write_result(name, result)
    md = sweep_markdown(result)
    run.write_text(f"{name}.md", md)
    result["markdown"] = md
    if cfg.apply_test:
        result["test"] = apply_to_split(run, lm, result, cfg, "test", store=store, stats=stats)
    return result


def apply_to_split(run: RunFolder, lm: LMRun, result: dict, cfg: SweepConfig, split: str = "test", *,
                   store: Any = None, stats: dict[str, torch.Tensor] | None = None) -> dict:
    """Evaluate each variant with its own best settings of a sweep ``result`` on ``split``;
    writes ``eval-<split>[-<tag>].json`` (the settings' ``tuned_on`` split in its context).

    ``lm`` is the run as the sweep loaded it (model, corpus and checkpoint are not read again),
    ``store`` its kNN-LM datastore and ``stats`` its dynamic-evaluation statistics (both built
    here when the result needs them and they are not given).
    """
    train_cfg, model, corpus, ck = lm
    device = resolve_device(cfg.device)
    window, stride, reads = reading(train_cfg, model, cfg.window, cfg.stride)
    tokens = getattr(corpus, split)
    H, Y, LP = collect_stream(model, tokens, bptt=cfg.bptt, device=device,
                              max_tokens=cfg.test_max_tokens, progress=cfg.progress, window=window, stride=stride)
    W, b = model.output_layer() if cfg.mbpa else (None, None)
    if store is None and (result.get("best_knnlm") or any("knnlm" in n for n in result.get("best_mixtures") or {})):
        store = knnlm_store(run, lm, cfg.knnlm_settings(1, 1.0), window, stride, device, cfg.progress)
    dyn = None
    if result.get("best_dyneval"):
        best = dyneval_reading(model, row_parts(result["best_dyneval"])["dyneval"], stride, "dyneval_segment")
        stats = stats if stats is not None else dyneval_statistics(lm, best, window, device, cfg.progress)
        dyn = dyneval_stream(model, tokens, best, stats, device=device, max_tokens=cfg.test_max_tokens,
                             progress=cfg.progress, window=window, stride=stride)
    lps, settings = apply_best(H, Y, LP, W, b, result, cfg, store=store, dyneval_stream=dyn)
    results = bucket_results(lps, Y, corpus.train_counts, tuple(train_cfg.buckets))
    out = eval_record(results, variant_settings=settings, split=split, checkpoint=cfg.checkpoint,
                      step=int(ck["step"]), edges=list(train_cfg.buckets), head=train_cfg.model.head,
                      data=train_cfg.data, tuned_on=cfg.split, mbpa_stride=cfg.test_mbpa_stride,
                      knnlm_stride=cfg.test_knnlm_stride if store is not None else None, **reads)
    out["path"] = str(run.write_eval(out, tag=cfg.tag))
    return out


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
    check_train(cfg)
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
    run.save_config(cfg, recipe="lm-train")
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
                       device=device, max_tokens=cfg.eval_max_tokens, info=info, window=cfg.bptt)
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
    barrier()  # every rank has finished its writes before the group goes
    cleanup()
    return summary
