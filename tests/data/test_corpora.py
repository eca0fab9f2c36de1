from __future__ import annotations

import dataclasses
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch

from fastbind.data import Corpus, detect_format, load_corpus, read_gutenberg, read_ptb, read_wikitext
from fastbind.data import cache, gutenberg, linefiles
from fastbind.data import download as dl
from fastbind.data.gutenberg import regex_sentences, regex_words, split_books, strip_gutenberg_header, tokenize_book
from fastbind.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

WIKI = {
    "train": " = Title = \n\n a b <unk> a \n c\n",
    "valid": "a zzz\n",
    "test": "b",  # no final newline: the line still gets its <eos>
}


def _write_splits(folder: Path, pattern: str, texts: dict[str, str] = WIKI) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (folder / pattern.format(split)).write_text(text, encoding="utf-8")
    return folder


def _decode(corpus: Corpus, split: str) -> list[str]:
    return corpus.vocab.decode(corpus.split(split))


# ---------------------------------------------------------------------------- line formats


@pytest.mark.parametrize("pattern", ["wiki.{}.tokens", "{}.txt"])
def test_wikitext_round_trip(tmp_path, pattern):
    folder = _write_splits(tmp_path / "wt", pattern)
    c = read_wikitext(folder)
    assert c.name == "wt"
    assert _decode(c, "train") == "= Title = <eos> <eos> a b <unk> a <eos> c <eos>".split()
    assert _decode(c, "valid") == ["a", "<unk>", "<eos>"]
    assert _decode(c, "test") == ["b", "<eos>"]
    # specials first, then by count (ties by token): the documented deterministic order
    assert c.vocab.itos == ["<eos>", "<unk>", "=", "a", "Title", "b", "c"]
    for split in ("train", "valid", "test"):
        t = c.split(split)
        assert t.dtype == torch.int64 and t.ndim == 1
    assert c.train_counts.dtype == torch.int64 and c.train_counts.shape == (len(c.vocab),)
    assert c.train_counts.tolist() == [4, 1, 2, 2, 1, 1, 1]
    assert c.entropy is None
    assert "train=12" in repr(c)


def test_ptb_round_trip_and_format_detection(tmp_path):
    folder = _write_splits(tmp_path / "p", "ptb.{}.txt", {"train": "x y\ny <unk>\n", "valid": "y\n", "test": "q x\n"})
    c = read_ptb(folder)
    assert c.name == "ptb"
    assert _decode(c, "train") == "x y <eos> y <unk> <eos>".split()
    assert _decode(c, "test") == ["<unk>", "x", "<eos>"]
    assert detect_format(folder) == "ptb"
    assert detect_format(_write_splits(tmp_path / "w1", "wiki.{}.tokens")) == "wikitext"
    assert detect_format(_write_splits(tmp_path / "w2", "{}.txt")) == "wikitext"
    assert torch.equal(load_corpus(folder, cache_dir=tmp_path / "cache").train, c.train)


def test_missing_and_empty_files_name_the_file(tmp_path):
    folder = _write_splits(tmp_path / "p", "ptb.{}.txt", {"train": "a\n", "valid": "a\n"})
    with pytest.raises(UserError, match=r"ptb\.test\.txt"):
        read_ptb(folder)
    (folder / "ptb.test.txt").write_text("")
    with pytest.raises(UserError, match=r"ptb\.test\.txt is empty"):
        read_ptb(folder)
    with pytest.raises(UserError, match="wiki.train.tokens"):
        read_wikitext(tmp_path / "nothing-here")


def test_bad_specs_and_options(tmp_path):
    with pytest.raises(UserError, match="unknown corpus"):
        load_corpus("no-such-corpus-or-path", cache_dir=tmp_path)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "data.csv").write_text("1,2\n")
    with pytest.raises(UserError, match="cannot tell the format"):
        load_corpus(tmp_path / "odd", cache_dir=tmp_path)
    folder = _write_splits(tmp_path / "wt", "{}.txt")
    with pytest.raises(UserError, match="unknown option.*bogus"):
        load_corpus(folder, cache_dir=tmp_path, bogus=1)
    with pytest.raises(UserError, match="unknown split"):
        read_wikitext(folder).split("dev")


