"""Corpora stored as tokenized text, one sentence (or paragraph) per line: WikiText and Penn
Treebank, and Gutenberg books once pre-processed (:mod:`fastbind.data.gutenberg`).

Formats
    * WikiText (Merity et al. 2016): ``wiki.{train,valid,test}.tokens`` or
      ``{train,valid,test}.txt``; vocabulary = every training token plus ``<eos>`` (the files
      already contain ``<unk>``). WikiText-2: 2,088,628 training tokens, 33,278 types.
    * Penn Treebank (Mikolov's preprocessing): ``ptb.{train,valid,test}.txt``; 929,589
      training tokens, 10,000 types.

Memory stays bounded: a split file is read in blocks of whole lines twice (count, then
encode into a preallocated int32 array), never as one Python list of tokens. The int32
arrays are then saved in the encoded-data cache (:mod:`fastbind.data.cache`) as ``.npy``
files beside ``vocab.txt`` and memory-mapped back, so the int64 tensors of the
:class:`Corpus` (8 bytes/token) are the only large private allocation.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fastbind._io import atomic_write
from fastbind.data.cache import cached, digest, entry, source_stats
from fastbind.data.corpus import SPLITS, Corpus
from fastbind.data.vocab import EOS, UNK, Vocabulary
from fastbind.errors import UserError

_BLOCK_CHARS = 1 << 22  # ~4M characters of whole lines per block: bounded memory, few Python calls
_PROGRESS_BYTES = 64 << 20  # show a progress bar only for files this large

Encoded = tuple[Vocabulary, dict[str, np.ndarray]]

# ---------------------------------------------------------------------------- encoding


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"missing data file {path}: put the {path.name} split file there")
    if path.stat().st_size == 0:
        raise UserError(f"data file {path} is empty")


def _iter_blocks(path: Path, eos: str) -> Iterator[str]:
    """Yield text of whole lines with every newline replaced by ``" <eos> "``.

    Splitting such a block on whitespace gives exactly the words of each line followed by
    ``<eos>``; a literal ``<eos>`` inside the text would map to the same id either way. Lines
    end at ``\\n`` only (``newline="\\n"``), matching a count of ``\\n``; a final line without
    a newline still gets its ``<eos>``.
    """
    sep = f" {eos} "
    size = path.stat().st_size
    try:
        with open(path, encoding="utf-8", newline="\n") as f, tqdm(
            total=size, unit="B", unit_scale=True, desc=path.name, disable=size < _PROGRESS_BYTES, leave=False
        ) as bar:
            rest = ""
            while chunk := f.read(_BLOCK_CHARS):
                bar.update(len(chunk))  # characters, close enough to bytes for a progress bar
                chunk = rest + chunk
                cut = chunk.rfind("\n") + 1
                rest = chunk[cut:]
                if cut:
                    yield chunk[:cut].replace("\n", sep)
            if rest:
                yield rest + sep
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def encode_line_files(
    paths: Mapping[str, Path], *, min_count: int, max_size: int | None = None
) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    """Two streaming passes per split: count tokens (and types, for train), then encode."""
    counter: Counter[str] = Counter()
    n_train = 0
    for block in _iter_blocks(paths["train"], EOS):
        toks = block.split()
        counter.update(toks)
        n_train += len(toks)
    vocab = Vocabulary.build(counter, min_count=min_count, specials=(EOS,), unk=UNK, max_size=max_size)
    del counter
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        path = paths[split]
        n = n_train if split == "train" else sum(len(b.split()) for b in _iter_blocks(path, EOS))
        if n == 0:
            raise UserError(f"data file {path} has no tokens")
        out = np.empty(n, dtype=np.int32)
        pos = 0
        for block in _iter_blocks(path, EOS):
            ids = vocab.encode(block.split())
            if pos + len(ids) > n:
                raise UserError(f"data file {path} changed while it was being read")
            out[pos : pos + len(ids)] = ids
            pos += len(ids)
        if pos != n:
            raise UserError(f"data file {path} changed while it was being read")
        arrays[split] = out
    return vocab, arrays


# ---------------------------------------------------------------------------- cached encodings


def cached_encoding(slot: Path | None, key: Mapping[str, Any], build: Callable[[], Encoded]) -> Encoded:
    """``build()``'s vocabulary and int32 splits, kept in the cache entry ``slot``."""
    return cached(slot, key, build, _write_encoded, _read_encoded)


