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
