from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastbind.data.babi import (
    IGNORE_INDEX,
    CatbAbIEvalStream,
    CatbAbIStream,
    Story,
    load_babi,
)
from fastbind.data.vocab import Vocabulary
from fastbind.errors import UserError
from fastbind.training.checkpoint import load_checkpoint, save_checkpoint

# --------------------------------------------------------------------------- tiny release

QA1_TRAIN = """\
1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
1 Sandra went to the garden.
2 Where is Sandra? \tgarden\t1
3 Daniel went to the office.
4 Where is Daniel? \toffice\t3
1 John went to the kitchen.
2 Where is John? \tkitchen\t1
1 Mary went to the garden.
2 Where is Mary? \tgarden\t1
1 Daniel went to the bedroom.
2 Where is Daniel? \tbedroom\t1
"""
QA1_TRAIN_1K = """\
1 Mary moved to the bathroom.
2 Where is Mary? \tbathroom\t1
"""
QA1_TEST = """\
1 Daniel moved to the hallway.
2 Where is Daniel? \thallway\t1
1 Sandra went to the kitchen.
2 Where is Sandra? \tkitchen\t1
"""
QA8_TRAIN = """\
1 Mary got the apple there.
2 Mary took the milk there.
3 What is Mary carrying? \tapple,milk\t1 2
4 Mary dropped the apple.
5 What is Mary carrying? \tmilk\t2 4
1 John picked up the football there.
2 What is John carrying? \tfootball\t1
1 Sandra went to the office.
2 What is Sandra carrying? \tnothing\t1
"""
QA8_TEST = """\
1 Daniel got the milk there.
2 What is Daniel carrying? \tmilk\t1
"""
QA2_TRAIN_1K = """\
1 John got the football there.
2 John went to the garden.
3 Where is the football? \tgarden\t1 2
1 Mary moved to the office.
2 Mary took the apple there.
3 Where is the apple? \toffice\t2 1
"""
QA2_TEST = """\
1 Sandra got the milk there.
2 Sandra went to the hallway.
3 Where is the milk? \thallway\t1 2
"""

QA8_STORIES = [
    "mary got the apple there . mary took the milk there . what is mary carrying ? apple,milk "
    "mary dropped the apple . what is mary carrying ? milk".split(),
    "john picked up the football there . what is john carrying ? football".split(),
    "sandra went to the office . what is sandra carrying ? nothing".split(),
]


def write_release(root: Path) -> Path:
    """A three-task ``tasks_1-20_v1-2`` under ``root``: qa2 has no 10k training file."""
    base = root / "tasks_1-20_v1-2"
    files = {
        "en-10k": {
            "qa1_single-supporting-fact_train.txt": QA1_TRAIN,
            "qa1_single-supporting-fact_test.txt": QA1_TEST,
            "qa8_lists-sets_train.txt": QA8_TRAIN,
            "qa8_lists-sets_test.txt": QA8_TEST,
            "qa2_two-supporting-facts_test.txt": QA2_TEST,
        },
        "en": {
            "qa1_single-supporting-fact_train.txt": QA1_TRAIN_1K,
            "qa1_single-supporting-fact_test.txt": QA1_TEST,
            "qa2_two-supporting-facts_train.txt": QA2_TRAIN_1K,
            "qa2_two-supporting-facts_test.txt": QA2_TEST,
        },
    }
    for folder, contents in files.items():
        (base / folder).mkdir(parents=True)
        for name, text in contents.items():
            (base / folder / name).write_text(text)
    return root


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path / "babi")


def words(vocab: Vocabulary, ids) -> list[str]:
    return vocab.decode(ids)


def questions(stories) -> int:
    return sum(s.num_questions for s in stories)


# --------------------------------------------------------------------------- parsing and loading


def test_load_encodes_stories_as_eos_then_words(release: Path):
    data = load_babi(release, valid_fraction=0)
    assert sorted(data.task_names.items()) == [(1, "single-supporting-fact"), (2, "two-supporting-facts"),
                                               (8, "lists-sets")]
    assert data.valid == []
    qa8 = [s for s in data.train if s.task == 8]
    assert [words(data.vocab, s.ids[1:]) for s in qa8] == QA8_STORIES
    s = qa8[0]
    eos = data.vocab.stoi["<eos>"]
    assert s.ids.dtype == np.int64 and s.x[0] == eos and len(s) == len(QA8_STORIES[0]) + 1
    assert np.array_equal(s.y, np.append(s.x[1:], eos))  # words then <eos>: x shifted by one
    assert s.num_questions == 2
    assert [st.num_questions for st in qa8] == [2, 1, 1]
    # en-10k's qa1 training file (5 stories) wins over en's (1 story).
    assert sum(st.task == 1 for st in data.train) == 5


