"""Word vocabulary: a fixed id order, token <-> id maps, and a plain-text file format.

A :class:`Vocabulary` is immutable in spirit: ids are assigned once, in a deterministic
order (specials, then the unknown token, then by descending training count, ties broken by
the token string), so two builds from the same counts give byte-identical ``vocab.txt``
files. Training counts per id are *not* stored here; :class:`fastbind.data.Corpus` keeps
them as a tensor beside the encoded splits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from fastbind._io import atomic_write
from fastbind.errors import UserError

VOCAB_FILE = "vocab.txt"
UNK = "<unk>"
EOS = "<eos>"


class Vocabulary:
    """An ordered list of token strings with a reverse map.

    Args:
        tokens: the tokens in id order; duplicates, empty strings and tokens containing a
            newline are refused (``vocab.txt`` stores one token per line).
        unk: the token that unknown words map to, or ``None`` to make :meth:`encode` refuse
            unknown words. It only takes effect if it is one of ``tokens``.
        eos: the end-of-line token (``None`` if the vocabulary has none); only takes effect
            if it is one of ``tokens``.

    Attributes:
        itos: list of tokens, index = id.
        stoi: dict token -> id.
        unk: the unknown token, or ``None`` when the vocabulary has none.
        eos: the end-of-line token, or ``None``.
    """

    def __init__(self, tokens: Iterable[str], *, unk: str | None = UNK, eos: str | None = EOS) -> None:
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            seen: set[str] = set()
            dup = next(t for t in self.itos if t in seen or seen.add(t))  # type: ignore[func-returns-value]
            raise UserError(f"duplicate token {dup!r} in vocabulary")
        for t in self.itos:
            if not isinstance(t, str) or not t or "\n" in t or "\r" in t:
                raise UserError(f"invalid vocabulary token {t!r}: tokens must be non-empty strings without newlines")
        self.unk: str | None = unk if unk is not None and unk in self.stoi else None
        self.eos: str | None = eos if eos is not None and eos in self.stoi else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        token_counts: Mapping[str, int],
        min_count: int = 1,
        specials: Sequence[str] = (EOS,),
        unk: str | None = UNK,
        *,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Build a vocabulary from token counts with a deterministic id order.

        Ids go to ``specials`` (in the given order), then ``unk`` (always reserved when not
        ``None``, even if nothing maps to it), then every other token with
        ``count >= min_count`` sorted by descending count, ties by the token string.

        Args:
            token_counts: token -> number of occurrences (e.g. a ``Counter`` of the training
                split). Counts of ``specials``/``unk`` are ignored for ordering.
            min_count: keep a token only if it occurs at least this often; ``0`` keeps
                every key of ``token_counts``, including zero counts.
            specials: tokens that get the first ids whatever their count.
            unk: the unknown token, or ``None`` for a closed vocabulary.
            max_size: optional cap on the total size (specials and unk included); the
                least frequent tokens are dropped first.

        Returns:
            The new vocabulary, with ``eos`` set to ``"<eos>"`` if present.
        """
        if min_count < 0:
            raise UserError(f"min_count must be >= 0, got {min_count}")
        head: list[str] = []
        for t in (*specials, *(() if unk is None else (unk,))):
            if t not in head:
                head.append(t)
        reserved = set(head)
        rest = [t for t, c in token_counts.items() if c >= min_count and t not in reserved]
        rest.sort(key=lambda t: (-token_counts[t], t))
        if max_size is not None:
            if max_size < len(head):
                raise UserError(f"max_size={max_size} is smaller than the {len(head)} special tokens")
            rest = rest[: max_size - len(head)]
        return cls(head + rest, unk=unk, eos=EOS)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __iter__(self):
        return iter(self.itos)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.itos == other.itos and self.unk == other.unk and self.eos == other.eos

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, unk={self.unk!r}, eos={self.eos!r})"

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, or ``None``."""
        return None if self.unk is None else self.stoi[self.unk]

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-line token, or ``None``."""
        return None if self.eos is None else self.stoi[self.eos]

    # ------------------------------------------------------------------ encode / decode
    def digest(self) -> str:
        """SHA-1 of the tokens in id order: what checkpoints keep to catch a changed data set."""
        return hashlib.sha1("\n".join(self.itos).encode("utf-8")).hexdigest()

    def check_checkpoint(self, ck: Mapping | None, ck_path: str | os.PathLike | None, data: str) -> str:
        """This vocabulary's :meth:`digest`, after checking that checkpoint ``ck`` (if any) was trained on it.

        Raises :class:`~fastbind.errors.UserError` naming the checkpoint and both sizes when
        ``ck["vocab_digest"]`` differs (``data`` is the setting that gave this vocabulary).
        ``ck=None`` (a new run) only returns the digest.
        """
        digest = self.digest()
        if ck is not None and ck.get("vocab_digest") != digest:
            raise UserError(f"{ck_path} was trained on a different vocabulary ({ck.get('vocab_size', '?')} types) "
                            f"than data={data} gives now ({len(self)} types)")
        return digest

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Map tokens to ids.

        Args:
            tokens: an iterable of token strings, length ``n``.

        Returns:
            ``int32`` array of shape ``(n,)``; unknown tokens get :attr:`unk_id`.

        Raises:
            UserError: a token is unknown and the vocabulary has no unknown token.
        """
        if self.unk is None:
            try:
                ids = list(map(self.stoi.__getitem__, tokens))
            except KeyError as e:
                raise UserError(f"token {e.args[0]!r} is not in the vocabulary, which has no unknown token") from None
        else:
            # map() over dict.get with a repeated default is the fastest pure-Python lookup.
            tokens = list(tokens)
            ids = list(map(self.stoi.get, tokens, repeat(self.stoi[self.unk], len(tokens))))
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Map ids back to tokens.

        Args:
            ids: ints, a 1-D numpy array or a 1-D CPU tensor of shape ``(n,)``.

        Returns:
            The ``n`` token strings.
        """
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.itos)):
            bad = int(arr[(arr < 0) | (arr >= len(self.itos))][0])
            raise UserError(f"id {bad} is outside the vocabulary (size {len(self.itos)})")
        itos = self.itos
        return [itos[i] for i in arr.tolist()]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.txt`` (UTF-8, one token per line in id order), atomically.

        Args:
            path: a folder (the file is ``path/vocab.txt``, the folder is created) or a
                file path ending in ``.txt``.

        Returns:
            The path of the written file.
        """
        path = Path(path)
        file = path if path.suffix == ".txt" else path / VOCAB_FILE
        return atomic_write(file, lambda f: f.write(("\n".join(self.itos) + "\n").encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike, *, unk: str | None = UNK, eos: str | None = EOS) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Args:
            path: the folder holding ``vocab.txt``, or the file itself.
            unk: name of the unknown token (used if present in the file).
            eos: name of the end-of-line token (used if present in the file).
        """
        path = Path(path)
        file = path / VOCAB_FILE if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"vocabulary file not found: {file}")
        with open(file, encoding="utf-8", newline="\n") as f:
            tokens = f.read().split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        return cls(tokens, unk=unk, eos=eos)