def _write_encoded(slot: Path, encoded: Encoded) -> dict[str, Any]:
    vocab, arrays = encoded
    for s in SPLITS:
        atomic_write(slot / f"{s}.npy", lambda f, a=arrays[s]: np.save(f, a, allow_pickle=False))
    vocab.save(slot / "vocab.txt")
    return {"vocab_size": len(vocab), "lengths": {s: int(len(arrays[s])) for s in SPLITS}}


def _read_encoded(slot: Path, meta: Mapping[str, Any]) -> Encoded | None:
    vocab = Vocabulary.load(slot / "vocab.txt")
    if len(vocab) != meta["vocab_size"]:
        return None
    arrays = {}
    for s in SPLITS:
        # Memory-mapped: the int32 pages are file-backed, so converting to int64 tensors
        # costs 8 bytes/token of private memory rather than 12.
        a = np.load(slot / f"{s}.npy", mmap_mode="r", allow_pickle=False)
        if a.dtype != np.int32 or a.ndim != 1 or len(a) != meta["lengths"][s]:
            return None
        arrays[s] = a
    return vocab, arrays


def _read_line_corpus(
    name: str,
    fmt: str,
    folder: Path,
    paths: Mapping[str, Path],
    *,
    min_count: int,
    cache: bool,
    cache_dir: str | os.PathLike | None,
) -> Corpus:
    for s in SPLITS:
        _check_file(paths[s])
    options = {"format": fmt, "min_count": min_count, "files": {s: paths[s].name for s in SPLITS}}
    key = {**options, "sources": source_stats([paths[s] for s in SPLITS])}
    slot = entry(folder, f"{fmt}-{digest(options)}", cache_dir) if cache else None
    vocab, arrays = cached_encoding(slot, key, lambda: encode_line_files(paths, min_count=min_count))
    return Corpus.from_arrays(name, vocab, arrays)


# ---------------------------------------------------------------------------- WikiText / PTB


def has_split_files(folder: Path, fmt: str) -> bool:
    """Whether ``folder`` holds the three split files of ``fmt`` (``wikitext`` or ``ptb``)."""
    if fmt == "wikitext":
        return all((folder / f"wiki.{s}.tokens").is_file() for s in SPLITS) or all(
            (folder / f"{s}.txt").is_file() for s in SPLITS
        )
    return all((folder / f"ptb.{s}.txt").is_file() for s in SPLITS)


def split_paths(folder: Path, fmt: str) -> dict[str, Path]:
    """The split files of a WikiText (``fmt="wikitext"``) or Penn Treebank (``"ptb"``) folder."""
    if fmt == "wikitext":
        return _wikitext_paths(folder)
    return {s: folder / f"ptb.{s}.txt" for s in SPLITS}


def _wikitext_paths(folder: Path) -> dict[str, Path]:
    if (folder / "wiki.train.tokens").exists():
        return {s: folder / f"wiki.{s}.tokens" for s in SPLITS}
    if (folder / "train.txt").exists():
        return {s: folder / f"{s}.txt" for s in SPLITS}
    raise UserError(
        f"no WikiText files in {folder}: put wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens "
        "(or train.txt, valid.txt, test.txt) there"
    )


def read_wikitext(
    folder: str | os.PathLike,
    *,
    name: str | None = None,
    min_count: int = 1,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Read WikiText-2/103 (tokenized, v1) from a folder.

    Args:
        folder: holds ``wiki.{train,valid,test}.tokens`` or ``{train,valid,test}.txt``.
        name: corpus name (default: the folder name).
        min_count: keep training tokens seen at least this often (1 = the standard vocab).
        cache: keep the encoded splits in the encoded-data cache.
        cache_dir: the cache folder (default :func:`~fastbind.data.cache.default_cache_dir`);
            ``folder`` itself is never written to.

    Returns:
        The :class:`Corpus`; WikiText-2 has 2,088,628 / 217,646 / 245,569 tokens and a
        vocabulary of 33,278.
    """
    folder = Path(folder)
    return _read_line_corpus(
        name or folder.resolve().name, "wikitext", folder, _wikitext_paths(folder),
        min_count=min_count, cache=cache, cache_dir=cache_dir,
    )


def read_ptb(
    folder: str | os.PathLike,
    *,
    name: str = "ptb",
    min_count: int = 1,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Read Penn Treebank (Mikolov's preprocessing) from ``ptb.{train,valid,test}.txt``.

    Same conventions as :func:`read_wikitext`; gives 929,589 / 73,760 / 82,430 tokens and a
    vocabulary of 10,000.
    """
    folder = Path(folder)
    return _read_line_corpus(
        name, "ptb", folder, split_paths(folder, "ptb"),
        min_count=min_count, cache=cache, cache_dir=cache_dir,
    )
