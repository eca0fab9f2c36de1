"""``fastbind continual-sweep RUN_DIR ...``: MbPA settings tried over finished continual runs.

Evaluation only: each run's final network and episodic memory are loaded, and every
combination of memory size (a seeded uniform subset of the memory), K, local steps, local
learning rate and L2 pull is evaluated on every task's ``split`` (``valid`` to choose settings,
never ``test``; ``test`` to report them). The memory is only read. Writes
``RUN_DIR/mbpa-sweep-<split>.json`` (``-rekey`` with keys recomputed by the final network,
``-n<N>`` with ``eval_examples=N`` images per task); a later sweep adds its rows to the file. Usage::

    fastbind continual-sweep runs/permuted/permuted-finetune-lr0.03-s0 k=10,100,1024 lr=0.1,1,10
    fastbind continual-sweep runs/permuted/*-s0 size=1000,10000 steps=1,5 split=test
"""

from __future__ import annotations

from dataclasses import dataclass

from fastbind.continual import MbPASweep, sweep_run
from fastbind.errors import BadSetting, UserError
from fastbind.training.config import parse_cli


@dataclass
class ContinualSweepConfig(MbPASweep):
    """Settings of ``fastbind continual-sweep``: the grid (lists) and where to evaluate it."""

    split: str = "valid"
    data: str | None = None  # where the data lives now, if not where the run read it
    omniglot: str | None = None
    data_dir: str | None = None
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in ("valid", "test"):
            raise BadSetting("split", "must be valid or test")
        if self.threads < 0:
            raise BadSetting("threads", "must be >= 0")


CONFIG = ContinualSweepConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, runs = parse_cli(argv, ContinualSweepConfig)
    if not runs:
        raise UserError("give one or more run folders: fastbind continual-sweep RUN_DIR [key=value ...]")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    for run in runs:
        rec = sweep_run(run, cfg, cfg.split, data=cfg.data, omniglot=cfg.omniglot, data_dir=cfg.data_dir,
                        progress=cfg.progress)
        best = max(rec["rows"], key=lambda r: r["average_accuracy"])
        print(f"{run}: base {100 * rec['base']['average_accuracy']:.1f}%, best +mbpa "
              f"{100 * best['average_accuracy']:.1f}% at size {best['size']} k {best['k']} steps {best['steps']} "
              f"lr {best['lr']:g} l2 {best['l2']:g} ({cfg.split}); wrote {rec['name']}.json")
    return 0
