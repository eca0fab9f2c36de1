"""The run folder: the one writer and reader of a run's files.

Every recipe keeps what it produces in a run folder, and every reader (``lm-eval``,
``lm-sweep``, ``report``) reads it back through :class:`RunFolder`, so each file has one
layout and one owner::

    RUN_DIR/
      run.json           which recipe made the run: {"recipe": "lm-train", "fastbind": "0.1.0"}
      config.json        the resolved settings of the recipe that made the run
      metrics.jsonl      one JSON line per logged step (appended; a resumed run continues it)
      summary.json       the state of training at the end of the last invocation
      last.pt, best.pt   checkpoints (state_dicts plus context, atomic, rank 0 only)
      <name>.json        results: eval-test.json (see eval_record), sweep-valid.json, curriculum.json, ...
      <name>.md, .png    human-readable renderings of results
      <sub>/             sub-runs (one combination of a sweep over settings each)

Example::

    run = RunFolder("runs/ptb-hebb")
    run.save_config(cfg, recipe="lm-train")   # config.json and run.json
    with run.metrics_writer() as log:
        log.log(step, {"val/ppl": 123.4})
    run.save_checkpoint("last", state)        # last.pt
    run.write_summary({"step": step, ...})    # summary.json
    run.write_eval(eval_record(variants, split="test", step=step))   # eval-test.json
    run.write_result("sweep-valid", result)   # any other result: sweep-valid.json
    cfg = run.load_config(LMTrainConfig)      # UserError when it is not a run folder
    run.recipe()                              # "lm-train": which recipe's reader applies

``run.json`` is what readers dispatch on (``fastbind report`` picks the report of the
recipe's family from it): a new kind of experiment names itself there and needs nothing
from this module. ``config.json`` keeps the settings alone, so readers of older versions
still work.

Only the primary rank writes (``writer=False`` elsewhere, or the distributed helper's
``is_primary``); every file is written atomically, so a reader never sees half a file and
an interrupted write leaves the previous version in place.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, TypeVar

from fastbind import __version__
from fastbind._io import atomic_write
from fastbind.errors import UserError
from fastbind.training import distributed
from fastbind.training.checkpoint import load_checkpoint, save_checkpoint
from fastbind.training.config import flatten, from_dict, to_dict
from fastbind.training.metrics import METRICS_FILE, MetricsWriter, read_metrics

__all__ = ["BASE_VARIANT", "CONFIG_FILE", "FREE_ON_RESUME", "MARKER_FILE", "METRICS_FILE", "SUMMARY_FILE", "RunFolder",
           "check_resume", "eval_name", "eval_record", "metrics_by_step", "variant_settings_layout"]

CONFIG_FILE = "config.json"
MARKER_FILE = "run.json"  # {"recipe": <the command that made the run>, "fastbind": <its version>}
SUMMARY_FILE = "summary.json"
_RECIPE_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")  # a command's name: lm-train, catbabi

BASE_VARIANT = "model"  # the evaluation variant that is the model alone (no cache, no MbPA)
_RESULT_KEYS = ("ppl", "nll", "tokens", "buckets")  # a bucketed perplexity result

C = TypeVar("C")


class RunFolder:
    """A run folder on disk (it need not exist yet).

    Args:
        path: The folder.
        writer: Whether this process writes; default: the primary rank of a distributed
            job (every process when not distributed).
    """

    def __init__(self, path: str | os.PathLike[str], *, writer: bool | None = None) -> None:
        self.path = Path(path)
        self.writer = distributed.is_primary() if writer is None else bool(writer)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The folder's own name (resolved for ``.`` and ``..``)."""
        name = self.path.name
        if name in ("", ".", ".."):
            name = self.path.resolve().name or str(self.path)
        return name

    # ------------------------------------------------------------------ existence

    def exists(self) -> bool:
        """True when the folder holds a run (a ``config.json``)."""
        return (self.path / CONFIG_FILE).is_file()

    def require(self) -> RunFolder:
        """Raise :class:`UserError` unless the folder exists and holds a run; returns self."""
        if not self.path.exists():
            raise UserError(f"run folder {self.path} does not exist")
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder")
        if not self.exists():
            raise UserError(f"{self.path} is not a run folder (no {CONFIG_FILE})")
        return self

    # ------------------------------------------------------------------ config

    def save_config(self, cfg: Any, *, recipe: str | None = None) -> Path | None:
        """Write the resolved settings (a config dataclass) as ``config.json``.

        Args:
            cfg: The settings.
            recipe: The command that made the run (``"lm-train"``); every recipe passes it,
                so readers know the folder without looking at its settings (see :meth:`mark`).
        """
        path = self._write_json(CONFIG_FILE, to_dict(cfg))
        if recipe is not None:
            self.mark(recipe)
        return path

    def mark(self, recipe: str) -> Path | None:
        """Write ``run.json``, naming the recipe that made the folder and this fastbind's version.

        :meth:`save_config` calls it; a folder that holds sub-runs and no settings of its own
        (a curriculum's ``out``) is marked alone, so it is recognised like its sub-runs.
        """
        if not _RECIPE_NAME.fullmatch(recipe):
            raise ValueError(f"a recipe is named like a command (lm-train, catbabi), got {recipe!r}")
        if self.writer and (made_by := self.recipe()) not in (None, recipe):
            raise UserError(f"{self.path} holds {made_by} runs, not {recipe} runs; use another out=")
        return self._write_json(MARKER_FILE, {"recipe": recipe, "fastbind": __version__})

    def recipe(self) -> str | None:
        """The recipe that made the folder: ``"lm-train"``, ``"curriculum"``, ``"catbabi"``, ...

        Read from ``run.json``. Folders written before that file existed are recognised by
        their settings, here and nowhere else; the rules cover the recipes of that time only,
        since every recipe since writes its name. A folder with no settings of its own is
        what all its sub-runs are. None when nothing tells.

        Raises:
            UserError: ``run.json`` is unreadable or names no recipe.
        """
        marker = self._read_object(MARKER_FILE)
        if marker is not None:
            name = marker.get("recipe")
            if not isinstance(name, str) or not name:
                raise UserError(f"{str(self.path / MARKER_FILE)!r} does not name the recipe that made the run")
            return name
        config = self.config_dict()
        if config is None:
            kinds = {sub.recipe() for sub in self.subruns()}
            return kinds.pop() if len(kinds) == 1 else None
        if "seg_len" in config and "mode" in config:
            return "catbabi"
        if "start_classes" in config:
            return "curriculum"
        if isinstance(config.get("model"), dict):
            return "lm-train"
        return None

    def config_dict(self) -> dict[str, Any] | None:
        """``config.json`` as a dict, or None when there is none."""
        return self._read_object(CONFIG_FILE)

    def load_config(self, cls: type[C]) -> C:
        """``config.json`` as a ``cls`` instance; UserError when missing or invalid."""
        self.require()
        data = self.config_dict()
        assert data is not None
        return from_dict(cls, data)

    # ------------------------------------------------------------------ metrics

    def metrics_writer(self, tensorboard: bool | None = None) -> MetricsWriter:
        """A writer appending to ``metrics.jsonl`` (a no-op on non-writing ranks)."""
        return MetricsWriter(self.path, tensorboard=tensorboard if self.writer else False, enabled=self.writer)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged lines merged by step (see :func:`metrics_by_step`); [] without a file."""
        path = self.path / METRICS_FILE
        return list(metrics_by_step(read_metrics(path)).values()) if path.is_file() else []

    def has_metrics(self) -> bool:
        return (self.path / METRICS_FILE).is_file()

    # ------------------------------------------------------------------ summary

    def write_summary(self, summary: dict[str, Any]) -> Path | None:
        """Write ``summary.json`` (the state at the end of this invocation)."""
        return self._write_json(SUMMARY_FILE, summary)

    def read_summary(self) -> dict[str, Any] | None:
        return self._read_object(SUMMARY_FILE)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_path(self, name: str) -> Path:
        return self.path / f"{name}.pt"

    def has_checkpoint(self, name: str) -> bool:
        return self.checkpoint_path(name).is_file()

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path | None:
        """Write ``<name>.pt`` atomically (plain state only; see :mod:`fastbind.training.checkpoint`)."""
        if not self.writer:
            return None
        return save_checkpoint(self.checkpoint_path(name), state)

    def load_checkpoint(self, name: str, *, fallback: str | None = None,
                        map_location: Any = "cpu") -> tuple[dict[str, Any], Path]:
        """``(state, path)`` of ``<name>.pt``, or of ``<fallback>.pt`` when that is absent.

        Raises:
            UserError: Neither exists, or the file is corrupt.
        """
        path = self.checkpoint_path(name)
        if not path.is_file() and fallback is not None and self.has_checkpoint(fallback):
            path = self.checkpoint_path(fallback)
        if not path.is_file():
            raise UserError(f"{self.path} has no checkpoint {name}.pt")
        return load_checkpoint(path, map_location=map_location), path

    # ------------------------------------------------------------------ results

    def write_result(self, name: str, data: dict[str, Any]) -> Path | None:
        """Write a result object as ``<name>.json`` (e.g. ``eval-test``, ``curriculum``)."""
        return self._write_json(f"{name}.json", data)

    def read_result(self, name: str) -> dict[str, Any] | None:
        """The object in ``<name>.json``, or None when there is none."""
        return self._read_object(f"{name}.json")

    def result_names(self, pattern: str = "*") -> list[str]:
        """Names (without ``.json``) of the result files matching ``pattern``, sorted."""
        skip = {CONFIG_FILE, MARKER_FILE, SUMMARY_FILE}
        return sorted(p.stem for p in self.path.glob(f"{pattern}.json") if p.is_file() and p.name not in skip)

    def write_eval(self, record: dict[str, Any], *, tag: str = "") -> Path | None:
        """Write an :func:`eval_record` as ``eval-<split>.json`` (``eval-<split>-<tag>.json``)."""
        variants = record.get("variants")
        if not isinstance(variants, dict) or BASE_VARIANT not in variants or "split" not in record:
            raise ValueError("write_eval takes a record made by eval_record()")
        return self.write_result(eval_name(record["split"], tag), record)

    def read_eval(self, split: str, *, tag: str = "") -> dict[str, Any] | None:
        """``eval-<split>[-<tag>].json`` in the layout of :func:`eval_record`, or None when absent.

        Files written before that layout (the model's numbers alone, no ``"variants"``) are
        read as a record whose only variant is the model, and a variant's ``settings`` in an
        earlier layout (``lam`` for ``lambda``; the sweep's flat best rows) in today's
        (:func:`variant_settings_layout`).
        """
        record = self.read_result(eval_name(split, tag))
        if record is None:
            return None
        variants = record.get("variants")
        variants = {str(k): v for k, v in variants.items() if isinstance(v, dict)} if isinstance(variants, dict) else {}
        base = variants.pop(BASE_VARIANT, None) or {k: record[k] for k in _RESULT_KEYS if k in record}
        record["variants"] = {BASE_VARIANT: base, **variants}
        for v in record["variants"].values():
            v["settings"] = variant_settings_layout(v.get("settings"))
        return record

    def write_text(self, name: str, text: str) -> Path | None:
        """Write a text file (markdown tables and the like)."""
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, blob: bytes) -> Path | None:
        """Write a binary file (figures)."""
        if not self.writer:
            return None
        return atomic_write(self.path / name, lambda fh: fh.write(blob))

    # ------------------------------------------------------------------ sub-runs

    def sub(self, name: str) -> RunFolder:
        """The sub-run ``<path>/<name>`` (one combination of settings of a multi-run recipe)."""
        return RunFolder(self.path / name, writer=self.writer)

    def subruns(self) -> list[RunFolder]:
        """Sub-folders holding a run, sorted by name."""
        if not self.path.is_dir():
            return []
        return [RunFolder(p, writer=self.writer) for p in sorted(self.path.iterdir())
                if p.is_dir() and (p / CONFIG_FILE).is_file()]

    # ------------------------------------------------------------------ internals

    def _write_json(self, name: str, data: Any) -> Path | None:
        if not self.writer:
            return None
        text = json.dumps(data, indent=2) + "\n"
        return atomic_write(self.path / name, lambda fh: fh.write(text.encode("utf-8")))

    def _read_object(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"cannot parse {str(path)!r}: {exc}") from None
        except OSError as exc:
            raise UserError(f"cannot read {str(path)!r}: {exc.strerror}") from None
        if not isinstance(data, dict):
            raise UserError(f"{str(path)!r} must contain a JSON object")
        return data


def eval_name(split: str, tag: str = "") -> str:
    """The result name of an evaluation: ``eval-<split>`` or ``eval-<split>-<tag>``."""
    return f"eval-{split}-{tag}" if tag else f"eval-{split}"


def variant_settings_layout(settings: Any) -> Any:
    """A variant's settings in the one layout, ``{"cache": {"size", "theta", "lambda"}, "mbpa":
    {"size", "k", "steps", ..., "lambda"}}``, from either earlier one: lm-eval's sections with
    ``lam`` for ``lambda``, or lm-sweep's flat best rows (``size``/``theta``/``lambda``,
    ``size``/``k``/``steps``/``lambda``, or ``cache_lambda`` and ``mbpa_lambda`` for both, with
    their ``ppl``, which is dropped). Anything else comes back as it is."""
    if not isinstance(settings, dict):
        return settings
    if "cache" in settings or "mbpa" in settings:
        return {name: ({("lambda" if k == "lam" else k): v for k, v in sec.items()} if isinstance(sec, dict) else sec)
                for name, sec in settings.items()}
    if "size" not in settings:
        return settings
    out = {}
    if "theta" in settings:
        out["cache"] = {"size": settings["size"], "theta": settings["theta"],
                        "lambda": settings.get("cache_lambda", settings.get("lambda"))}
    if "k" in settings:
        out["mbpa"] = {"size": settings["size"], "k": settings["k"], "steps": settings.get("steps"),
                       "lambda": settings.get("mbpa_lambda", settings.get("lambda"))}
    return out or settings


def eval_record(variants: dict[str, dict[str, Any]], *, variant_settings: dict[str, Any] | None = None,
                **context: Any) -> dict[str, Any]:
    """The one layout of ``eval-<split>.json`` (written by ``lm-eval``, ``lm-sweep``; read by ``report``)::

        {"ppl": 124.5, "nll": 4.82, "tokens": 82430,            the model's own numbers
         "buckets": [{"name": ">10K", "tokens": 51234, "ppl": 40.1}, ...],
         "variants": {"model": {"ppl", "nll", "tokens", "buckets", "settings": null},
                      "+cache": {..., "settings": {"cache": {"size", "theta", "lambda"}}}, ...},
         "split": "test", "checkpoint": "best", "step": 9000, ...}     context

    Args:
        variants: Variant name -> bucketed result (``{"ppl", "nll", "tokens", "buckets"}``),
            :data:`BASE_VARIANT` (``"model"``) among them; it comes first, the others in
            the order given.
        variant_settings: Variant name -> the settings that made it (None for none), as
            :func:`fastbind.evaluation.variant_settings` lays them out; a variant
            ``name@...`` (the same restricted to a sample) takes ``name``'s.
        **context: What was evaluated and how; ``split`` is required (it names the file).

    Returns:
        The record, the model's numbers first, then ``"variants"``, then ``context``.
    """
    if BASE_VARIANT not in variants:
        raise ValueError(f"an evaluation record needs the {BASE_VARIANT!r} variant, got {list(variants)}")
    if "split" not in context:
        raise ValueError("an evaluation record needs its split")
    settings = variant_settings or {}
    order = [BASE_VARIANT, *(name for name in variants if name != BASE_VARIANT)]
    entries = {name: {**{k: v for k, v in variants[name].items() if k != "settings"},
                      "settings": settings.get(name, settings.get(name.split("@", 1)[0]))}
               for name in order}
    model = {k: v for k, v in variants[BASE_VARIANT].items() if k != "settings"}
    return {**model, "variants": entries, **context}


def metrics_by_step(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Merge metric lines into one dict per step; later lines win.

    A resumed run appends to the same file and repeats the steps after its last
    checkpoint. When the step goes backwards, entries from the step it restarts at
    onwards are dropped, so lines of the interrupted attempt that the resumed one has
    not reached yet do not linger.
    """
    merged: dict[int, dict[str, Any]] = {}
    last = -math.inf
    for row in rows:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        step = int(step)
        if step < last:
            for s in [s for s in merged if s >= step]:
                del merged[s]
        last = step
        merged.setdefault(step, {}).update(row)
    return dict(sorted(merged.items()))


