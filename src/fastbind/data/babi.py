"""catbAbI: the 20 bAbI v1.2 tasks concatenated into long token streams.

catbAbI (Schlag, Munkhdalai, Schmidhuber, "Learning Associative Inference Using Fast
Weight Memory", ICLR 2021) turns bAbI's question answering into a language-modelling
stream: stories are lower-cased, the supporting-fact numbers dropped, each question stays
inline followed by its answer as one token, every story starts with ``<eos>``, and stories
drawn in random order are appended to the shortest of ``B`` parallel buffers, which are
cut into segments of 200 tokens. A model's state is carried across segments and stories,
so it must work out by itself where a story ends.

:func:`load_babi` reads the official ``tasks_1-20_v1-2`` release: training stories from
``en-10k`` (the 1k file where a 10k file is missing, with a note), a seeded
``valid_fraction`` of each task's training stories held out for validation (as the
authors' ``en-valid-10k`` does), and the test files. :class:`CatbAbIStream` is the
endless training stream and :class:`CatbAbIEvalStream` the finite evaluation one; both
give :class:`BabiSegment` tensors of shape ``(B, L)``.

Example::

    data = load_babi("../shared/data/babi")
    for note in data.notes:
        print(note)                                   # e.g. qa3 fell back to the 1k file
    train = CatbAbIStream(data.train, data.vocab, batch_size=32, mode="lm", seed=0)
    seg = train.next_segment()                        # x, y, task, answer: (32, 200)
    for seg in CatbAbIEvalStream(data.test, data.vocab, batch_size=32):
        hits = (logits.argmax(-1) == seg.y)[seg.answer]   # accuracy on answer tokens only
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from fastbind.data.vocab import EOS, Vocabulary
from fastbind.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "MODES",
    "NUM_TASKS",
    "PAD",
    "QUESTION",
    "BabiData",
    "BabiSegment",
    "CatbAbIEvalStream",
    "CatbAbIStream",
    "Story",
    "load_babi",
]

NUM_TASKS = 20
PAD = "<pad>"
QUESTION = "?"
IGNORE_INDEX = -100
"""Target value of positions without a target (``torch.nn.functional.cross_entropy``'s default)."""
MODES = ("lm", "qa")
SPLITS = ("train", "valid", "test")

_RELEASE = "tasks_1-20_v1-2"
_FOLDERS = ("en-10k", "en")  # in order of preference
_FILE = re.compile(r"qa(\d+)_([A-Za-z0-9-]+)_(train|test)\.txt")
_LAYOUT = (
    f"expected qa<N>_<name>_{{train,test}}.txt files for tasks 1-{NUM_TASKS} in en-10k/ and/or en/ "
    f"(the {_RELEASE} release), given as the folder holding {_RELEASE}/, that folder itself, "
    "or a folder of qa files"
)


# ---------------------------------------------------------------------------- parsing


def _parse(path: Path) -> tuple[list[str], list[int], list[int]]:
    """Tokenize one bAbI file into a flat token list with ``<eos>`` at every story start.

    Lines are ``"<id> <text>"``, the id restarting at 1 with each story. Statements give
    their lower-cased words with the final ``"."`` as a token of its own; questions
    (``"<question>?\\t<answer>\\t<supporting ids>"``) give their words, ``"?"`` and the
    answer as one token (``"apple,milk"`` stays whole); supporting ids are dropped.

    Returns:
        ``(tokens, starts, questions)``: all tokens of the file, each story's first index
        in ``tokens`` (where its ``<eos>`` is), and each story's number of questions.
    """
    try:
        text = path.read_text(encoding="utf-8").lower()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: {e}") from None
    tokens: list[str] = []
    starts: list[int] = []
    questions: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        num, _, body = line.partition(" ")
        if not num.isdigit() or not body.strip():
            raise UserError(f"{path}, line {lineno}: expected '<id> <text>', got {line[:60]!r}")
        if int(num) == 1:
            starts.append(len(tokens))
            questions.append(0)
            tokens.append(EOS)
        elif not starts:
            raise UserError(f"{path}, line {lineno}: the first story must start at id 1, got id {num}")
        if "\t" in body:
            question, _, rest = body.partition("\t")
            answer = rest.partition("\t")[0].strip()
            if not answer:
                raise UserError(f"{path}, line {lineno}: question without an answer: {line[:60]!r}")
            question = question.strip().removesuffix(QUESTION)
            # A stray "?" would create an answer position without a question.
            if QUESTION in question or QUESTION in answer:
                raise UserError(f"{path}, line {lineno}: '?' inside a question or answer: {line[:60]!r}")
            tokens.extend(question.split())
            tokens.append(QUESTION)
            tokens.append(answer)  # "apple,milk" stays one token
            questions[-1] += 1
        else:
            if QUESTION in body:
                raise UserError(f"{path}, line {lineno}: question without a tab-separated answer: {line[:60]!r}")
            words = body.split()
            if words[-1].endswith(".") and words[-1] != ".":
                words[-1] = words[-1][:-1]
                words.append(".")
            tokens.extend(words)
    if not starts:
        raise UserError(f"{path} holds no stories")
    return tokens, starts, questions


# ---------------------------------------------------------------------------- data


@dataclass(eq=False)
class Story:
    """One bAbI story, encoded.

    Attributes:
        ids: ``(n + 1,)`` int64 token ids, ``<eos>`` first, then the story's ``n`` tokens.
        task: the bAbI task, 1..20.
        num_questions: how many questions (``"?"`` tokens) the story holds.
    """

    ids: np.ndarray
    task: int
    num_questions: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def x(self) -> np.ndarray:
        """Inputs ``(n + 1,)``: ``<eos>`` then the words."""
        return self.ids

    @property
    def y(self) -> np.ndarray:
        """Targets ``(n + 1,)``: the words then ``<eos>`` (``x`` shifted by one within the story)."""
        return np.concatenate([self.ids[1:], self.ids[:1]])


@dataclass
class BabiData:
    """The catbAbI splits of the 20 bAbI tasks and their closed vocabulary.

    Attributes:
        vocab: ``<pad>`` (id 0), ``<eos>`` (id 1), then every token of all splits, sorted;
            no unknown token.
        train, valid, test: the stories of each split, grouped by task in file order.
        task_names: task id -> name from the file names (``1: "single-supporting-fact"``),
            for the tasks read (all 20 in the release).
        notes: human-readable remarks on how the data was assembled (a fallback to a 1k
            training file); the library never prints them.
    """

    vocab: Vocabulary
    train: list[Story]
    valid: list[Story]
    test: list[Story]
    task_names: dict[int, str]
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Story]:
        """The stories of split ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in SPLITS:
            raise UserError(f"unknown bAbI split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)


def _task_files(folder: Path) -> dict[tuple[int, str], tuple[Path, str]]:
    """``(task, "train" | "test") -> (file, task name)`` for the qa files in ``folder``."""
    out: dict[tuple[int, str], tuple[Path, str]] = {}
    for p in sorted(folder.iterdir()):
        m = _FILE.fullmatch(p.name)
        if m is None or not p.is_file() or not 1 <= int(m[1]) <= NUM_TASKS:
            continue
        key = (int(m[1]), m[3])
        if key in out:
            raise UserError(f"two files for task {key[0]} ({key[1]}) in {folder}: {out[key][0].name}, {p.name}")
        out[key] = (p, m[2])
    return out


def _locate(root: Path) -> list[tuple[str, dict[tuple[int, str], tuple[Path, str]]]]:
    """The qa-file folders under ``root``, in order of preference (``en-10k`` first)."""
    base = root / _RELEASE if (root / _RELEASE).is_dir() else root
    found = [(name, _task_files(base / name)) for name in _FOLDERS if (base / name).is_dir()]
    if not found:  # a folder of qa files itself (en/ or en-10k/ passed directly)
        found = [(base.name, _task_files(base))]
    found = [(name, files) for name, files in found if files]
    if not found:
        raise UserError(f"no bAbI task files in {root}: {_LAYOUT}")
    return found


def load_babi(root: str | os.PathLike, *, seed: int = 0, valid_fraction: float = 0.1) -> BabiData:
    """Read the 20 bAbI v1.2 tasks as catbAbI train/valid/test stories.

    Every task with a file under ``root`` is read (all 20 in the release). Training stories
    come from each task's ``en-10k`` training file; where that file is absent the ``en``
    (1k) one is used and a note says so. A seeded ``valid_fraction`` of each task's
    training stories (at least one when the fraction is positive) becomes the validation
    split, as in the authors' ``en-valid-10k``. Test stories come from the test files
    (identical in ``en-10k`` and ``en``; ``en-10k`` preferred). The vocabulary holds every
    token of all splits: bAbI is a closed vocabulary, and the authors built it the same way.

    Args:
        root: the folder holding ``tasks_1-20_v1-2/`` (e.g. ``../shared/data/babi``), that
            folder itself, or a folder of ``qa*_{train,test}.txt`` files.
        seed: seed of the validation split.
        valid_fraction: share of each task's training stories held out, in ``[0, 1)``.

    Returns:
        The splits, their vocabulary and any notes.

    Raises:
        UserError: a missing folder, no task files, a task without a training or test
            file, a malformed line, or a bad ``valid_fraction``.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"bAbI folder {root} does not exist")
    if not 0 <= valid_fraction < 1:
        raise UserError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    sources = _locate(root)
    names = ", ".join(f"{n}/" for n, _ in sources)
    notes: list[str] = []
    if sources[0][0] == "en":
        notes.append(f"no en-10k/ folder with task files under {root}: training on the 1k stories of en/")
    task_names: dict[int, str] = {}
    parsed: dict[tuple[int, str], tuple[list[str], list[int], list[int]]] = {}
    # The tasks present (all 20 in the release); each needs a training and a test file.
    tasks = sorted({task for _, files in sources for task, _ in files})
    for task in tasks:
        for split in ("train", "test"):
            hits = [(n, files[(task, split)]) for n, files in sources if (task, split) in files]
            if not hits:
                raise UserError(f"qa{task}: no {split} file in {names} under {root}")
            folder, (path, name) = hits[0]
            parsed[task, split] = _parse(path)
            task_names.setdefault(task, name)
            if split == "train" and folder != sources[0][0]:
                n = len(parsed[task, split][1])
                notes.append(f"qa{task}: no 10k training file, using the 1k file {folder}/{path.name} ({n} stories)")

    # bAbI is a closed vocabulary: every token of every split gets an id (as the authors do).
    words = set().union(*(set(toks) for toks, _, _ in parsed.values()))
    words -= {PAD, EOS}
    vocab = Vocabulary([PAD, EOS, *sorted(words)], unk=None, eos=EOS)

    splits: dict[str, list[Story]] = {s: [] for s in SPLITS}
    for (task, split), (toks, starts, questions) in parsed.items():
        ids = vocab.encode(toks).astype(np.int64)
        stories = [Story(a, task, q) for a, q in zip(np.split(ids, starts[1:]), questions)]
        if split == "test":
            splits["test"].extend(stories)
            continue
        n = len(stories)
        k = max(1, round(valid_fraction * n)) if valid_fraction > 0 else 0
        if k >= n:
            raise UserError(f"qa{task}: valid_fraction={valid_fraction} leaves none of its {n} training stories")
        held = np.zeros(n, dtype=bool)
        held[np.random.default_rng([seed, task]).permutation(n)[:k]] = True
        splits["train"].extend(s for s, h in zip(stories, held) if not h)
        splits["valid"].extend(s for s, h in zip(stories, held) if h)
    return BabiData(vocab, splits["train"], splits["valid"], splits["test"], task_names, notes)


