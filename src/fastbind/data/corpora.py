"""Word-level language-modelling corpora: readers, on-disk encoding cache, one entry point.

Every reader returns a :class:`Corpus`: a vocabulary plus the three splits as 1-D int64
tensors of token ids, with ``<eos>`` appended at every line end (the pytorch/examples
``word_language_model`` convention: each line, blank ones included, contributes its
whitespace-split words followed by one ``<eos>``).

Formats
    * WikiText (Merity et al. 2016): ``wiki.{train,valid,test}.tokens`` or
      ``{train,valid,test}.txt``; vocabulary = every training token plus ``<eos>`` (the files
      already contain ``<unk>``). WikiText-2: 2,088,628 training tokens, 33,278 types.
    * Penn Treebank (Mikolov's preprocessing): ``ptb.{train,valid,test}.txt``; 929,589
      training tokens, 10,000 types.
    * Project Gutenberg books: a folder of ``.txt`` books or a ``.zip`` of them, split by
      book and tokenized as in Rae et al. (2018), appendix A.5 (see :func:`read_gutenberg`).

Memory stays bounded: a split file is read in blocks of whole lines twice (count, then
encode into a preallocated int32 array), never as one Python list of tokens. The int32
arrays are then saved and memory-mapped back, so the int64 tensors (8 bytes/token, 0.8 GB
for WikiText-103's 103M tokens) are the only large private allocation; a 20M-token file
measured 0.55 GB peak RSS including the ~0.23 GB of an idle interpreter with torch loaded.

Encoded splits are cached as int32 ``.npy`` files with ``vocab.txt`` and a JSON meta (source
sizes and mtimes, format, options) in ``<data folder>/.fastbind-cache/``; when the data
folder is read-only they go under ``<cache_dir>/encoded/`` instead. A changed source file
invalidates the entry; every file is written to a temp name and renamed into place, the
meta last, so a crash never leaves an entry that looks complete.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastbind.data.download import SOURCES, DownloadError, fetch_dataset
from fastbind.data.vocab import EOS, UNK, Vocabulary
from fastbind._io import atomic_write
from fastbind.errors import UserError

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
CACHE_FOLDER = ".fastbind-cache"
_CACHE_VERSION = 1
_BLOCK_CHARS = 1 << 22  # ~4M characters of whole lines per block: bounded memory, few Python calls
_PROGRESS_BYTES = 64 << 20  # show a progress bar only for files this large

# ---------------------------------------------------------------------------- Corpus


@dataclass
class Corpus:
    """A tokenized corpus, ready for batching.

    Attributes:
        name: e.g. ``"wikitext-2"``, ``"ptb"``, ``"synthetic"``.
        vocab: the :class:`Vocabulary`; ids index it.
        train: ``(N_train,)`` int64 token ids, ``<eos>`` at every line end.
        valid: ``(N_valid,)`` int64 token ids.
        test: ``(N_test,)`` int64 token ids.
        train_counts: ``(len(vocab),)`` int64, occurrences of each id in ``train`` (for
            frequency buckets).
        entropy: for synthetic corpora only, split -> mean ``-log p_gen(w_t | history)`` in
            nats/token, the irreducible cross-entropy; ``None`` for real text.
    """

    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_counts: torch.Tensor
    entropy: dict[str, float] | None = None

    @classmethod
    def from_arrays(
        cls,
        name: str,
        vocab: Vocabulary,
        arrays: Mapping[str, np.ndarray],
        entropy: dict[str, float] | None = None,
    ) -> Corpus:
        """Wrap integer id arrays (any int dtype, shape ``(N,)``) as int64 tensors."""
        splits = {}
        for s in SPLITS:
            a = np.asarray(arrays[s]).reshape(-1)
            if a.dtype != np.int64 or not a.flags.writeable:  # e.g. an int32 memory-mapped cache file
                a = a.astype(np.int64)
            splits[s] = torch.from_numpy(a)
        counts = torch.bincount(splits["train"], minlength=len(vocab))
        return cls(name, vocab, splits["train"], splits["valid"], splits["test"], counts, entropy)

    def split(self, name: str) -> torch.Tensor:
        """The ``(N,)`` id tensor of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
        return getattr(self, name)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s)):,}" for s in SPLITS)
        ent = "" if self.entropy is None else ", entropy=" + str({k: round(v, 4) for k, v in self.entropy.items()})
        return f"Corpus(name={self.name!r}, vocab={len(self.vocab):,}, {sizes}{ent})"


# ---------------------------------------------------------------------------- line files


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


