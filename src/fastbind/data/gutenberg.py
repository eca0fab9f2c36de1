"""Project Gutenberg books as a corpus, pre-processed as in Rae et al. (2018), appendix A.5.

A folder of ``.txt`` books or a ``.zip`` of them is split by book (:func:`split_books`),
each book stripped of its licence header and footer, sentence- and word-tokenized
(:func:`tokenize_book`), lower-cased and written one sentence per line, then encoded like
any line corpus (:mod:`fastbind.data.linefiles`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from fastbind.data.cache import digest, entry, source_stats
from fastbind.data.corpus import SPLITS, Corpus
from fastbind.data.linefiles import Encoded, cached_encoding, encode_line_files
from fastbind.errors import UserError

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


def is_book(member: str) -> bool:
    """Whether a file or zip member name is a book (``.txt``, not a README or macOS fork)."""
    base = member.replace("\\", "/").rsplit("/", 1)[-1]
    return (
        base.lower().endswith(".txt")
        and not base.upper().startswith("README")
        and not base.startswith(".")
        and "__MACOSX/" not in member
    )


def _gutenberg_books(source: Path) -> tuple[dict[str, Callable[[], bytes]], list[Path]]:
    """Map book name -> reader of its bytes; also the files whose changes invalidate the cache."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and is_book(p.name))
        if not files:
            zips = sorted(source.glob("*.zip"))
            if len(zips) == 1:
                return _gutenberg_books(zips[0])
            raise UserError(f"no books in {source}: put Project Gutenberg .txt files (or one .zip of them) there")
        books = {_book_name(p.name): (lambda p=p: p.read_bytes()) for p in files}
        if len(books) != len(files):
            raise UserError(f"duplicate book names in {source}")
        return books, files
    if source.is_file() and source.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(source) as zf:
                members = sorted(i.filename for i in zf.infolist() if not i.is_dir() and is_book(i.filename))
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
        return books, [source]
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
        cache: keep the encoded splits in the encoded-data cache.
        cache_dir: the cache folder (default :func:`~fastbind.data.cache.default_cache_dir`);
            the books' folder is never written to.
    """
    source = Path(source)
    books, stat_files = _gutenberg_books(source)
    splits = split_books(
        list(books), valid_fraction=valid_fraction, test_fraction=test_fraction,
        valid_books=valid_books, test_books=test_books,
    )
    tok_id, sent_tok, word_tok = _tokenizer(tokenizer)
    options = {
        "format": "gutenberg", "source": source.name, "min_count": min_count, "splits": splits,
        "tokenizer": tok_id, "encoding": encoding,
    }
    key = {**options, "sources": source_stats(stat_files)}
    slot = entry(source, f"gutenberg-{digest(options)}", cache_dir) if cache else None
    cache_root = None if slot is None else slot.parent

    def build() -> Encoded:
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
            return encode_line_files(paths, min_count=min_count)

    vocab, arrays = cached_encoding(slot, key, build)
    return Corpus.from_arrays(name or "gutenberg", vocab, arrays)
