"""``fastbind continual``: continual learning with an episodic memory (Sprechmann et al. 2018).

A network learns tasks one after another; every trained run is evaluated plain (``base``)
and with MbPA over its episodic memory (``+mbpa``, and ``+mbpa-rekey`` with keys recomputed by
the final network), so MbPA + EWC is ``method=ewc``'s ``+mbpa`` row. Usage::

    fastbind continual data=../shared/data/fashion-mnist out=runs/permuted seeds=0,1,2
    fastbind continual scenario=classes dataset=fashion-mnist,omniglot omniglot=../shared/data/omniglot
    fastbind continual scenario=imbalanced new_examples=1,5,50,500 method=finetune,replay
    fastbind continual method=ewc ewc.lambda=10,100,1000 out=runs/tune       # a list runs each value
    fastbind continual-sweep runs/permuted/permuted-finetune-lr0.03-s0 lr=0.1,1,10
    fastbind report runs/permuted

``scenario``, ``dataset``, ``method``, ``seeds``, ``lr``, ``new_examples``, ``ewc.lambda`` and
``replay.ratio`` take lists; every combination runs in its own sub-folder of ``out``
(``permuted-ewc-lr0.03-lam100-s0``), so combinations can also run as separate processes side by
side. Each sub-folder is a run folder (config.json, metrics.jsonl, last.pt, results.json);
re-running the same command resumes unfinished combinations and skips finished ones.
See docs/continual_learning.md.
"""

from __future__ import annotations

from fastbind.continual import ContinualConfig, run_continual
from fastbind.errors import UserError
from fastbind.training.config import parse_cli

CONFIG = ContinualConfig  # for `fastbind <command> --help`


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, ContinualConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/continual)")
    results = run_continual(cfg)
    for r in results:
        cells = ", ".join(f"{v} {_pct(m['average_accuracy'])}% (forgetting {_pct(m['forgetting'])})"
                          for v, m in r["variants"].items())
        status = "" if r["finished"] else f" [stopped after task {r['tasks_done']}]"
        print(f"{r['scenario']:10s} {r['method']:8s} seed {r['seed']}: {cells}{status}")
    print(f"run `fastbind report {cfg.out}` for the figures")
    return 0