# ---------------------------------------------------------------------------- cache


def _snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every path under a data folder with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_cache_hit_identical_and_invalidated_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBIND_CACHE", str(tmp_path / "cache"))
    folder = _write_splits(tmp_path / "wt", "wiki.{}.tokens")
    first = read_wikitext(folder)
    assert len(list((tmp_path / "cache" / "encoded").glob("wt-*/*/meta.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("re-encoded despite a valid cache")

    real_encode = linefiles.encode_line_files
    monkeypatch.setattr(linefiles, "encode_line_files", boom)
    second = read_wikitext(folder)
    for split in ("train", "valid", "test"):
        assert torch.equal(first.split(split), second.split(split))
    assert second.vocab == first.vocab and torch.equal(second.train_counts, first.train_counts)

    # A changed source must be re-encoded.
    (folder / "wiki.train.tokens").write_text(WIKI["train"] + " d d\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="re-encoded"):
        read_wikitext(folder)
    monkeypatch.setattr(linefiles, "encode_line_files", real_encode)
    third = read_wikitext(folder)
    assert _decode(third, "train")[-4:] == ["<eos>", "d", "d", "<eos>"] and "d" in third.vocab

    # A damaged entry is rebuilt, not trusted.
    slot = next((tmp_path / "cache").rglob("meta.json")).parent
    (slot / "train.npy").write_bytes(b"garbage")
    assert torch.equal(read_wikitext(folder).train, third.train)
    assert not list(slot.glob(".*.tmp"))  # atomic writes leave no temp files behind
    assert sorted(p.name for p in folder.iterdir()) == [f"wiki.{s}.tokens" for s in ("test", "train", "valid")]


@pytest.mark.parametrize("mode", [0o755, 0o555], ids=["writable", "read-only"])
def test_cache_goes_to_the_cache_folder_never_into_the_data_folder(tmp_path, mode):
    folder = _write_splits(tmp_path / "ro", "{}.txt")
    before = _snapshot(folder)
    folder.chmod(mode)
    try:
        c = read_wikitext(folder, cache_dir=tmp_path / "cache")
        assert _snapshot(folder) == before
        assert len(list((tmp_path / "cache" / "encoded").glob("ro-*/*/meta.json"))) == 1
        assert torch.equal(read_wikitext(folder, cache_dir=tmp_path / "cache").train, c.train)
    finally:
        folder.chmod(0o755)
    nc = _write_splits(tmp_path / "nc", "{}.txt")
    before = _snapshot(nc)
    read_wikitext(nc, cache=False, cache_dir=tmp_path / "nc-cache")
    assert _snapshot(nc) == before and not (tmp_path / "nc-cache").exists()


def test_cache_and_data_folders(tmp_path, monkeypatch):
    for var in ("FASTBIND_CACHE", "FASTBIND_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".cache" / "fastbind"
    assert cache.default_cache_dir() == home and cache.default_data_dir() == home
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache.default_cache_dir() == home
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "fastbind" and cache.default_data_dir() == home
    monkeypatch.setenv("FASTBIND_DATA", str(tmp_path / "data"))  # the cache follows data moved by the user
    assert cache.default_cache_dir() == tmp_path / "data" and cache.default_data_dir() == tmp_path / "data"
    monkeypatch.setenv("FASTBIND_CACHE", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c" and cache.default_data_dir() == tmp_path / "data"
    # An explicit data_dir holds the named sets and the cache, whatever the environment says.
    folder = _write_splits(tmp_path / "p", "ptb.{}.txt")
    load_corpus(folder, cache_dir=tmp_path / "explicit")
    assert list((tmp_path / "explicit" / "encoded").glob("p-*/ptb-*/meta.json"))
    load_corpus(folder)
    assert list((tmp_path / "c" / "encoded").glob("p-*/ptb-*/meta.json"))
    assert not (tmp_path / "home").exists() and not (tmp_path / "xdg").exists()


# ---------------------------------------------------------------------------- Gutenberg

MARKED = (
    "The Project Gutenberg EBook of Something, licence junk\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n"
    "It was a dark night.  The END came quickly!\n"
    "Mr. Smith said \"Hello there.\"  Then he left, didn't he?\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n"
    "More licence junk.\n"
)
PLAIN = "[A Plain Book 1900]\n\nCHAPTER I\n\nAlice met Bob.  Bob met\nAlice again.\n"


def test_strip_and_tokenize_book():
    body = strip_gutenberg_header(MARKED)
    assert "junk" not in body and "START OF" not in body and body.startswith("It was")
    assert strip_gutenberg_header(PLAIN) == PLAIN
    assert strip_gutenberg_header(MARKED.replace("THIS", "THE")) == body  # newer marker wording
    lines = list(tokenize_book(MARKED))
    assert lines == [
        "it was a dark night .",
        "the end came quickly !",
        'mr . smith said " hello there . "',
        "then he left , didn't he ?",
    ]
    assert list(tokenize_book(PLAIN)) == ["[ a plain book 1900 ] chapter i alice met bob .", "bob met alice again ."]
    assert regex_sentences("See G. K. Chesterton. He wrote.") == ["See G. K. Chesterton.", "He wrote."]
    assert regex_words("well-known _word_ 1,000") == ["well-known", "_", "word", "_", "1", ",", "000"]


def _books(n: int) -> dict[str, str]:
    books = {}
    for i in range(n):
        text = f"Book number {i} starts. Common words appear here. Common words appear again. Name{i} is here.\n"
        books[f"book{i:02d}.txt"] = MARKED.replace("It was a dark night.", text) if i % 2 else PLAIN + text
    return books


def test_split_books_rule():
    names = [f"b{i}" for i in range(15)]
    s = split_books(names)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [11, 2, 2]
    assert s == split_books(list(reversed(names)))  # independent of input order
    assert set().union(*s.values()) == set(names)
    three = split_books(["x", "y", "z"])
    assert all(len(v) == 1 for v in three.values())
    fixed = split_books(names, test_books=["b3"], valid_books=["b4", "b5"])
    assert fixed["test"] == ["b3"] and fixed["valid"] == ["b4", "b5"] and len(fixed["train"]) == 12
    with pytest.raises(UserError, match="at least 3 books"):
        split_books(["x", "y"])
    with pytest.raises(UserError, match="unknown books: nope"):
        split_books(names, test_books=["nope"])


@pytest.fixture
def gutenberg_folder(tmp_path) -> Path:
    folder = tmp_path / "books"
    folder.mkdir()
    for name, text in _books(6).items():
        (folder / name).write_text(text, encoding="latin-1")
    (folder / "README").write_text("not a book")
    (folder / "README.txt").write_text("not a book either")
    return folder


def test_gutenberg_folder_and_zip(gutenberg_folder, tmp_path):
    c = read_gutenberg(gutenberg_folder, min_count=1, tokenizer="regex", test_books=["book01"], valid_books=["book02"])
    assert c.name == "gutenberg"
    test_text = " ".join(_decode(c, "test"))
    assert "book number <unk> starts . <eos>" in test_text  # "1" occurs in the test book only
    assert "junk" not in test_text and "readme" not in c.vocab.itos
    assert "name1" not in c.vocab  # test-only word -> <unk>
    assert "<unk>" in _decode(c, "test")
    assert all(len(c.split(s)) for s in ("train", "valid", "test"))
    # The same books zipped (under a folder, with README and a macOS resource fork) read identically.
    zpath = tmp_path / "books.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(gutenberg_folder.iterdir()):
            zf.write(p, f"gutenberg/{p.name}")
        zf.writestr("__MACOSX/gutenberg/._book00.txt", "junk")
    z = load_corpus(zpath, cache_dir=tmp_path / "cache", min_count=1, tokenizer="regex",
                    test_books=["book01"], valid_books=["book02"])
    assert z.vocab == c.vocab
    for s in ("train", "valid", "test"):
        assert torch.equal(z.split(s), c.split(s))
    assert detect_format(gutenberg_folder) == "gutenberg" and detect_format(zpath) == "gutenberg"


def test_gutenberg_min_count(gutenberg_folder):
    c = read_gutenberg(gutenberg_folder, tokenizer="regex", min_count=5)
    counts = dict(zip(c.vocab.itos, c.train_counts.tolist(), strict=True))
    assert all(n >= 5 for t, n in counts.items() if t not in ("<eos>", "<unk>"))
    assert counts["common"] >= 5 and "name0" not in c.vocab
    uncached = read_gutenberg(gutenberg_folder, tokenizer="regex", min_count=5, cache=False)
    assert uncached.vocab == c.vocab and torch.equal(uncached.test, c.test)


def test_gutenberg_tokenizer_choice(gutenberg_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # not installed
    assert gutenberg._tokenizer("auto")[0].startswith("regex")
    with pytest.raises(UserError, match="pip install nltk"):
        gutenberg._tokenizer("nltk")

    def missing(*a, **k):
        raise LookupError("Resource punkt not found.")

    monkeypatch.setitem(sys.modules, "nltk", types.SimpleNamespace(sent_tokenize=missing, word_tokenize=missing))
    assert gutenberg._tokenizer("auto")[0].startswith("regex")
    with pytest.raises(UserError, match="punkt"):
        gutenberg._tokenizer("nltk")

    fake = types.SimpleNamespace(__version__="0-fake", sent_tokenize=lambda t: [t], word_tokenize=str.split)
    monkeypatch.setitem(sys.modules, "nltk", fake)
    assert gutenberg._tokenizer("auto")[0] == "nltk-0-fake"
    regex = read_gutenberg(gutenberg_folder, min_count=1, tokenizer="regex")
    fake_nltk = read_gutenberg(gutenberg_folder, min_count=1)  # auto -> the (fake) NLTK; not the regex cache entry
    assert len(fake_nltk.train) < len(regex.train)  # one "sentence" per book, whitespace words
    with pytest.raises(UserError, match="unknown tokenizer"):
        read_gutenberg(gutenberg_folder, tokenizer="spacy")


def test_gutenberg_errors(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name, text in list(_books(2).items()):
        (folder / name).write_text(text)
    with pytest.raises(UserError, match="at least 3 books"):
        read_gutenberg(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no books in"):
        read_gutenberg(tmp_path / "empty")


# ---------------------------------------------------------------------------- named data sets


def test_named_dataset_from_data_dir_and_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBIND_DATA", str(tmp_path / "store"))
    assert cache.default_data_dir() == tmp_path / "store"
    _write_splits(tmp_path / "store" / "ptb", "ptb.{}.txt")
    assert load_corpus("ptb").name == "ptb"
    assert load_corpus("penn-treebank").name == "ptb"

    # Missing WikiText-2 is fetched from its source: here a zip served by a file:// URL.
    zpath = tmp_path / "wt2.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for split, text in WIKI.items():
            zf.writestr(f"wikitext-2/wiki.{split}.tokens", text)
    src = dataclasses.replace(dl.SOURCES["wikitext-2"], urls=(zpath.as_uri(),), digests={})
    monkeypatch.setitem(dl.SOURCES, "wikitext-2", src)
    c = load_corpus("wikitext-2")
    assert c.name == "wikitext-2" and _decode(c, "valid") == ["a", "<unk>", "<eos>"]
    assert (tmp_path / "store" / "wikitext-2" / "wiki.train.tokens").is_file()


def test_named_dataset_offline_is_one_line_user_error(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = dataclasses.replace(dl.SOURCES["ptb"], urls=(f"http://127.0.0.1:{port}/simple-examples.tgz",))
    monkeypatch.setitem(dl.SOURCES, "ptb", src)
    with pytest.raises(UserError) as e:
        load_corpus("ptb", cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "ptb") in msg
    assert "ptb.train.txt, ptb.valid.txt, ptb.test.txt" in msg
    with pytest.raises(UserError, match="downloads are disabled"):
        load_corpus("ptb", cache_dir=tmp_path, download=False)
    with pytest.raises(UserError, match="Gutenberg"):
        load_corpus("gutenberg", cache_dir=tmp_path)


# ---------------------------------------------------------------------------- real data


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is not present")
    return path


def test_real_wikitext2(tmp_path):
    folder = _shared("wikitext-2")
    before = _snapshot(folder)
    t0 = time.perf_counter()
    c = load_corpus(folder, cache_dir=tmp_path)
    cold = time.perf_counter() - t0
    assert (len(c.train), len(c.valid), len(c.test)) == (2_088_628, 217_646, 245_569)
    assert len(c.vocab) == 33_278
    assert int(c.train_counts.sum()) == len(c.train)
    assert int(c.train_counts[c.vocab.eos_id]) == 36_718  # one <eos> per line
    assert _decode(c, "train")[:6] == ["<eos>", "=", "Valkyria", "Chronicles", "III", "="]
    assert _snapshot(folder) == before  # the data folder stays untouched, writable or not
    assert list(tmp_path.rglob("meta.json"))  # the encoded copy went to the cache folder instead
    t0 = time.perf_counter()
    warm = load_corpus(folder, cache_dir=tmp_path)
    hot = time.perf_counter() - t0
    assert torch.equal(warm.train, c.train) and torch.equal(warm.test, c.test)
    print(f"WikiText-2 encode: cold {cold:.2f}s, cached {hot:.3f}s")


def test_real_ptb(tmp_path):
    before = _snapshot(_shared("ptb"))
    c = load_corpus(_shared("ptb"), cache_dir=tmp_path)
    assert _snapshot(_shared("ptb")) == before and list(tmp_path.rglob("meta.json"))
    assert (len(c.train), len(c.valid), len(c.test)) == (929_589, 73_760, 82_430)
    assert len(c.vocab) == 10_000
    # PTB's vocabulary is closed: valid/test need no extra <unk> mapping beyond the file's own.
    assert int((c.valid == c.vocab.unk_id).sum()) == sum(1 for w in (SHARED_DATA / "ptb" / "ptb.valid.txt")
                                                        .read_text().split() if w == "<unk>")


def test_real_gutenberg_zip(tmp_path):
    before = _snapshot(_shared("gutenberg"))
    c = load_corpus(_shared("gutenberg/gutenberg.zip"), cache_dir=tmp_path, tokenizer="regex")
    assert _snapshot(_shared("gutenberg")) == before and list(tmp_path.rglob("meta.json"))
    with zipfile.ZipFile(SHARED_DATA / "gutenberg/gutenberg.zip") as zf:
        names = zf.namelist()
    books = split_books([f.split("/")[-1][:-4] for f in names if f.endswith(".txt")])
    assert [len(books[s]) for s in ("train", "valid", "test")] == [11, 2, 2]
    assert all(len(c.split(s)) > 50_000 for s in ("train", "valid", "test"))
    assert 5_000 < len(c.vocab) < 50_000
    counts = c.train_counts.numpy()
    assert (counts[2:] >= 5).all()  # min_count 5 (after <eos>, <unk>)
    assert {"the", "whale", "."} <= set(c.vocab.itos)
