"""split_text_file: the raw text of one split, for models with their own tokenizer."""

from __future__ import annotations

import pytest

from fastbind.data.corpora import split_text_file
from fastbind.errors import UserError


def test_files_folders_and_named_sets(tmp_path):
    file = tmp_path / "any.txt"
    file.write_text("a b c\n")
    assert split_text_file(file, "test") == file
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    for s in ("train", "valid", "test"):
        (wiki / f"wiki.{s}.tokens").write_text(f"{s} text\n")
    assert split_text_file(wiki, "valid") == wiki / "wiki.valid.tokens"
    named = tmp_path / "data" / "ptb"
    named.mkdir(parents=True)
    for s in ("train", "valid", "test"):
        (named / f"ptb.{s}.txt").write_text(f"{s} text\n")
    assert split_text_file("ptb", "train", tmp_path / "data", download=False) == named / "ptb.train.txt"
    assert split_text_file("penn-treebank", "test", tmp_path / "data", download=False) == named / "ptb.test.txt"


def test_errors(tmp_path):
    with pytest.raises(UserError, match="no such text file"):
        split_text_file(tmp_path / "missing.txt", "test")
    with pytest.raises(UserError, match="without split files"):
        split_text_file("gutenberg", "test", tmp_path)
    with pytest.raises(UserError, match="is not in"):
        split_text_file("wikitext-2", "test", tmp_path, download=False)
