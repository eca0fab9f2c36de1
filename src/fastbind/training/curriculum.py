"""The class curriculum of Rae et al. (2018), section 4.1: classes arrive as levels are passed.

A run starts with ``start`` classes; each time the test accuracy passes ``threshold`` the
level is complete and ``new`` more classes arrive, until ``total`` classes have been
introduced and their level passed. Classes are numbered in order of arrival, so the
classes in play are always ``[0, n)`` and a level's new ones ``[n - new, n)``.

What is judged (``criterion``):

* ``"new"`` (default): the classes the level introduced (all ``start`` of them on the first
  level). This measures how fast a model binds new classes; the number of steps per level
  grows with the number of classes, as uniform sampling shows each class less often.
* ``"all"``: every class introduced so far (the paper's Figure 9 caption speaks of total
  test error). Once the features are learned, a few new classes barely move this number,
  so levels pass at the first check and little is measured about binding them.

The object only keeps the bookkeeping; the training loop asks :attr:`judged` which classes
to test and reports the accuracy to :meth:`update`::

    cur = Curriculum(total=242)
    while not cur.finished:
        ...train a step on classes [0, cur.n)...
        if step % eval_every == 0:
            lo, hi = cur.judged
            cur.update(step, accuracy_on(lo, hi), seconds=elapsed)
"""

from __future__ import annotations

from typing import Any, Literal

Criterion = Literal["new", "all"]