# ---------------------------------------------------------------------------- streams


class BabiSegment(NamedTuple):
    """One segment of ``B`` parallel catbAbI streams, ``L`` positions each.

    Attributes:
        x: ``(B, L)`` int64 input ids (``<pad>`` = 0 past the end of an evaluation stream).
        y: ``(B, L)`` int64 targets, ``IGNORE_INDEX`` (-100) where there is none: padding,
            and in ``"qa"`` mode every position but the answers.
        task: ``(B, L)`` int64 task id (1..20) at answer positions, 0 elsewhere.
        answer: ``(B, L)`` bool, true where ``x`` is ``"?"`` so that ``y`` is the answer.
    """

    x: torch.Tensor
    y: torch.Tensor
    task: torch.Tensor
    answer: torch.Tensor


class _Base:
    """Checks and the segment assembly shared by the two streams."""

    def __init__(
        self, stories: Sequence[Story], vocab: Vocabulary, batch_size: int, seg_len: int, mode: str, seed: int
    ) -> None:
        if not stories:
            raise UserError("a catbAbI stream needs at least one story")
        if batch_size < 1 or seg_len < 1:
            raise UserError(f"batch_size and seg_len must be >= 1, got {batch_size} and {seg_len}")
        if mode not in MODES:
            raise UserError(f"unknown catbAbI mode {mode!r}; expected one of {', '.join(MODES)}")
        for t in (PAD, QUESTION):
            if t not in vocab:
                raise UserError(f"the vocabulary has no {t!r} token; build it with load_babi")
        self.stories = stories
        self.batch_size = batch_size
        self.seg_len = seg_len
        self.mode = mode
        self.seed = seed
        self.pad_id = vocab.stoi[PAD]
        self.question_id = vocab.stoi[QUESTION]

    def _rows(self, story: Story) -> np.ndarray:
        """``(3, n)`` int64: the story's inputs, next-token targets and task id."""
        return np.stack([story.x, story.y, np.full(len(story), story.task, dtype=np.int64)])

    def _segment(self, raw: np.ndarray) -> BabiSegment:
        """``raw (3, B, L)`` (inputs, next tokens, task) -> the mode's segment tensors."""
        x, nxt, task = raw
        answer = x == self.question_id
        y = nxt if self.mode == "lm" else np.where(answer, nxt, IGNORE_INDEX)
        return BabiSegment(
            torch.from_numpy(x),
            torch.from_numpy(np.ascontiguousarray(y)),
            torch.from_numpy(np.where(answer, task, 0)),
            torch.from_numpy(answer),
        )


