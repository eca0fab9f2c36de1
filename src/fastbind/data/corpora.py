"""One entry point for language-modelling corpora: :func:`load_corpus` by name or path.

Named data sets live in the data folder (:func:`~fastbind.data.cache.default_data_dir`, or
the ``data_dir`` setting); WikiText and Penn Treebank are downloaded there from their
official sources when missing. A path is read with the reader its file names call for
(:func:`detect_format`). ``"synthetic"`` is generated (:mod:`fastbind.data.synthetic`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastbind.data.cache import data_root
from fastbind.data.corpus import Corpus
from fastbind.data.download import SOURCES, DownloadError, fetch_dataset
from fastbind.data.gutenberg import is_book, read_gutenberg
from fastbind.data.linefiles import has_split_files, read_ptb, read_wikitext, split_paths
from fastbind.data.synthetic import SyntheticConfig, generate
from fastbind.errors import UserError

#: Named data sets: name -> format. They live in ``<data folder>/<name>/``.
DATASETS: dict[str, str] = {
    "wikitext-2": "wikitext",
    "wikitext-103": "wikitext",
    "ptb": "ptb",
    "gutenberg": "gutenberg",
}
_ALIASES = {
    "wt2": "wikitext-2", "wikitext2": "wikitext-2", "wt103": "wikitext-103", "wikitext103": "wikitext-103",
    "penn-treebank": "ptb", "penntreebank": "ptb",
}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a data path: ``"wikitext"``, ``"ptb"`` or ``"gutenberg"``.

    A ``.zip`` file is Gutenberg; a folder with ``wiki.train.tokens`` or ``train.txt`` is
    WikiText, with ``ptb.train.txt`` Penn Treebank, with other ``.txt`` files (or one
    ``.zip``) Gutenberg books.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".zip":
            return "gutenberg"
        raise UserError(f"{path} is a file; pass the folder that holds the split files (or a .zip of books)")
    if not path.is_dir():
        raise UserError(f"no such data path: {path}")
    if (path / "wiki.train.tokens").exists() or (path / "train.txt").exists():
        return "wikitext"
    if (path / "ptb.train.txt").exists():
        return "ptb"
    if any(is_book(p.name) for p in path.iterdir() if p.is_file()) or len(list(path.glob("*.zip"))) == 1:
        return "gutenberg"
    raise UserError(
        f"cannot tell the format of {path}: expected wiki.{{train,valid,test}}.tokens, "
        "{train,valid,test}.txt, ptb.{train,valid,test}.txt, or Gutenberg .txt books / a .zip"
    )


_READERS: dict[str, Callable[..., Corpus]] = {"wikitext": read_wikitext, "ptb": read_ptb, "gutenberg": read_gutenberg}


def _ensure_split_files(key: str, folder: Path, fmt: str, download: bool) -> None:
    """Download a named WikiText/PTB set's split files into ``folder`` when they are missing."""
    if has_split_files(folder, fmt):
        return
    if not download:
        raise UserError(f"{key} is not in {folder}: put {', '.join(SOURCES[key].files)} there (downloads are disabled)")
    try:
        fetch_dataset(key, folder)
    except DownloadError as e:
        raise UserError(str(e)) from None


def split_text_file(spec: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None, *,
                    download: bool = True) -> Path:
    """The raw text file of one split, for models that bring their own tokenizer.

    ``spec`` is a text file (returned as it is), a named WikiText or Penn Treebank set (its
    ``split`` file in the data folder, downloaded there when missing, as :func:`load_corpus`)
    or a folder of such split files.

    Raises:
        UserError: no such file or set, a set without split files (Gutenberg books), or a failed
            download.
    """
    text = os.fspath(spec)
    key = _ALIASES.get(text.strip().lower(), text.strip().lower())
    if key in DATASETS:
        fmt = DATASETS[key]
        if fmt == "gutenberg":
            raise UserError("gutenberg is a folder of books without split files: give a text file instead")
        folder = data_root(cache_dir) / key
        _ensure_split_files(key, folder, fmt, download)
        return split_paths(folder, fmt)[split]
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        fmt = detect_format(path)
        if fmt == "gutenberg":
            raise UserError(f"{path} holds books without split files: give a text file instead")
        return split_paths(path, fmt)[split]
    raise UserError(f"no such text file or corpus: {text!r} (a file, a folder of split files, or one of "
                    f"{', '.join(k for k, f in DATASETS.items() if f != 'gutenberg')})")


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    allowed = set(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} for {fn.__name__} (allowed: {', '.join(sorted(allowed))})"
        )
    return fn(*args, **kwargs)


def load_corpus(
    spec: str | os.PathLike = "synthetic",
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    download: bool = True,
    **options: Any,
) -> Corpus:
    """Load a corpus by name or path.

    Args:
        spec: ``"synthetic"`` (generated, see :mod:`fastbind.data.synthetic`),
            ``"wikitext-2"``, ``"wikitext-103"``, ``"ptb"``, ``"gutenberg"``, or a path: a
            folder (format detected from its file names, see :func:`detect_format`) or a
            ``.zip`` of Gutenberg books. Named sets live in ``<cache_dir>/<name>/``; missing
            WikiText/PTB files are downloaded from the official source there.
        cache_dir: the ``data_dir`` setting: folder of the named sets and of the encoded-data
            cache (default: :func:`~fastbind.data.cache.default_data_dir` for the sets,
            :func:`~fastbind.data.cache.default_cache_dir` for the cache). A data path given
            as ``spec`` is never written to.
        seed: generator seed for ``synthetic`` (ignored otherwise).
        download: allow downloading missing named data sets.
        **options: ``SyntheticConfig`` fields for ``synthetic``; reader keywords otherwise
            (e.g. ``min_count``, ``test_books`` for Gutenberg).

    Raises:
        UserError: unknown spec, bad option, missing/empty files, or a failed download
            (naming the folder and the files to put there).
    """
    text = os.fspath(spec)
    key = _ALIASES.get(text.strip().lower(), text.strip().lower())
    if key == "synthetic":
        return generate(_call(SyntheticConfig, **options), seed)
    if key in DATASETS:
        fmt = DATASETS[key]
        folder = data_root(cache_dir) / key
        if fmt == "gutenberg":
            if not folder.is_dir():
                raise UserError(
                    f"no Gutenberg books in {folder}: put .txt books or a .zip of them there, or pass their path"
                )
            return _call(read_gutenberg, folder, cache_dir=cache_dir, **{"name": "gutenberg", **options})
        _ensure_split_files(key, folder, fmt, download)
        return _call(_READERS[fmt], folder, cache_dir=cache_dir, **{"name": key, **options})
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(
            f"unknown corpus {text!r}: not one of synthetic, {', '.join(DATASETS)} and no such path"
        )
    fmt = detect_format(path)
    return _call(_READERS[fmt], path, cache_dir=cache_dir, **options)