def _encode_line_files(
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


# ---------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$FASTBIND_DATA`` if set, else ``~/.cache/fastbind``."""
    env = os.environ.get("FASTBIND_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastbind"


def _writable(folder: Path) -> bool:
    # Check the permission bits as well as access(): a root process may write anywhere, but
    # a folder marked read-only (e.g. a shared data mount) should still be left alone.
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)


def _digest(obj: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _cache_slot(folder: Path, label: str, cache_dir: Path | None) -> Path:
    """Folder for one encoded variant of the data in ``folder``."""
    folder = folder.resolve()
    if _writable(folder):
        return folder / CACHE_FOLDER / label
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "encoded" / f"{folder.name}-{_digest(str(folder))}" / label


def _source_stats(files: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for p in files:
        st = p.stat()
        out.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _load_cached(slot: Path, key: dict[str, Any]) -> tuple[Vocabulary, dict[str, np.ndarray]] | None:
    meta_path = slot / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != _CACHE_VERSION or meta.get("key") != key:
            return None
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
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None  # missing or damaged entry: rebuild


def _save_cached(slot: Path, key: dict[str, Any], vocab: Vocabulary, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        slot.mkdir(parents=True, exist_ok=True)
        (slot / "meta.json").unlink(missing_ok=True)  # the entry is incomplete until meta is back
        for s in SPLITS:
            atomic_write(slot / f"{s}.npy", lambda f, a=arrays[s]: np.save(f, a, allow_pickle=False))
        vocab.save(slot / "vocab.txt")
        meta = {
            "version": _CACHE_VERSION,
            "key": key,
            "vocab_size": len(vocab),
            "lengths": {s: int(len(arrays[s])) for s in SPLITS},
        }
        atomic_write(slot / "meta.json", lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
    except OSError as e:
        warnings.warn(f"could not write the encoded-corpus cache in {slot}: {e}", stacklevel=3)


def _cached_build(
    slot: Path | None, key: dict[str, Any], build: Callable[[], tuple[Vocabulary, dict[str, np.ndarray]]]
) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    key = json.loads(json.dumps(key, sort_keys=True))  # compare exactly what the meta file stores
    if slot is not None:
        hit = _load_cached(slot, key)
        if hit is not None:
            return hit
    vocab, arrays = build()
    if slot is not None:
        _save_cached(slot, key, vocab, arrays)
        hit = _load_cached(slot, key)
        if hit is not None:  # hand back the memory-mapped copy so the in-memory int32 arrays are freed
            return hit
    return vocab, arrays


def _read_line_corpus(
    name: str,
    fmt: str,
    folder: Path,
    paths: Mapping[str, Path],
    *,
    min_count: int,
    cache: bool,
    cache_dir: Path | None,
) -> Corpus:
    for s in SPLITS:
        _check_file(paths[s])
    options = {"format": fmt, "min_count": min_count, "files": {s: paths[s].name for s in SPLITS}}
    key = {**options, "sources": _source_stats([paths[s] for s in SPLITS])}
    slot = _cache_slot(folder, f"{fmt}-{_digest(options)}", cache_dir) if cache else None
    vocab, arrays = _cached_build(slot, key, lambda: _encode_line_files(paths, min_count=min_count))
    return Corpus.from_arrays(name, vocab, arrays)


# ---------------------------------------------------------------------------- WikiText / PTB


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
        cache: use the on-disk encoding cache.
        cache_dir: where the cache goes if ``folder`` is read-only (default
            :func:`default_cache_dir`).

    Returns:
        The :class:`Corpus`; WikiText-2 has 2,088,628 / 217,646 / 245,569 tokens and a
        vocabulary of 33,278.
    """
    folder = Path(folder)
    return _read_line_corpus(
        name or folder.resolve().name, "wikitext", folder, _wikitext_paths(folder),
        min_count=min_count, cache=cache, cache_dir=None if cache_dir is None else Path(cache_dir),
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
        name, "ptb", folder, {s: folder / f"ptb.{s}.txt" for s in SPLITS},
        min_count=min_count, cache=cache, cache_dir=None if cache_dir is None else Path(cache_dir),
    )


# ---------------------------------------------------------------------------- Gutenberg

_START_MARK = re.compile(r"START OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK", re.IGNORECASE)
_END_MARK = re.compile(r"END OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK", re.IGNORECASE)

# Regex fallback tokenizer (used when NLTK or its punkt models are unavailable).
# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace and a
# capital letter, possibly behind an opening quote or bracket.
_SENT_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]*[A-Z])")
_LAST_WORD = re.compile(r"(\w+)\.$")
# Words: runs of letters/digits with internal apostrophes or hyphens; any other non-space
# character (punctuation, underscore) is a token of its own.
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*|[^\w\s]|_")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev hon gen col capt lt sgt messrs mme mlle vs viz cf esq no vol ch".split()
)


def strip_gutenberg_header(text: str) -> str:
    """Keep the text between the START and END markers of a Project Gutenberg file.

    Both ``START OF THIS PROJECT GUTENBERG EBOOK`` (as in the paper's script) and the newer
    ``... THE PROJECT GUTENBERG EBOOK`` are recognised, case-insensitively; the marker lines
    themselves are dropped. Without a START marker the text starts at the beginning, without
    an END marker it runs to the end.
    """
    start = 0
    m = _START_MARK.search(text)
    if m:
        nl = text.find("\n", m.end())
        start = len(text) if nl < 0 else nl + 1
    end = len(text)
    m = _END_MARK.search(text, start)
    if m:
        end = text.rfind("\n", start, m.start()) + 1 or start
    return text[start:end]


def regex_sentences(text: str) -> list[str]:
    """Split text into sentences without NLTK (the documented fallback).

    A boundary is ``.``, ``!`` or ``?`` (with any closing quotes/brackets) followed by
    whitespace and a capital letter (possibly after an opening quote); a ``.`` after a single
    letter (an initial) or a common abbreviation (Mr, Mrs, Dr, St, ...) is not a boundary.
    """
    out: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        if m.group().startswith(".") and not m.group().startswith(".."):
            w = _LAST_WORD.search(text, max(0, m.start() - 12), m.start() + 1)
            if w and (len(w.group(1)) == 1 and w.group(1).isalpha() or w.group(1).lower() in _ABBREVIATIONS):
                continue
        sent = text[start : m.end()].strip()
        if sent:
            out.append(sent)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def regex_words(sentence: str) -> list[str]:
    """Word-tokenize a sentence without NLTK: words (with internal ``'``/``-``) and single
    punctuation marks."""
    return _WORD.findall(sentence)


def _tokenizer(kind: str) -> tuple[str, Callable[[str], list[str]], Callable[[str], list[str]]]:
    """Resolve ``auto``/``nltk``/``regex`` to (id recorded in the cache key, sent, word)."""
    if kind not in ("auto", "nltk", "regex"):
        raise UserError(f"unknown tokenizer {kind!r} (expected auto, nltk or regex)")
    if kind != "regex":
        try:
            import nltk

            nltk.sent_tokenize("A probe. Another one.")
            nltk.word_tokenize("A probe.")
            return f"nltk-{getattr(nltk, '__version__', '?')}", nltk.sent_tokenize, nltk.word_tokenize
        except ImportError:
            if kind == "nltk":
                raise UserError("tokenizer='nltk' needs the nltk package: pip install nltk") from None
        except LookupError:
            if kind == "nltk":
                raise UserError(
                    "tokenizer='nltk' needs NLTK's punkt models: python -m nltk.downloader punkt punkt_tab"
                ) from None
    return "regex-1", regex_sentences, regex_words


def tokenize_book(
    text: str,
    sent_tokenize: Callable[[str], list[str]] = regex_sentences,
    word_tokenize: Callable[[str], list[str]] = regex_words,
) -> Iterator[str]:
    """Pre-process one book as in Rae et al. (2018), appendix A.5.

    Strips the Gutenberg header/footer, replaces newlines with spaces, splits sentences and
    words, lower-cases, and yields one sentence per item as space-joined tokens.
    """
    body = strip_gutenberg_header(text).replace("\r", " ").replace("\n", " ")
    for sentence in sent_tokenize(body):
        words = word_tokenize(sentence)
        if words:
            yield " ".join(words).lower()


def _book_name(member: str) -> str:
    name = member.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".txt") else name


def _is_book(member: str) -> bool:
    base = member.replace("\\", "/").rsplit("/", 1)[-1]
    return (
        base.lower().endswith(".txt")
        and not base.upper().startswith("README")
        and not base.startswith(".")
        and "__MACOSX/" not in member
    )


def _gutenberg_books(source: Path) -> tuple[dict[str, Callable[[], bytes]], list[Path], Path]:
    """Map book name -> reader of its bytes; also the files to stat and the cache folder."""
    import zipfile

    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and _is_book(p.name))
        if not files:
            zips = sorted(source.glob("*.zip"))
            if len(zips) == 1:
                return _gutenberg_books(zips[0])
            raise UserError(f"no books in {source}: put Project Gutenberg .txt files (or one .zip of them) there")
        books = {_book_name(p.name): (lambda p=p: p.read_bytes()) for p in files}
        if len(books) != len(files):
            raise UserError(f"duplicate book names in {source}")
        return books, files, source
    if source.is_file() and source.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(source) as zf:
                members = sorted(i.filename for i in zf.infolist() if not i.is_dir() and _is_book(i.filename))
        except zipfile.BadZipFile:
            raise UserError(f"{source} is not a valid zip file") from None
        if not members:
            raise UserError(f"no .txt books in {source}")

        def reader(member: str) -> Callable[[], bytes]:
            def read() -> bytes:
                with zipfile.ZipFile(source) as zf:
                    return zf.read(member)

            return read

        books = {_book_name(m): reader(m) for m in members}
        if len(books) != len(members):
            raise UserError(f"duplicate book names in {source}")
        return books, [source], source.parent
    raise UserError(f"Gutenberg source {source} is neither a folder of .txt books nor a .zip")


def split_books(
    names: Sequence[str],
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    valid_books: Sequence[str] | None = None,
    test_books: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Assign books to train/valid/test deterministically.

    Books are ordered by the SHA-1 of their name (a fixed pseudo-random shuffle, as the
    paper shuffles book ids, that does not depend on which other books are present). Test
    takes the first ``max(1, round(test_fraction * n))`` books, valid the next
    ``max(1, round(valid_fraction * n))``, train the rest. ``valid_books``/``test_books``
    (names without ``.txt``) override the rule for that split. Needs at least 3 books.

    Returns:
        split -> sorted list of book names.
    """
    names = sorted(set(names))
    if len(names) < 3:
        raise UserError(f"need at least 3 books to make train/valid/test splits, found {len(names)}")
    for frac, label in ((valid_fraction, "valid_fraction"), (test_fraction, "test_fraction")):
        if not 0.0 <= frac < 1.0:
            raise UserError(f"{label} must be in [0, 1), got {frac}")
    known = set(names)
    fixed: dict[str, list[str]] = {}
    for split, given in (("test", test_books), ("valid", valid_books)):
        if given is not None:
            unknown = [b for b in given if b not in known]
            if unknown:
                raise UserError(f"{split}_books names unknown books: {', '.join(unknown)}")
            fixed[split] = sorted(set(given))
    taken = {b for v in fixed.values() for b in v}
    if "test" in fixed and "valid" in fixed and set(fixed["test"]) & set(fixed["valid"]):
        raise UserError("a book is in both valid_books and test_books")
    order = [b for b in sorted(names, key=lambda b: hashlib.sha1(b.encode()).hexdigest()) if b not in taken]
    n = len(names)
    out: dict[str, list[str]] = {}
    for split, frac in (("test", test_fraction), ("valid", valid_fraction)):
        if split in fixed:
            out[split] = fixed[split]
        else:
            k = max(1, round(frac * n))
            out[split], order = sorted(order[:k]), order[k:]
    out["train"] = sorted(order)
    for s in SPLITS:
        if not out[s]:
            raise UserError(f"the {s} split of the books is empty; adjust the split options")
    return {s: out[s] for s in SPLITS}


def read_gutenberg(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    min_count: int = 5,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    valid_books: Sequence[str] | None = None,
    test_books: Sequence[str] | None = None,
    tokenizer: str = "auto",
    encoding: str = "latin-1",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Read Project Gutenberg books (a folder of ``.txt`` or a ``.zip``) as a corpus.

    Pre-processing follows Rae et al. (2018), appendix A.5: text between the START/END
    markers (the whole file without them), newlines replaced by spaces, NLTK
    ``sent_tokenize``/``word_tokenize`` when ``nltk`` and its punkt models are installed,
    otherwise :func:`regex_sentences`/:func:`regex_words`; lower-cased; one sentence per
    line. ``README*`` files are skipped. Books are split with :func:`split_books`; the
    vocabulary is every training word seen at least ``min_count`` times, the rest ``<unk>``.

    Args:
        source: a folder of books, or a ``.zip`` of them (e.g. NLTK's ``gutenberg.zip``).
        name: corpus name (default ``"gutenberg"``).
        min_count: vocabulary threshold on training counts (the paper uses 5).
        valid_fraction, test_fraction, valid_books, test_books: see :func:`split_books`.
        tokenizer: ``"auto"`` (NLTK if usable, else regex), ``"nltk"`` or ``"regex"``.
        encoding: text encoding of the books (NLTK's selection is latin-1).
        cache: use the on-disk encoding cache.
        cache_dir: where the cache goes if the books' folder is read-only.
    """
    source = Path(source)
    books, stat_files, folder = _gutenberg_books(source)
    splits = split_books(
        list(books), valid_fraction=valid_fraction, test_fraction=test_fraction,
        valid_books=valid_books, test_books=test_books,
    )
    tok_id, sent_tok, word_tok = _tokenizer(tokenizer)
    options = {
        "format": "gutenberg", "source": source.name, "min_count": min_count, "splits": splits,
        "tokenizer": tok_id, "encoding": encoding,
    }
    key = {**options, "sources": _source_stats(stat_files)}
    cache_root = None
    slot = None
    if cache:
        slot = _cache_slot(folder, f"gutenberg-{_digest(options)}", None if cache_dir is None else Path(cache_dir))
        cache_root = slot.parent

    def build() -> tuple[Vocabulary, dict[str, np.ndarray]]:
        tmp_parent = None
        if cache_root is not None:
            try:
                cache_root.mkdir(parents=True, exist_ok=True)
                tmp_parent = cache_root
            except OSError:
                tmp_parent = None
        with tempfile.TemporaryDirectory(prefix="gutenberg-", dir=tmp_parent) as tmp:
            paths = {}
            for s in SPLITS:
                paths[s] = Path(tmp) / f"{s}.txt"
                with open(paths[s], "w", encoding="utf-8", newline="\n") as out:
                    for book in splits[s]:  # one book in memory at a time
                        try:
                            text = books[book]().decode(encoding)
                        except (UnicodeDecodeError, LookupError) as e:
                            raise UserError(f"cannot decode book {book} as {encoding}: {e}") from None
                        for line in tokenize_book(text, sent_tok, word_tok):
                            out.write(line)
                            out.write("\n")
                if paths[s].stat().st_size == 0:
                    raise UserError(f"the {s} books ({', '.join(splits[s])}) contain no text")
            return _encode_line_files(paths, min_count=min_count)

    vocab, arrays = _cached_build(slot, key, build)
    return Corpus.from_arrays(name or "gutenberg", vocab, arrays)


# ---------------------------------------------------------------------------- entry point

#: Named data sets: name -> format. They live in ``<cache_dir>/<name>/``.
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
    if any(_is_book(p.name) for p in path.iterdir() if p.is_file()) or len(list(path.glob("*.zip"))) == 1:
        return "gutenberg"
    raise UserError(
        f"cannot tell the format of {path}: expected wiki.{{train,valid,test}}.tokens, "
        "{train,valid,test}.txt, ptb.{train,valid,test}.txt, or Gutenberg .txt books / a .zip"
    )


_READERS: dict[str, Callable[..., Corpus]] = {"wikitext": read_wikitext, "ptb": read_ptb, "gutenberg": read_gutenberg}


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    allowed = set(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} for {fn.__name__} (allowed: {', '.join(sorted(allowed))})"
        )
    return fn(*args, **kwargs)


def _has_files(folder: Path, fmt: str) -> bool:
    if fmt == "wikitext":
        return all((folder / f"wiki.{s}.tokens").is_file() for s in SPLITS) or all(
            (folder / f"{s}.txt").is_file() for s in SPLITS
        )
    return all((folder / f"ptb.{s}.txt").is_file() for s in SPLITS)


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
        cache_dir: data/cache root (default ``$FASTBIND_DATA`` or ``~/.cache/fastbind``);
            encoded caches of read-only data folders go under it too.
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
        from fastbind.data.synthetic import SyntheticConfig, generate

        cfg = _call(SyntheticConfig, **options)
        return generate(cfg, seed)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if key in DATASETS:
        fmt = DATASETS[key]
        folder = root / key
        if fmt == "gutenberg":
            if not folder.is_dir():
                raise UserError(
                    f"no Gutenberg books in {folder}: put .txt books or a .zip of them there, or pass their path"
                )
            return _call(read_gutenberg, folder, cache_dir=root, **{"name": "gutenberg", **options})
        if not _has_files(folder, fmt):
            files = ", ".join(SOURCES[key].files)
            if not download:
                raise UserError(f"{key} is not in {folder}: put {files} there (downloads are disabled)")
            try:
                fetch_dataset(key, folder)
            except DownloadError as e:
                raise UserError(str(e)) from None
        return _call(_READERS[fmt], folder, cache_dir=root, **{"name": key, **options})
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(
            f"unknown corpus {text!r}: not one of synthetic, {', '.join(DATASETS)} and no such path"
        )
    fmt = detect_format(path)
    return _call(_READERS[fmt], path, cache_dir=root, **options)