class CatbAbIStream(_Base):
    """The endless catbAbI training stream: ``B`` buffers fed with shuffled stories.

    Stories are drawn without replacement in the order of a permutation from
    ``numpy.random.default_rng(seed)``; each goes to the currently shortest buffer (ties
    to the lowest index) until every buffer holds at least ``seg_len`` tokens, then the
    first ``seg_len`` tokens of each buffer form the segment. When every story has been
    drawn, the next permutation of the same generator starts a new epoch. Buffers keep
    only what is not yet cut, so memory stays bounded.

    Args:
        stories: the training stories (e.g. ``BabiData.train``).
        vocab: the vocabulary of :func:`load_babi` (for the ``<pad>`` and ``"?"`` ids).
        batch_size: number of parallel streams ``B``.
        seg_len: segment length ``L`` (the paper uses 200).
        mode: ``"lm"`` (every next token is a target) or ``"qa"`` (only answers are).
        seed: seed of the story order.

    Attributes:
        epoch: how many full passes over the stories have started before the current one.
        segments: how many segments have been cut.
    """

    def __init__(
        self,
        stories: Sequence[Story],
        vocab: Vocabulary,
        *,
        batch_size: int = 32,
        seg_len: int = 200,
        mode: str = "lm",
        seed: int = 0,
    ) -> None:
        super().__init__(stories, vocab, batch_size, seg_len, mode, seed)
        self._num_tokens = sum(len(s) for s in stories)
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(stories))
        self._pos = 0
        self.epoch = 0
        self.segments = 0
        self._buffers = [np.empty((3, 0), dtype=np.int64) for _ in range(batch_size)]

    def _draw(self) -> Story:
        if self._pos == len(self._order):
            self._order = self._rng.permutation(len(self.stories))
            self._pos = 0
            self.epoch += 1
        story = self.stories[int(self._order[self._pos])]
        self._pos += 1
        return story

    def next_segment(self) -> BabiSegment:
        """Cut the next segment: :class:`BabiSegment` of ``(B, L)`` tensors, no padding."""
        lengths = np.array([b.shape[1] for b in self._buffers])
        while lengths.min() < self.seg_len:
            i = int(lengths.argmin())  # first minimum: ties go to the lowest index
            rows = self._rows(self._draw())
            self._buffers[i] = np.concatenate([self._buffers[i], rows], axis=1)
            lengths[i] += rows.shape[1]
        raw = np.stack([b[:, : self.seg_len] for b in self._buffers], axis=1)  # (3, B, L)
        # Copy the rest so the consumed front is freed rather than kept alive by a view.
        self._buffers = [b[:, self.seg_len :].copy() for b in self._buffers]
        self.segments += 1
        return self._segment(raw)

    def __iter__(self) -> Iterator[BabiSegment]:
        while True:
            yield self.next_segment()

    def state_dict(self) -> dict[str, Any]:
        """The stream's position as plain state (tensors, ints, dicts) for a checkpoint."""
        return {
            "batch_size": self.batch_size,
            "num_stories": len(self.stories),
            "num_tokens": self._num_tokens,
            "rng": self._rng.bit_generator.state,
            "order": torch.from_numpy(self._order.astype(np.int64)),
            "pos": self._pos,
            "epoch": self.epoch,
            "segments": self.segments,
            "buffers": [torch.from_numpy(b.copy()) for b in self._buffers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that wrote ``state`` stopped.

        The stream must be built over the same stories with the same ``batch_size``;
        ``seg_len`` and ``mode`` are taken from this stream.

        Raises:
            UserError: the state comes from other stories or another batch size.
        """
        mine = (self.batch_size, len(self.stories), self._num_tokens)
        theirs = (state["batch_size"], state["num_stories"], state["num_tokens"])
        if mine != theirs:
            raise UserError(
                "catbAbI stream state does not match this stream: (batch_size, stories, tokens) "
                f"{theirs} vs {mine}"
            )
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._order = state["order"].cpu().numpy().astype(np.int64)
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])
        self.segments = int(state["segments"])
        self._buffers = [b.cpu().numpy().astype(np.int64).reshape(3, -1) for b in state["buffers"]]


class CatbAbIEvalStream(_Base):
    """A finite catbAbI evaluation stream: every story of a split exactly once.

    Stories, shuffled with ``numpy.random.default_rng(seed)``, each go to the currently
    shortest of ``B`` buffers (ties to the lowest index); the buffers are then cut into
    ``len(self)`` segments of ``seg_len`` until all are empty, the ends padded with
    ``<pad>`` (no target, task 0, not an answer). The answer positions over all segments
    are exactly the split's questions.

    Args:
        stories: the stories to evaluate (e.g. ``BabiData.test``).
        vocab: the vocabulary of :func:`load_babi`.
        batch_size: number of parallel streams ``B``.
        seg_len: segment length ``L``.
        mode: ``"lm"`` or ``"qa"`` (which positions carry targets; answers always do).
        seed: seed of the story order.

    Attributes:
        num_segments: number of segments (also ``len(stream)``).
        num_questions: number of answer positions over all segments.
    """

    def __init__(
        self,
        stories: Sequence[Story],
        vocab: Vocabulary,
        *,
        batch_size: int = 32,
        seg_len: int = 200,
        mode: str = "lm",
        seed: int = 0,
    ) -> None:
        super().__init__(stories, vocab, batch_size, seg_len, mode, seed)
        lengths = np.zeros(batch_size, dtype=np.int64)
        rows: list[list[np.ndarray]] = [[] for _ in range(batch_size)]
        for k in np.random.default_rng(seed).permutation(len(stories)):
            story = stories[int(k)]
            i = int(lengths.argmin())
            rows[i].append(self._rows(story))
            lengths[i] += len(story)
        self.num_segments = int(-(-lengths.max() // seg_len))
        self.num_questions = sum(s.num_questions for s in stories)
        width = self.num_segments * seg_len
        data = np.empty((3, batch_size, width), dtype=np.int64)  # (inputs, next tokens, task)
        data[0], data[1], data[2] = self.pad_id, IGNORE_INDEX, 0
        for i, pieces in enumerate(rows):
            if pieces:
                data[:, i, : lengths[i]] = np.concatenate(pieces, axis=1)
        self._data = data

    def __len__(self) -> int:
        return self.num_segments

    def segment(self, i: int) -> BabiSegment:
        """Segment ``i`` (0-based) as :class:`BabiSegment` tensors ``(B, L)``."""
        if not 0 <= i < self.num_segments:
            raise IndexError(f"segment {i} out of range for {self.num_segments} segments")
        # A copy, so that a caller editing the tensors in place cannot change the stream.
        return self._segment(self._data[:, :, i * self.seg_len : (i + 1) * self.seg_len].copy())

    def __iter__(self) -> Iterator[BabiSegment]:
        for i in range(self.num_segments):
            yield self.segment(i)