def test_vocabulary_is_closed_sorted_with_pad_and_eos_first(release: Path):
    data = load_babi(release)
    v = data.vocab
    assert v.itos[:2] == ["<pad>", "<eos>"] and v.unk is None and v.eos == "<eos>"
    assert v.itos[2:] == sorted(v.itos[2:])
    assert {".", "?", "apple,milk", "hallway", "sandra"} <= set(v.itos)
    assert load_babi(release, seed=5).vocab == v  # independent of the split


def test_fallback_to_the_1k_file_records_a_note(release: Path):
    data = load_babi(release, valid_fraction=0)
    assert data.notes == [
        "qa2: no 10k training file, using the 1k file en/qa2_two-supporting-facts_train.txt (2 stories)"
    ]
    assert sum(s.task == 2 for s in data.train) == 2
    assert questions(data.train) == 6 + 4 + 2
    assert questions(data.test) == 4
    assert [questions(s for s in data.test if s.task == t) for t in (1, 2, 8)] == [2, 1, 1]


@pytest.mark.parametrize("given", ["babi", "babi/tasks_1-20_v1-2"])
def test_root_may_be_either_folder(release: Path, given: str):
    data = load_babi(release.parent / given)
    assert len(data.test) == 4


def test_a_folder_of_qa_files_works_too(release: Path):
    data = load_babi(release / "tasks_1-20_v1-2" / "en", valid_fraction=0)
    assert sum(s.task == 1 for s in data.train) == 1
    assert len(data.notes) == 1 and "training on the 1k stories of en/" in data.notes[0]


def test_validation_is_a_seeded_share_of_each_task(release: Path):
    data = load_babi(release, seed=0, valid_fraction=0.1)
    every = load_babi(release, valid_fraction=0)
    # At least one story per task, removed from training.
    assert sorted(s.task for s in data.valid) == [1, 2, 8]
    assert len(data.train) + len(data.valid) == len(every.train)
    key = lambda s: (s.task, tuple(s.ids.tolist()))  # noqa: E731
    assert sorted(map(key, data.train + data.valid)) == sorted(map(key, every.train))
    assert {key(s) for s in data.valid}.isdisjoint({key(s) for s in data.train})
    again = load_babi(release, seed=0, valid_fraction=0.1)
    assert list(map(key, again.valid)) == list(map(key, data.valid))
    held = [{key(s) for s in load_babi(release, seed=k).valid} for k in range(6)]
    assert len({frozenset(h) for h in held}) > 1  # the seed matters
    more = load_babi(release, valid_fraction=0.6)
    assert sum(s.task == 1 for s in more.valid) == 3  # 60% of qa1's 5 stories


# --------------------------------------------------------------------------- bad input


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_folder(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist") as e:
        load_babi(tmp_path / "nowhere")
    assert "nowhere" in one_line(e)


def test_unknown_layout_names_the_expected_one(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "en").mkdir()
    with pytest.raises(UserError, match=r"expected qa<N>_<name>_\{train,test\}\.txt") as e:
        load_babi(tmp_path)
    assert "en-10k/" in one_line(e)


def test_task_without_a_training_file(tmp_path: Path):
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "qa1_single-supporting-fact_test.txt").write_text(QA1_TEST)
    with pytest.raises(UserError, match="qa1: no train file") as e:
        load_babi(tmp_path)
    one_line(e)


