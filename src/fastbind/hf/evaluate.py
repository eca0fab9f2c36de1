"""``fastbind lm-eval model=PATH text=FILE out=DIR``: a local Hugging Face causal LM read in
sliding windows on its own tokenizer, alone and with the evaluation-time memories.

The model is wrapped in :class:`HFCausalLM`, which answers as fastbind's own transformer does
(:class:`~fastbind.models.language_model.LMOutput` with the output layer's input as
``hidden``), so the windowed reading, the neural cache, MbPA, the kNN-LM and dynamic
evaluation of ``lm-eval`` apply unchanged (:func:`fastbind.lm.evaluate_tokens`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastbind._io import atomic_write
from fastbind.buckets import DEFAULT_EDGES
from fastbind.errors import UserError
from fastbind.hf.head import output_layer, token_counts
from fastbind.models.language_model import LMOutput

__all__ = ["HFCausalLM", "encode_text", "evaluate_model", "require_transformers"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def require_transformers() -> Any:
    """``transformers``, or a one-line error saying how to install it."""
    try:
        import transformers  # noqa: PLC0415
    except ImportError:
        raise UserError("this needs Hugging Face transformers: pip install 'fastbind[hf]'") from None
    return transformers


def model_context(config: Any) -> int:
    """The longest input the model takes (its position table), 0 when the config does not say."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM answering as a fastbind language model.

    ``forward(x, state, targets)`` gives :class:`~fastbind.models.language_model.LMOutput` with
    the logits, ``hidden`` = the output layer's input (the last hidden state after the model's
    final norm, captured by a forward hook) and, with targets, ``nll`` (``-100`` ignored, in
    float32 whatever the model's dtype). ``recurrent`` is False, ``context`` the model's
    position limit, ``output_layer()`` its ``(W, b)``: what the windowed reading and the memories
    ask of a model. The wrapped model is ``self.model``.
    """

    recurrent = False
    is_adaptive = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = output_layer(model)
        weight = getattr(head, "weight", None)
        if weight is None or weight.dim() != 2:
            raise UserError(f"the output layer ({type(head).__name__}) has no (vocabulary, width) weight")
        self.vocab_size, self.d_out = int(weight.shape[0]), int(weight.shape[1])
        self.context = model_context(getattr(model, "config", None))
        self._hidden: torch.Tensor | None = None
        self._hook = head.register_forward_pre_hook(self._grab)

    def _grab(self, module: nn.Module, args: tuple) -> None:
        self._hidden = args[0]

    def forward(self, x: torch.Tensor, state: Any = None, targets: torch.Tensor | None = None) -> LMOutput:
        out = self.model(input_ids=x, use_cache=False)
        hidden, self._hidden = self._hidden, None
        logits = out.logits
        nll = None
        if targets is not None:
            nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none",
                                  ignore_index=-100).view_as(targets)
        return LMOutput(logits, None, hidden, None, nll)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = output_layer(self.model)
        return head.weight, getattr(head, "bias", None)


def encode_text(tokenizer: Any, path: Path, *, bos: bool = True, block: int = 4096) -> tuple[torch.Tensor, int]:
    """A text file as one token stream on ``tokenizer``: ``(ids, words)``.

    The text is tokenized in blocks of whole lines (line ends kept, so a tokenizer that has
    tokens for them sees them), without the tokenizer's special tokens; with ``bos`` and a
    tokenizer that has a BOS token, one is put first, so every token of the text is a target.
    ``words`` counts the text's whitespace-separated words, for per-word perplexity.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos and bos_id is not None:
        ids.append(int(bos_id))
    for i in range(0, len(lines), block):
        ids.extend(tokenizer("".join(lines[i : i + block]), add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long), len(text.split())


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _sha1(t: torch.Tensor) -> str:
    return hashlib.sha1(t.cpu().contiguous().numpy().tobytes()).hexdigest()


def load_config(path: Path) -> Any:
    """The model folder's config (nothing downloaded); a one-line error when there is none."""
    transformers = require_transformers()
    if not (path / "config.json").is_file():
        raise UserError(f"model={path}: not a Hugging Face model folder (no config.json)")
    try:
        return transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"model={path}: unreadable config.json ({str(e).splitlines()[0]})") from None


def load_model(path: Path, dtype: str, device: torch.device, progress: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local model folder, nothing downloaded."""
    transformers = require_transformers()
    load_config(path)
    if not progress:
        transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype != "auto":
        kwargs["dtype"] = DTYPES[dtype]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"model={path}: no tokenizer could be loaded from it ({str(e).splitlines()[0]})") from None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"model={path}: not loadable as a causal LM ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer


def evaluate_model(cfg: Any) -> dict:
    """``lm-eval`` on a local Hugging Face model folder: ``cfg`` is a
    :class:`~fastbind.lm.LMEvalConfig` with ``model``, ``text`` and ``out`` set.

    The text (a file, or a named corpus's ``split``) is tokenized by the model's tokenizer
    (:func:`encode_text`) and read in sliding windows (``window`` 0: the model's context up to
    1,024 tokens; ``stride`` 0: half the window). With ``train=`` (a file or corpus: its
    training split) the results are bucketed by the training text's token frequencies, the
    kNN-LM's datastore is built from it, and dynamic evaluation takes its gradient statistics
    from it; without it there are no buckets, and ``knnlm``/``dyneval`` are refused. Writes
    ``<out>/eval-<name>.json`` (the run folders' record, :func:`fastbind.runs.eval_record`, with
    ``word_ppl``: exp(total NLL ÷ the text's words) beside each variant scored on every target);
    the datastore goes to ``<out>/knnlm-<digest>/``. Nothing is written into the model folder.
    """
    from fastbind.data.corpora import split_text_file  # noqa: PLC0415
    from fastbind.lm import datastore, evaluate_tokens, training_statistics  # noqa: PLC0415
    from fastbind.lm import weights_digest  # noqa: PLC0415
    from fastbind.runs import eval_record  # noqa: PLC0415
    from fastbind.training.distributed import resolve_device  # noqa: PLC0415

    model_dir, out = Path(cfg.model).expanduser(), Path(cfg.out).expanduser()
    if not model_dir.is_dir():
        raise UserError(f"model={cfg.model}: no such folder")
    if _inside(out, model_dir):
        raise UserError(f"out={cfg.out} is inside the model folder: give a folder of its own (the model's is never "
                        "written into)")
    if (cfg.knnlm.lam > 0 or cfg.dyneval.on) and not cfg.train:
        raise UserError("knnlm and dyneval learn from a training text: give train=FILE (or a corpus name)")
    text_file = split_text_file(cfg.text, cfg.split, cfg.data_dir)
    train_file = split_text_file(cfg.train, "train", cfg.data_dir) if cfg.train else None
    limit = model_context(load_config(model_dir))
    window = cfg.window or min(limit or 1024, 1024)
    if limit and window > limit:
        raise UserError(f"window={window} is longer than the model's context ({limit} tokens)")
    stride = cfg.stride or max(1, window // 2)
    if stride > window:
        raise UserError(f"stride={stride} must be <= window={window} (every target is scored once)")
    device = resolve_device(cfg.device)
    hf, tokenizer = load_model(model_dir, cfg.dtype, device, cfg.progress)
    model = HFCausalLM(hf)
    tokens, words = encode_text(tokenizer, text_file, bos=cfg.bos)
    if tokens.numel() < 2:
        raise UserError(f"text={cfg.text}: fewer than 2 tokens to evaluate")
    if bool((tokens >= model.vocab_size).any()):
        raise UserError(f"the tokenizer gives ids up to {int(tokens.max())} but the model's output layer has "
                        f"{model.vocab_size} rows: tokenizer and model do not match")
    context: dict[str, Any] = {"window": window, "stride": stride, "min_context": window - stride}
    if train_file is not None:
        train, _ = encode_text(tokenizer, train_file, bos=cfg.bos)
        counts = token_counts(train, model.vocab_size)
        edges = tuple(cfg.buckets) if cfg.buckets is not None else DEFAULT_EDGES
    else:
        train, counts, edges = None, torch.zeros(model.vocab_size, dtype=torch.int64), (1,)  # one bucket, dropped
    def store(s: Any) -> Any:
        digest = weights_digest(hf)  # hashed only when a datastore is wanted
        source = {"weights": digest, "train_sha1": _sha1(train), "tokens": int(train.numel()), "window": window,
                  "stride": stride}
        return datastore(out / f"knnlm-{digest[:12]}-{s.dtype}", model, train, source, s, window, stride, device,
                         cfg.progress)

    def statistics(s: Any) -> dict[str, torch.Tensor]:
        return training_statistics(model, train, s, window, device, cfg.progress)

    name = cfg.split if text_file != Path(cfg.text).expanduser() else text_file.stem
    variants, settings = evaluate_tokens(model, tokens, counts, edges, replace(cfg, batch_size=1), window=window,
                                         stride=stride, device=device, context=context, store=store,
                                         statistics=statistics)
    whole = not cfg.max_tokens
    if train_file is None:
        edges = ()
    for v in variants.values():
        if train_file is None:
            v["buckets"] = []
        if whole and v["tokens"] == tokens.numel() - 1 and words:
            v["word_ppl"] = math.exp(v["nll"] * v["tokens"] / words)
    context.update({"split": name, "model": str(model_dir), "text": str(text_file),
                    "train": None if train_file is None else str(train_file), "edges": list(edges),
                    "words": words if whole else None, "text_tokens": int(tokens.numel()),
                    "dtype": str(next(hf.parameters()).dtype).removeprefix("torch."),
                    "architecture": type(hf).__name__})
    result = eval_record(variants, variant_settings=settings, **context)
    path = out / f"eval-{name}.json"
    atomic_write(path, lambda fh: fh.write(json.dumps(result, indent=1).encode()))
    result["path"] = str(path)
    return result
