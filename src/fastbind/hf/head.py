"""A Hebbian output layer on a Hugging Face causal LM, and the capture that feeds it.

Only ``torch`` is imported here: these functions work on any ``nn.Module`` that exposes its
output layer the Hugging Face way (``get_output_embeddings`` / ``set_output_embeddings``)
and takes ``labels=`` in its forward, shifting them as ``transformers``' causal-LM loss does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastbind.errors import UserError
from fastbind.layers.hebbian_softmax import HebbianSoftmax

__all__ = ["HebbianMemorizer", "COUNTS_FILE", "hebbian_head", "load_counts", "output_layer", "save_pretrained",
           "to_linear", "token_counts"]

COUNTS_FILE = "hebbian_counts.pt"  # what save_pretrained writes beside the model


def output_layer(model: nn.Module) -> nn.Module:
    """The model's output layer (``model.get_output_embeddings()``); a one-line error when it has none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise UserError(f"{type(model).__name__} has no output layer (get_output_embeddings() gives None): "
                        "give a causal LM such as AutoModelForCausalLM")
    return head


def _text_configs(model: nn.Module) -> list[Any]:
    """The configs that may hold ``tie_word_embeddings``: the model's and its text config."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    found = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        text = get_text()
        if text is not config:
            found.append(text)
    return found


def _is_tied(model: nn.Module, head: nn.Module) -> bool:
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    return emb is not None and getattr(emb, "weight", None) is head.weight


def _untie(model: nn.Module) -> None:
    """Make the model's declaration of tied weights say "untied", so ``tie_weights()`` and
    ``save_pretrained``/``from_pretrained`` keep the output layer its own matrix."""
    for config in _text_configs(model):
        if hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    if callable(expand) and hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = expand(all_submodels=True)  # recomputed from the config: now empty


def hebbian_head(model: nn.Module, *, gamma: float = 0.05, T: int = 100,
                 counts: str | torch.Tensor = "pretrained", new_tokens: Iterable[int] | torch.Tensor | None = None,
                 untie: bool = True, objective: str = "ip", max_norm: float | str | None = None) -> HebbianSoftmax:
    """Replace a causal LM's output layer, **in place**, by a :class:`HebbianSoftmax` with the
    same weights (and its bias, ``bias=False`` where the layer has none); returns the new layer.

    The model's logits and loss are unchanged until the first :meth:`HebbianSoftmax.memorize`
    (call it through :class:`HebbianMemorizer` or :class:`~fastbind.hf.HebbianCallback`).

    Args:
        model: A causal LM with ``get_output_embeddings``/``set_output_embeddings`` (any
            ``AutoModelForCausalLM``). Add new tokens and ``resize_token_embeddings`` *before*.
        gamma: The smallest mixing rate γ (:class:`HebbianSoftmax`).
        T: A token memorizes while its count is below ``T``.
        counts: Where the counts start:

            - ``"pretrained"`` (the default, the safe choice for a trained model): every count
              starts at ``T``, so no row memorizes except those of ``new_tokens`` (count 0). A
              pre-trained head is never overwritten.
            - ``"zero"``: every count starts at 0 (training from scratch). A first memorize then
              replaces the row of every token it sees by that token's batch-mean activation.
            - a ``(V,)`` integer tensor: the counts themselves, e.g. :func:`token_counts` of the
              model's training text (tokens seen fewer than ``T`` times there keep memorizing).
        new_tokens: Token ids whose counts start at 0 whatever ``counts`` says (tokens just
            added to the vocabulary, or rows to re-learn).
        untie: When the output layer shares its matrix with the input embeddings: ``True``
            (default) gives the layer its own copy and sets the config's ``tie_word_embeddings``
            to false (and the model's tied-weights map with it), so ``tie_weights()``, saving and
            loading keep them apart; ``False`` keeps them shared, with a warning: memorize then
            also writes the input embeddings.
        objective: The inner objective (:class:`HebbianSoftmax`). ``"ip"`` (the default here):
            the row moves to the mean activation's direction at norm ``max_norm``; ``"l2"`` (the
            paper's rule): to the mean activation itself. A transformer's final norm gives
            activations of norm about √d, far above a pre-trained row's, so with ``"l2"`` a
            memorized row gives its token a huge logit in every context and fine-tuning
            collapses (docs/RESULTS.md, "Hugging Face models").
        max_norm: The norm bound of the ``ip``/``svm``/``smax`` objectives: a number, or
            ``"rows"`` (what None means for them): the median norm of the trained rows (all but
            ``new_tokens``), so memorized rows come out at the scale of the pre-trained ones.

    Raises:
        UserError: no output layer, one that is not a linear layer, or bad counts/ids.
    """
    head = output_layer(model)
    if isinstance(head, HebbianSoftmax):
        raise UserError("the model's output layer is a HebbianSoftmax already")
    if not isinstance(head, nn.Linear):
        raise UserError(f"the output layer is a {type(head).__name__}; hebbian_head replaces an nn.Linear")
    V, d = head.weight.shape
    # every setting is checked before the model is touched
    start = _start_counts(counts, new_tokens, V, T, head.weight.device)
    extra: dict[str, Any] = {}
    if max_norm is not None and objective == "l2":
        raise UserError("max_norm bounds the ip, svm and smax objectives; objective='l2' moves rows to the mean "
                        "activation itself")
    if objective != "l2":
        max_norm = "rows" if max_norm is None else max_norm
        if max_norm == "rows":
            trained = torch.ones(V, dtype=torch.bool)
            if new_tokens is not None:
                trained[_ids(new_tokens, V)] = False
            max_norm = float(head.weight.detach()[trained.to(head.weight.device)].float().norm(dim=1).median())
        elif isinstance(max_norm, str) or not max_norm > 0:
            raise UserError(f"max_norm must be a positive number or 'rows', got {max_norm!r}")
        extra["max_norm"] = float(max_norm)
    try:
        new = HebbianSoftmax(d, V, gamma=gamma, T=T, bias=head.bias is not None, weight=head.weight,
                             objective=objective, **extra)
    except ValueError as e:
        raise UserError(str(e)) from None
    if _is_tied(model, head):
        if untie:
            new.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
            _untie(model)
        else:
            warnings.warn("hebbian_head(untie=False): the output layer shares its matrix with the input embeddings, "
                          "so memorize also writes the input embeddings of the tokens it memorizes", stacklevel=2)
    if head.bias is not None:
        new.bias = head.bias  # the same Parameter: the optimizer sees no new tensor
    new.counts.copy_(start)
    new.train(head.training)
    model.set_output_embeddings(new)
    return new


def _start_counts(counts: str | torch.Tensor, new_tokens: Iterable[int] | torch.Tensor | None, V: int, T: int,
                  device: torch.device) -> torch.Tensor:
    if isinstance(counts, str):
        if counts == "pretrained":
            start = torch.full((V,), T, dtype=torch.int64)
        elif counts == "zero":
            start = torch.zeros(V, dtype=torch.int64)
        else:
            raise UserError(f"counts={counts!r}: give 'pretrained', 'zero' or a ({V},) tensor of counts")
    else:
        start = torch.as_tensor(counts)
        if start.shape != (V,) or start.is_floating_point() or bool((start < 0).any()):
            raise UserError(f"counts must be a ({V},) tensor of non-negative integers, got "
                            f"{start.dtype} {tuple(start.shape)}")
        start = start.to(torch.int64).clone()
    if new_tokens is not None:
        start[_ids(new_tokens, V)] = 0
    return start.to(device)


def _ids(new_tokens: Iterable[int] | torch.Tensor, V: int) -> torch.Tensor:
    ids = torch.as_tensor(list(new_tokens) if not isinstance(new_tokens, torch.Tensor) else new_tokens,
                          dtype=torch.int64).reshape(-1).cpu()
    if ids.numel() and bool(((ids < 0) | (ids >= V)).any()):
        raise UserError(f"new_tokens must be ids in [0, {V}), got values in [{int(ids.min())}, {int(ids.max())}]")
    return ids


def to_linear(model: nn.Module) -> HebbianSoftmax:
    """Put the model's own kind of output layer back, **in place**: an ``nn.Linear`` holding the
    same weight and bias Parameters (not copies). Returns the :class:`HebbianSoftmax` taken out
    (its ``counts`` are the state to keep for more fine-tuning)."""
    head = output_layer(model)
    if not isinstance(head, HebbianSoftmax):
        raise UserError("the model's output layer is not a HebbianSoftmax (nothing to turn back)")
    linear = nn.Linear(head.in_features, head.num_classes, bias=head.bias is not None,
                       device="meta")  # no memory for a throw-away init
    linear.weight = head.weight
    if head.bias is not None:
        linear.bias = head.bias
    linear.train(head.training)
    model.set_output_embeddings(linear)
    return head


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``model.save_pretrained(save_directory, **kwargs)`` with the model's own linear output
    layer, so any ``from_pretrained`` loads it as the architecture it is (same logits), plus the
    Hebbian counts in ``hebbian_counts.pt`` to continue with (:func:`load_counts`). The model
    keeps its Hebbian layer afterwards. A model without one is saved as it is."""
    path = Path(save_directory)
    head = output_layer(model)
    if not isinstance(head, HebbianSoftmax):
        model.save_pretrained(path, **kwargs)
        return path
    to_linear(model)
    try:
        model.save_pretrained(path, **kwargs)
    finally:
        model.set_output_embeddings(head)
    from fastbind._io import atomic_write  # noqa: PLC0415

    atomic_write(path / COUNTS_FILE, lambda fh: torch.save(
        {"counts": head.counts.cpu(), "gamma": head.gamma, "T": head.T}, fh))
    return path


def load_counts(directory: str | os.PathLike[str]) -> torch.Tensor:
    """The counts :func:`save_pretrained` wrote, for ``hebbian_head(model, counts=...)``."""
    file = Path(directory) / COUNTS_FILE
    if not file.is_file():
        raise UserError(f"{file} not found: the folder was not saved by fastbind.hf.save_pretrained")
    return torch.load(file, map_location="cpu", weights_only=True)["counts"]


def token_counts(ids: torch.Tensor | Sequence[int], vocab_size: int) -> torch.Tensor:
    """``(vocab_size,)`` occurrences of each token id in ``ids`` (e.g. a training text's
    ``tokenizer(text)["input_ids"]``), for ``hebbian_head(counts=...)``."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    if ids.numel() and bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise UserError(f"token ids must lie in [0, {vocab_size}), got values in [{int(ids.min())}, {int(ids.max())}]")
    return torch.bincount(ids, minlength=vocab_size)


class HebbianMemorizer:
    """Collects the output layer's input and the labels of every training-mode forward, and
    memorizes them once per optimizer step.

    Forward hooks on the model (for ``labels=``/``shift_labels=``) and on its output layer (for
    ``h``, the layer's input: the last hidden state after the final norm) record each forward
    made while the model is in training mode, so all the micro-batches of gradient accumulation
    are kept and evaluation forwards (``model.eval()``) are not. The targets are the labels
    shifted as ``transformers``' causal-LM loss shifts them (target ``t`` is ``labels[t + 1]``;
    ``shift_labels`` when given are taken as they are); ``-100`` is skipped. After
    ``optimizer.step()``, :meth:`memorize` hands everything recorded since the last call to
    :meth:`HebbianSoftmax.memorize` at once, so a token's mean activation is over the whole
    optimizer step. A plain training loop::

        head = hebbian_head(model, new_tokens=new_ids)
        memorizer = HebbianMemorizer(model)
        for step in range(steps):
            for batch in micro_batches(step):
                model(**batch).loss.backward()      # batch holds input_ids and labels
            optimizer.step(); optimizer.zero_grad()
            memorizer.memorize()

    With ``transformers.Trainer`` use :class:`~fastbind.hf.HebbianCallback`, which does this.
    Pass ``labels`` by keyword (as ``Trainer`` does). Call :meth:`remove` to take the hooks off.

    ``center=True`` (the default) memorizes ``h − μ`` instead of ``h``, where ``μ`` is the mean
    activation of the step's recorded targets (on this process): the row then points where this
    token's contexts differ from the step's typical context, not along the direction every
    LayerNorm-ed activation shares; ``hebbian_head``'s ``objective="ip"`` sets its norm.
    ``center=False`` with ``objective="l2"`` is the paper's rule.
    """

    def __init__(self, model: nn.Module, *, center: bool = True) -> None:
        self.center = bool(center)
        self.model = model
        self.head = output_layer(model)
        if not isinstance(self.head, HebbianSoftmax):
            raise UserError("the model's output layer is not a HebbianSoftmax: call fastbind.hf.hebbian_head(model) first")
        self._labels: torch.Tensor | None = None
        self._shifted = False
        self._h: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self.forwards = 0  # training forwards recorded since the last memorize
        self.unlabelled = 0  # training forwards that had no labels
        self.steps = 0  # memorize calls so far
        self._hooks = [model.register_forward_pre_hook(self._on_model, with_kwargs=True),
                       self.head.register_forward_pre_hook(self._on_head)]

    def _on_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        shift = kwargs.get("shift_labels")
        self._labels, self._shifted = (shift, True) if shift is not None else (kwargs.get("labels"), False)

    def _on_head(self, module: nn.Module, args: tuple) -> None:
        if not module.training:
            return
        labels, self._labels = self._labels, None
        if labels is None:
            self.unlabelled += 1
            return
        h = args[0].detach()
        y = labels if self._shifted else torch.nn.functional.pad(labels[..., 1:], (0, 1), value=self.head.ignore_index)
        y = y.to(h.device)
        if y.shape[-1] != h.shape[-2]:  # logits_to_keep: the layer saw only the last positions
            y = y[..., y.shape[-1] - h.shape[-2]:]
        keep = y != self.head.ignore_index
        self._h.append(h[keep])
        self._y.append(y[keep])
        self.forwards += 1

    def memorize(self) -> int:
        """Memorize what the training forwards since the last call recorded (call after
        ``optimizer.step()``); returns the number of targets memorized (0: nothing recorded).

        Raises:
            UserError: training forwards ran without ``labels=``, so nothing could be recorded.
        """
        if not self._h and self.unlabelled:
            self.unlabelled = 0
            raise UserError("the training forwards had no labels: pass labels= (by keyword) to the model's forward, "
                            "as transformers.Trainer does, so the memorizer knows the targets")
        n = 0
        if self._h:
            h, y = torch.cat(self._h), torch.cat(self._y)
            self._h, self._y = [], []
            if self.center:
                h = h - h.float().mean(0).to(h.dtype)
            self.head.memorize(h, y)
            n = int(y.numel())
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank takes part in the layer's all-gather, with an empty batch if need be
            w = self.head.weight
            self.head.memorize(w.new_zeros(0, w.shape[1]), torch.zeros(0, dtype=torch.int64, device=w.device))
        self.forwards = self.unlabelled = 0
        self.steps += 1
        return n

    def discard(self) -> None:
        """Drop what was recorded since the last :meth:`memorize` (e.g. after a skipped step)."""
        self._h, self._y, self._labels = [], [], None
        self.forwards = self.unlabelled = 0

    def remove(self) -> None:
        """Take the hooks off the model."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.discard()
