"""``fastbind lm-train``: train a language model (``arch=lstm|fwm|transformer``) with a softmax or
Hebbian Softmax head.

The loop is :func:`fastbind.lm.train` (the demo trains through it too); it reads top to bottom:
settings, data, model, optimizer, resume, train loop (validation and checkpoints inside),
summary. Usage::

    fastbind lm-train out=runs/ptb-hebb data=ptb head=hebbian T=100 gamma=0.1 max_steps=20000
    fastbind lm-train --config wikitext103-paper            # a preset; see docs/language_modelling.md
    fastbind lm-train out=runs/ptb-tf data=ptb arch=transformer transformer.blocks=2   # docs/transformer.md
    torchrun --nproc_per_node=2 -m fastbind lm-train out=runs/ddp batch_size=32

Re-running with the same ``out`` resumes from ``out/last.pt`` (the model settings and the
data must match); a resumed run ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

from fastbind.errors import UserError
from fastbind.lm import LMTrainConfig, train
from fastbind.training.config import parse_cli

CONFIG = LMTrainConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, LMTrainConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/x)")
    train(cfg)
    return 0