class Curriculum:
    """Level bookkeeping of a class curriculum.

    Args:
        total: classes available (the curriculum ends once all are introduced and passed).
        start: classes of the first level.
        new: classes added per level (the last level may add fewer).
        threshold: a level is passed when the accuracy is strictly above this.
        criterion: ``"new"`` or ``"all"`` (see the module docstring).
    """

    def __init__(self, total: int, *, start: int = 30, new: int = 5, threshold: float = 0.6,
                 criterion: Criterion = "new") -> None:
        if start < 1 or new < 1 or total < 1:
            raise ValueError(f"total, start and new must be positive, got {total}, {start}, {new}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
        if criterion not in ("new", "all"):
            raise ValueError(f"criterion must be 'new' or 'all', got {criterion!r}")
        self.total, self.start, self.new = total, min(start, total), new
        self.threshold, self.criterion = float(threshold), criterion
        self.n = self.start  # classes introduced so far
        self.first_new = 0  # first class of the current level
        self.level_start_step = 0
        self.level_start_seconds = 0.0
        self.levels: list[dict[str, Any]] = []
        self.finished = False

    @property
    def level(self) -> int:
        """Index of the current level (0-based)."""
        return len(self.levels)

    @property
    def judged(self) -> tuple[int, int]:
        """``(lo, hi)``: the classes whose test accuracy decides the current level."""
        return (self.first_new, self.n) if self.criterion == "new" else (0, self.n)

    def update(self, step: int, accuracy: float, *, seconds: float = 0.0, **extra: Any) -> bool:
        """Record a check at ``step``; returns True when it passes the level (classes are then added).

        Args:
            step: training steps taken so far.
            accuracy: test accuracy on :attr:`judged` classes.
            seconds: wall time so far (the level's time is the difference to its start).
            extra: more fields for the level's record (e.g. the accuracy over all classes).
        """
        if self.finished:
            raise RuntimeError("the curriculum is finished")
        if not accuracy > self.threshold:
            return False
        self.levels.append({
            "level": self.level, "classes": self.n, "new": [self.first_new, self.n],
            "steps": step - self.level_start_step, "end_step": step, "accuracy": float(accuracy),
            "seconds": seconds - self.level_start_seconds, **extra,
        })
        if self.n >= self.total:
            self.finished = True
        else:
            self.first_new, self.n = self.n, min(self.n + self.new, self.total)
        self.level_start_step, self.level_start_seconds = step, seconds
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "first_new": self.first_new, "level_start_step": self.level_start_step,
                "level_start_seconds": self.level_start_seconds, "levels": [dict(r) for r in self.levels],
                "finished": self.finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.first_new = int(state["n"]), int(state["first_new"])
        self.level_start_step = int(state["level_start_step"])
        self.level_start_seconds = float(state["level_start_seconds"])
        self.levels = [dict(r) for r in state["levels"]]
        self.finished = bool(state["finished"])


# --------------------------------------------------------------------------- results of many runs

SETTINGS = ("head", "objective", "T", "gamma", "lr", "batch_size", "criterion", "mbpa")
BIND_FROM = 80  # the paper's comparison: levels that end with more than 80 classes


def combination_name(settings: dict[str, Any]) -> str:
    """``hebbian-l2-T20-g0.1-lr0.008-b32``, ``mbpa-K10-mlr1-lam1-mem1000-lr0.008-b32``, ``softmax-lr0.008-b32``.

    Hebbian settings appear only for the Hebbian head, the memory's (``settings["mbpa"]``:
    k, lr, lam, size and, when not 1, steps) only for the MbPA head.
    """
    s = settings
    parts = [s["head"]] + ([s["objective"], f"T{s['T']}", f"g{s['gamma']:g}"] if s["head"] == "hebbian" else [])
    m = s.get("mbpa")
    if s["head"] == "mbpa" and m:
        parts += [f"K{m['k']}", f"mlr{m['lr']:g}", f"lam{m['lam']:g}", f"mem{m['size']}"]
        parts += [f"steps{m['steps']}"] if m.get("steps", 1) != 1 else []
    parts += [f"lr{s['lr']:g}", f"b{s['batch_size']}"]
    if s.get("criterion", "new") != "new":
        parts.append(f"crit-{s['criterion']}")
    return "-".join(parts)


def mean_steps_after(levels: list[dict[str, Any]], classes: int = BIND_FROM) -> float | None:
    """Mean steps of the levels that end with more than ``classes`` classes (None if there are none)."""
    steps = [r["steps"] for r in levels if r["classes"] > classes]
    return sum(steps) / len(steps) if steps else None


def merge_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Group per-run ``curriculum.json`` records by combination of settings, seeds inside.

    Returns ``{"combinations": {name: {"settings", "seeds": {seed: record}}}, "summary": [...]}``;
    each summary row has the mean over seeds of the per-seed mean steps per level after
    :data:`BIND_FROM` classes, its standard deviation over seeds, and the ratio of the matching
    softmax combination's mean to it (same lr, batch size and criterion): above 1 means fewer
    steps than softmax.
    """
    combos: dict[str, dict[str, Any]] = {}
    for rec in records:
        settings = {k: rec.get(k) for k in SETTINGS}
        name = combination_name(settings)
        combos.setdefault(name, {"settings": settings, "seeds": {}})["seeds"][str(rec["seed"])] = rec
    rows = []
    for name, c in combos.items():
        per_seed = [mean_steps_after(r["levels"]) for r in c["seeds"].values()]
        per_seed = [x for x in per_seed if x is not None]
        mean = sum(per_seed) / len(per_seed) if per_seed else None
        std = (sum((x - mean) ** 2 for x in per_seed) / (len(per_seed) - 1)) ** 0.5 if len(per_seed) > 1 else None
        rows.append({"combination": name, **c["settings"], "seeds": len(c["seeds"]), "seeds_past_80": len(per_seed),
                     "mean_steps_after_80": mean, "std_over_seeds": std,
                     "classes_reached": [r["classes"] for r in c["seeds"].values()],
                     "steps": [r["step"] for r in c["seeds"].values()]})
    for row in rows:
        base = next((r for r in rows if r["head"] == "softmax" and all(r[k] == row[k] for k in
                                                                       ("lr", "batch_size", "criterion"))), None)
        ok = base is not None and base["mean_steps_after_80"] and row["mean_steps_after_80"]
        row["softmax"] = base["combination"] if base else None
        row["speedup_vs_softmax"] = base["mean_steps_after_80"] / row["mean_steps_after_80"] if ok else None
    return {"combinations": combos, "summary": rows}