@pytest.mark.parametrize(
    "bad, what",
    [
        ("Mary moved to the hallway.", "expected '<id> <text>'"),
        ("2 Where is Mary?", "without a tab-separated answer"),
        ("2 Where is Mary? \t \t1", "without an answer"),
        ("2 Where is Mary? \t", "without an answer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, what: str):
    folder = tmp_path / "en"
    folder.mkdir()
    path = folder / "qa1_single-supporting-fact_train.txt"
    path.write_text(f"1 Mary moved to the bathroom.\n{bad}\n")
    (folder / "qa1_single-supporting-fact_test.txt").write_text(QA1_TEST)
    with pytest.raises(UserError, match=what) as e:
        load_babi(tmp_path)
    assert f"{path}, line 2" in one_line(e)


def test_bad_options(release: Path):
    data = load_babi(release)
    with pytest.raises(UserError, match="valid_fraction"):
        load_babi(release, valid_fraction=1.0)
    with pytest.raises(UserError, match="mode"):
        CatbAbIStream(data.train, data.vocab, mode="ra")
    with pytest.raises(UserError, match="at least one story"):
        CatbAbIEvalStream([], data.vocab)


# --------------------------------------------------------------------------- streams by hand

# ids: <pad> 0, <eos> 1, "." 2, "?" 3, a 4, b 5, c 6
HAND_VOCAB = Vocabulary(["<pad>", "<eos>", ".", "?", "a", "b", "c"], unk=None)
HAND_STORIES = [
    Story(np.array([1, 4, 3, 5]), task=1, num_questions=1),  # <eos> a ? b
    Story(np.array([1, 6, 2]), task=2, num_questions=0),  # <eos> c .
    Story(np.array([1, 5, 3, 6]), task=3, num_questions=1),  # <eos> b ? c
]
N = IGNORE_INDEX
T, F = True, False


def check(seg, x, y, task, answer):
    assert all(t.dtype == torch.int64 for t in seg[:3]) and seg.answer.dtype == torch.bool
    assert seg.x.tolist() == x
    assert seg.y.tolist() == y
    assert seg.task.tolist() == task
    assert seg.answer.tolist() == answer


def test_training_stream_by_hand_in_both_modes():
    # Seed 0 draws the stories in the order 2, 0, 1, then (second epoch) 2, 1, 0.
    rng = np.random.default_rng(0)
    assert rng.permutation(3).tolist() == [2, 0, 1] and rng.permutation(3).tolist() == [2, 1, 0]
    lm = CatbAbIStream(HAND_STORIES, HAND_VOCAB, batch_size=2, seg_len=3, mode="lm", seed=0)
    qa = CatbAbIStream(HAND_STORIES, HAND_VOCAB, batch_size=2, seg_len=3, mode="qa", seed=0)
    # Buffers: row 0 <- story 2, row 1 <- story 0.
    s_lm, s_qa = lm.next_segment(), qa.next_segment()
    check(s_lm, [[1, 5, 3], [1, 4, 3]], [[5, 3, 6], [4, 3, 5]], [[0, 0, 3], [0, 0, 1]], [[F, F, T], [F, F, T]])
    check(s_qa, [[1, 5, 3], [1, 4, 3]], [[N, N, 6], [N, N, 5]], [[0, 0, 3], [0, 0, 1]], [[F, F, T], [F, F, T]])
    # Left: [c] and [b]; row 0 (tie, lowest index) <- story 1, then the reshuffle: row 1 <- story 2.
    s_lm, s_qa = lm.next_segment(), qa.next_segment()
    assert lm.epoch == 1
    check(s_lm, [[6, 1, 6], [5, 1, 5]], [[1, 6, 2], [1, 5, 3]], [[0] * 3] * 2, [[F] * 3] * 2)
    check(s_qa, [[6, 1, 6], [5, 1, 5]], [[N] * 3] * 2, [[0] * 3] * 2, [[F] * 3] * 2)
    # Left: [.] and [? c]; row 0 <- story 1, row 1 <- story 0. Story 2's answer opens row 1.
    s_lm, s_qa = lm.next_segment(), qa.next_segment()
    check(s_lm, [[2, 1, 6], [3, 6, 1]], [[1, 6, 2], [6, 1, 4]], [[0, 0, 0], [3, 0, 0]], [[F, F, F], [T, F, F]])
    check(s_qa, [[2, 1, 6], [3, 6, 1]], [[N, N, N], [6, N, N]], [[0, 0, 0], [3, 0, 0]], [[F, F, F], [T, F, F]])


def test_eval_stream_by_hand_pads_the_ends():
    # Seed 0: story 2 -> row 0, story 0 -> row 1, story 1 -> row 0 (tie at 4 tokens, lowest index).
    lm = CatbAbIEvalStream(HAND_STORIES, HAND_VOCAB, batch_size=2, seg_len=3, mode="lm", seed=0)
    qa = CatbAbIEvalStream(HAND_STORIES, HAND_VOCAB, batch_size=2, seg_len=3, mode="qa", seed=0)
    assert len(lm) == lm.num_segments == 3 and lm.num_questions == 2  # row 0 holds 7 tokens
    a, b, c = list(lm)
    check(a, [[1, 5, 3], [1, 4, 3]], [[5, 3, 6], [4, 3, 5]], [[0, 0, 3], [0, 0, 1]], [[F, F, T], [F, F, T]])
    check(b, [[6, 1, 6], [5, 0, 0]], [[1, 6, 2], [1, N, N]], [[0] * 3] * 2, [[F] * 3] * 2)
    check(c, [[2, 0, 0], [0, 0, 0]], [[1, N, N], [N, N, N]], [[0] * 3] * 2, [[F] * 3] * 2)
    a, b, c = list(qa)
    check(a, [[1, 5, 3], [1, 4, 3]], [[N, N, 6], [N, N, 5]], [[0, 0, 3], [0, 0, 1]], [[F, F, T], [F, F, T]])
    for seg in (b, c):
        assert (seg.y == N).all() and not seg.answer.any()
    # Segments are copies: editing one does not change the stream.
    a.x.zero_()
    assert lm.segment(0).x[0, 0] == 1
    with pytest.raises(IndexError):
        lm.segment(3)


@pytest.mark.parametrize("batch_size, seg_len, seed", [(1, 7, 0), (2, 5, 1), (3, 4, 2), (8, 3, 3)])
@pytest.mark.parametrize("mode", ["lm", "qa"])
def test_eval_stream_places_every_story_once_and_scores_every_question(release, batch_size, seg_len, seed, mode):
    data = load_babi(release)
    for split in ("train", "valid", "test"):
        stories = data.split(split)
        stream = CatbAbIEvalStream(stories, data.vocab, batch_size=batch_size, seg_len=seg_len, mode=mode, seed=seed)
        segs = list(stream)
        assert len(segs) == len(stream)
        assert all(s.x.shape == (batch_size, seg_len) for s in segs)
        assert sum(int(s.answer.sum()) for s in segs) == questions(stories)
        assert sum(int((s.y != N).sum()) for s in segs) == (
            sum(len(st) for st in stories) if mode == "lm" else questions(stories)
        )
        # Every story's tokens appear once: the rows split at <eos> into exactly the stories.
        rows = torch.cat([s.x for s in segs], dim=1)
        eos = data.vocab.stoi["<eos>"]
        found = []
        for r in rows.numpy():
            r = r[r != 0]
            found += [tuple(p.tolist()) for p in np.split(r, np.flatnonzero(r == eos)) if len(p)]
        assert sorted(found) == sorted(tuple(st.ids.tolist()) for st in stories)
        # Answer positions carry the task of their story.
        task = torch.cat([s.task for s in segs], dim=1)
        answer = torch.cat([s.answer for s in segs], dim=1)
        assert ((task > 0) == answer).all()
        assert sorted(task[answer].tolist()) == sorted(
            t for st in stories for t in [st.task] * st.num_questions
        )


def test_training_stream_reshuffles_when_stories_run_out(release: Path):
    data = load_babi(release)
    n = len(data.train)
    stream = CatbAbIStream(data.train, data.vocab, batch_size=1, seg_len=7, seed=4)
    total = sum(len(s) for s in data.train)
    x = torch.cat([stream.next_segment().x for _ in range(2 * total // 7)], dim=1)[0].numpy()
    rng = np.random.default_rng(4)
    order = np.concatenate([rng.permutation(n), rng.permutation(n)])
    expected = np.concatenate([data.train[k].x for k in order])
    assert np.array_equal(x, expected[: len(x)])
    assert stream.epoch == 1 and not np.array_equal(order[:n], order[n:])


def test_resumed_stream_equals_uninterrupted(release: Path, tmp_path: Path):
    data = load_babi(release)
    kwargs = dict(batch_size=3, seg_len=5, mode="qa", seed=7)
    whole = CatbAbIStream(data.train, data.vocab, **kwargs)
    expected = [whole.next_segment() for _ in range(30)]  # several epochs
    first = CatbAbIStream(data.train, data.vocab, **kwargs)
    for _ in range(11):
        first.next_segment()
    save_checkpoint(tmp_path / "ckpt.pt", {"stream": first.state_dict()})  # plain state only
    resumed = CatbAbIStream(data.train, data.vocab, **{**kwargs, "seed": 123})
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["stream"])
    for want in expected[11:]:
        got = resumed.next_segment()
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert resumed.epoch == whole.epoch and resumed.segments == 30
    with pytest.raises(UserError, match="does not match"):
        CatbAbIStream(data.train[1:], data.vocab, **kwargs).load_state_dict(first.state_dict())


def test_training_buffers_stay_small(release: Path):
    data = load_babi(release)
    stream = CatbAbIStream(data.train, data.vocab, batch_size=4, seg_len=6)
    longest = max(len(s) for s in data.train)
    for _ in range(200):
        seg = stream.next_segment()
        assert seg.x.shape == (4, 6) and (seg.x != 0).all()  # training segments are never padded
    assert all(b.shape[1] < longest for b in stream.state_dict()["buffers"])


# --------------------------------------------------------------------------- the real release


def test_real_catbabi(shared_data: Path):
    root = shared_data / "babi"
    if not root.is_dir():
        pytest.skip("../shared/data/babi is not present")
    data = load_babi(root)
    assert sorted(data.task_names) == list(range(1, 21))
    assert questions(data.test) == 20_000
    assert any(n.startswith("qa3: no 10k training file") and "(200 stories)" in n for n in data.notes)
    for task in range(1, 21):
        train = sum(s.task == task for s in data.train)
        valid = sum(s.task == task for s in data.valid)
        assert valid >= 1 and abs(valid / (train + valid) - 0.1) < 0.01, task
    assert 100 < len(data.vocab) < 300
    stream = CatbAbIEvalStream(data.test, data.vocab, batch_size=32, seg_len=200)
    assert sum(int(s.answer.sum()) for s in stream) == stream.num_questions == 20_000
