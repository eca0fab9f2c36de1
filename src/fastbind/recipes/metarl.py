"""``fastbind metarl``: meta-reinforcement learning on random-graph POMDPs, LSTM vs FWM agents.

The FWM paper's section 4.2 (Schlag et al. 2021): an agent is dropped into an unknown graph of
islands and means of transport, sees only where it is and where it should go, and must find
the way, remember it and use it again within an episode. Usage::

    fastbind metarl out=runs/metarl-fwm arch=fwm hidden=32 agent.fwm_size=16 max_steps=30000
    fastbind metarl out=runs/metarl-lstm arch=lstm hidden=32 max_steps=30000 max_minutes=60   # slices
    fastbind report runs/metarl-fwm runs/metarl-lstm

``max_steps`` counts training episodes (each one Adam step over 600 environments × 30 steps).
Re-running with the same ``out`` resumes bit-identically. ``metrics.jsonl`` holds the training
reward (``train/reward``) and the test reward on the 600 test graphs (``test/reward``, one
episode every ``test_every`` training episodes); ``results.json`` the mean of the last 10 tests.
See docs/metarl.md.
"""

from __future__ import annotations

from fastbind.errors import UserError
from fastbind.metarl import MetaRLConfig, train
from fastbind.training.config import parse_cli

CONFIG = MetaRLConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, MetaRLConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. out=runs/metarl)")
    s = train(cfg)
    test = s["test_reward"]
    print(f"{cfg.out}: episode {s['step']}/{cfg.max_steps}, test reward "
          f"{'–' if test is None else f'{test:.2f}'} (mean of the last {min(s['tests'], 10)} tests)")
    return 0
