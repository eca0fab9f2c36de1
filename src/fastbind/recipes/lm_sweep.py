"""``fastbind lm-sweep RUN_DIR``: grid search of the evaluation-time memories on the validation split.

The model runs over the split once; each grid point then costs only memory work, and the
mixing weights λ are searched on stored log-probabilities for free
(:mod:`fastbind.evaluation.sweep`, whose defaults are the paper's grids, Rae et al. 2018,
appendix A.1). Writes ``RUN_DIR/sweep-<split>.json`` (every grid row and the best of each
grid, in the settings layout of ``eval-<split>.json``) and ``sweep-<split>.md`` and, with
``apply_test=true``, evaluates the best settings on the test split (``eval-test.json``)::

    fastbind lm-sweep runs/ptb-hebb
    fastbind lm-sweep runs/ptb-hebb mbpa=false                  # cache only
    fastbind lm-sweep runs/ptb-hebb max_tokens=20000 ks=[1024] steps=[1]
    fastbind lm-sweep runs/wt2-hebb mbpa_stride=10              # MbPA on every 10th target
    fastbind lm-sweep runs/ptb-tf knnlm=true knnlm_stride=10 dyneval=true stride=16

``knnlm=true`` adds the kNN-LM (a datastore of the training split, searched once at the largest
``k``; ``knnlm_ks``, ``knnlm_temperatures``, ``knnlm_lambdas``), ``dyneval=true`` dynamic
evaluation (``dyneval_lrs`` × ``dyneval_decays`` on the first ``dyneval_max_tokens`` tokens);
each is tuned alone, then only the λs of every combination (``mix_lambdas``), the
combinations with dynamic evaluation over the adapted model's stream.

MbPA costs far more than the cache, so on a CPU ``mbpa_stride`` / ``test_mbpa_stride``
estimate the MbPA variants from a systematic sample of the targets while the memory still
reads every step; the model and cache are then also reported on that sample.
"""

from __future__ import annotations

from pathlib import Path

from fastbind.errors import UserError
from fastbind.evaluation import format_table
from fastbind.evaluation.sweep import SweepConfig
from fastbind.lm import sweep_run
from fastbind.training.config import parse_cli

CONFIG = SweepConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, SweepConfig)
    if len(rest) != 1:
        raise UserError("give exactly one run folder: fastbind lm-sweep RUN_DIR [key=value ...]")
    result = sweep_run(Path(rest[0]), cfg)
    print(result["markdown"])
    if "test" in result:
        t = result["test"]
        for name, v in t["variants"].items():
            print(format_table(v, f"test, {name}:"))
        print(f"wrote {t['path']}")
    return 0