# Settings that may change between the invocations ("slices") of one run: where the data lives (each
# recipe checks the data's content against its checkpoint: vocabulary or class digest), the hardware,
# the budget, how often to validate and checkpoint, and the display. None changes what a training step
# computes, except that a decaying learning-rate schedule (optim.schedule) spans the running max_steps.
FREE_ON_RESUME = frozenset({"out", "data", "data_dir", "device", "threads", "compile", "max_steps", "max_minutes",
                            "stop_after", "patience", "eval_every", "checkpoint_every", "test", "log_every",
                            "progress", "tensorboard"})


def check_resume(saved: dict[str, Any], cfg: Any, where: str | os.PathLike[str], *,
                 pinned: frozenset[str] = frozenset(), free: frozenset[str] = frozenset()) -> None:
    """Refuse to resume the run at ``where`` (its checkpoint's config ``saved``) under other settings.

    Every recipe calls this before it writes anything. A change outside :data:`FREE_ON_RESUME`
    (``optim.lr``: the restored optimizer would keep the old rate; the model; what validation
    measures, which ``best.pt`` compares across slices) would leave ``config.json`` misstating
    what trained the run. ``pinned`` names free keys that steer training in one recipe (the
    curriculum's ``eval_every`` decides when new classes arrive); ``free`` names a recipe's own keys
    that only change what its end does (catbabi's ``test_batch``). ``saved`` is read with
    ``from_dict``, so a run saved before a key was added or renamed compares under today's
    names and defaults.

    Raises:
        UserError: naming the first changed dotted key and both values.
    """
    old, new = flatten(to_dict(from_dict(type(cfg), saved))), flatten(to_dict(cfg))
    for key, value in new.items():
        if (key.split(".")[0] not in (FREE_ON_RESUME | free) - pinned) and old.get(key) != value:
            raise UserError(f"{where} holds a run with a different {key!r} ({old.get(key)!r}, now {value!r}); "
                            "use another out= or the same settings to resume")
