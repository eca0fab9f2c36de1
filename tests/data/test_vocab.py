from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fastbind.data import Vocabulary
from fastbind.errors import UserError


def test_build_order_is_specials_unk_then_count_then_token():
    counts = Counter({"b": 3, "a": 3, "c": 5, "rare": 1, "<eos>": 100})
    v = Vocabulary.build(counts)
    assert v.itos == ["<eos>", "<unk>", "c", "a", "b", "rare"]
    assert v.eos_id == 0 and v.unk_id == 1
    assert v.stoi == {t: i for i, t in enumerate(v.itos)}
    # Same counts, different insertion order: same vocabulary.
    assert Vocabulary.build(Counter(dict(reversed(list(counts.items()))))) == v


def test_build_min_count_max_size_and_zero_counts():
    counts = Counter({"x": 5, "y": 4, "z": 1, "never": 0})
    assert Vocabulary.build(counts, min_count=4).itos == ["<eos>", "<unk>", "x", "y"]
    assert Vocabulary.build(counts, min_count=0).itos == ["<eos>", "<unk>", "x", "y", "z", "never"]
    assert Vocabulary.build(counts, max_size=3).itos == ["<eos>", "<unk>", "x"]
    closed = Vocabulary.build(counts, unk=None, specials=())
    assert closed.itos == ["x", "y", "z"] and closed.unk is None and closed.eos is None


def test_encode_decode_and_unknowns():
    v = Vocabulary.build(Counter("a b b c".split()))
    ids = v.encode(["b", "c", "zzz", "<eos>"])
    assert ids.dtype == np.int32 and ids.tolist() == [v.stoi["b"], v.stoi["c"], v.unk_id, v.eos_id]
    assert v.decode(ids) == ["b", "c", "<unk>", "<eos>"]
    assert v.decode(torch.as_tensor(ids)) == v.decode(ids.tolist())
    assert v.encode([]).shape == (0,)
    with pytest.raises(UserError, match="outside the vocabulary"):
        v.decode([len(v)])
    with pytest.raises(UserError, match="outside the vocabulary"):
        v.decode([-1])
    closed = Vocabulary(["a", "b"], unk=None)
    with pytest.raises(UserError, match="'zzz'.*no unknown token"):
        closed.encode(["a", "zzz"])


def test_invalid_tokens_are_refused():
    with pytest.raises(UserError, match="duplicate"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(UserError, match="newline"):
        Vocabulary(["a", "b\nc"])
    with pytest.raises(UserError, match="newline"):
        Vocabulary(["a", ""])


def test_save_load_round_trip(tmp_path):
    v = Vocabulary.build(Counter({"héllo": 3, "wörld": 2, "@-@": 2, "<eos>": 1}))
    file = v.save(tmp_path / "vocab_dir")
    assert file == tmp_path / "vocab_dir" / "vocab.txt"
    assert file.read_text(encoding="utf-8").split("\n")[:-1] == v.itos  # one token per line, id order
    assert Vocabulary.load(tmp_path / "vocab_dir") == v
    assert Vocabulary.load(file) == v
    other = v.save(tmp_path / "named.txt")
    assert other.name == "named.txt" and Vocabulary.load(other) == v
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic write leaves no temp file
    with pytest.raises(UserError, match="not found"):
        Vocabulary.load(tmp_path / "nope")


def test_digest_follows_tokens_and_their_order():
    a = Vocabulary(["<eos>", "<unk>", "the", "cat"])
    assert a.digest() == Vocabulary(["<eos>", "<unk>", "the", "cat"]).digest()
    assert a.digest() != Vocabulary(["<eos>", "<unk>", "cat", "the"]).digest()
    assert a.digest() != Vocabulary(["<eos>", "<unk>", "the", "cats"]).digest()


def test_check_checkpoint_returns_digest_or_names_both_sizes():
    v = Vocabulary(["<eos>", "<unk>", "the", "cat"])
    assert v.check_checkpoint({"vocab_digest": v.digest()}, "run/last.pt", "ptb") == v.digest()
    assert v.check_checkpoint(None, None, "ptb") == v.digest()  # a new run: nothing to check
    other = Vocabulary(["<eos>", "<unk>", "the"])
    with pytest.raises(UserError, match=r"run/last.pt was trained on a different vocabulary \(3 types\) "
                                        r"than data=ptb gives now \(4 types\)"):
        v.check_checkpoint({"vocab_digest": other.digest(), "vocab_size": 3}, "run/last.pt", "ptb")
