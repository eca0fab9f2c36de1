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


def _record(head, seed, steps_per_level, **settings):
    levels, end, classes = [], 0, 30
    for s in steps_per_level:
        end += s
        levels.append({"classes": classes, "steps": s, "end_step": end})
        classes += 5
    base = {"head": head, "objective": "l2", "T": 20, "gamma": 0.1, "lr": 0.008, "batch_size": 32,
            "criterion": "new", "seed": seed, "classes": classes - 5, "total_classes": 242, "complete": False,
            "step": end, "levels": levels}
    return {**base, **settings}


def test_merge_records_means_over_seeds_and_ratio_to_softmax():
    from fastbind.training.curriculum import merge_records

    # Levels end with 30, 35, ..., 95 classes; only those with more than 80 (85, 90, 95) count.
    flat = [10] * 11
    recs = [_record("softmax", 0, flat + [40, 60, 80]), _record("softmax", 1, flat + [60, 60, 60]),
            _record("hebbian", 0, flat + [20, 30, 40]), _record("hebbian", 1, flat + [30, 30, 30]),
            _record("hebbian", 0, flat + [5, 5, 5], batch_size=16)]
    merged = merge_records(recs)
    rows = {r["combination"]: r for r in merged["summary"]}
    soft, hebb = rows["softmax-lr0.008-b32"], rows["hebbian-l2-T20-g0.1-lr0.008-b32"]
    assert soft["mean_steps_after_80"] == 60.0 and hebb["mean_steps_after_80"] == 30.0
    assert hebb["speedup_vs_softmax"] == 2.0 and soft["speedup_vs_softmax"] == 1.0
    assert hebb["std_over_seeds"] == 0.0 and hebb["seeds"] == 2
    # No softmax run with batch 16: no ratio rather than a wrong one.
    assert rows["hebbian-l2-T20-g0.1-lr0.008-b16"]["speedup_vs_softmax"] is None
    assert set(merged["combinations"]["softmax-lr0.008-b32"]["seeds"]) == {"0", "1"}


def test_mbpa_settings_keep_combinations_apart():
    from fastbind.training.curriculum import merge_records

    m1 = {"size": 1000, "k": 10, "steps": 1, "lr": 1.0, "l2": 0.5, "lam": 1.0, "eps": 1e-3}
    m2 = {**m1, "lr": 0.1}
    merged = merge_records([_record("mbpa", 0, [10], mbpa=m1), _record("mbpa", 0, [20], mbpa=m2),
                            _record("mbpa", 1, [30], mbpa={**m1, "steps": 2})])
    assert sorted(merged["combinations"]) == ["mbpa-K10-mlr0.1-lam1-mem1000-lr0.008-b32",
                                              "mbpa-K10-mlr1-lam1-mem1000-lr0.008-b32",
                                              "mbpa-K10-mlr1-lam1-mem1000-steps2-lr0.008-b32"]
