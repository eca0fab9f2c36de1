"""Level bookkeeping of the class curriculum, driven by stubbed accuracies."""

from __future__ import annotations

import pytest

from fastbind.training.curriculum import Curriculum


def test_levels_pass_exactly_when_the_threshold_is_crossed():
    cur = Curriculum(42, start=30, new=5, threshold=0.6)
    assert cur.n == 30 and cur.judged == (0, 30)
    assert not cur.update(10, 0.6)  # equal is not above
    assert cur.n == 30 and cur.levels == []
    assert cur.update(20, 0.61, seconds=2.0)
    assert cur.n == 35 and cur.judged == (30, 35)
    assert not cur.update(30, 0.1)
    assert cur.update(50, 0.9, seconds=5.0, accuracy_all=0.7)
    assert cur.n == 40 and cur.judged == (35, 40)
    assert cur.update(60, 1.0, seconds=6.0)
    assert cur.n == 42 and cur.judged == (40, 42)  # the last level adds fewer
    assert not cur.finished and cur.update(90, 0.65, seconds=9.0) and cur.finished
    assert [(r["classes"], r["steps"], r["end_step"]) for r in cur.levels] == [
        (30, 20, 20), (35, 30, 50), (40, 10, 60), (42, 30, 90)]
    assert [r["seconds"] for r in cur.levels] == [2.0, 3.0, 1.0, 3.0]
    assert cur.levels[1]["accuracy_all"] == 0.7 and cur.levels[1]["new"] == [30, 35]
    with pytest.raises(RuntimeError):
        cur.update(100, 1.0)


def test_criterion_all_judges_every_class_and_state_round_trips():
    cur = Curriculum(40, start=30, new=5, criterion="all")
    cur.update(10, 0.7)
    assert cur.judged == (0, 35)
    other = Curriculum(40, start=30, new=5, criterion="all")
    other.load_state_dict(cur.state_dict())
    assert other.state_dict() == cur.state_dict()
    assert other.update(30, 0.9) and other.levels[-1]["steps"] == 20


@pytest.mark.parametrize("kwargs", [{"start": 0}, {"new": 0}, {"threshold": 1.0}, {"criterion": "some"}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Curriculum(10, **kwargs)
