"""Command line: ``fastbind <command> [--config FILE] [key=value ...]``.

Each command is a recipe module exposing ``main(argv) -> int``; recipes are imported
lazily so ``fastbind --help`` stays fast. Errors a user can fix (bad input, missing
files, bad keys) are raised as :class:`fastbind.errors.UserError` and reported as one
line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastbind import __version__
from fastbind.errors import UserError

# command -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fastbind.recipes.demo", "the main job: softmax vs Hebbian LM on the synthetic corpus"),
    "lm-train": ("fastbind.recipes.lm_train", "train a language model: LSTM, FWM or transformer; softmax or Hebbian head"),
    "lm-eval": ("fastbind.recipes.lm_eval", "perplexity of a run, overall and by frequency bucket"),
    "lm-sweep": ("fastbind.recipes.lm_sweep", "tune the cache, MbPA, kNN-LM and dynamic evaluation on validation, apply to test"),
    "curriculum": ("fastbind.recipes.curriculum", "Omniglot class curriculum: steps per level for each head"),
    "catbabi": ("fastbind.recipes.catbabi", "catbAbI: Fast Weight Memory vs LSTM, accuracy per bAbI task"),
    "metarl": ("fastbind.recipes.metarl", "meta-RL on random-graph POMDPs: LSTM vs Fast Weight Memory agents"),
    "continual": ("fastbind.recipes.continual", "continual learning: MbPA vs fine-tuning, EWC, replay, Hebbian"),
    "continual-sweep": ("fastbind.recipes.continual_sweep", "MbPA settings over finished continual runs (eval only)"),
    "corpus-stats": ("fastbind.recipes.corpus_stats", "statistics of corpora side by side (buckets, recurrence, context)"),
    "report": ("fastbind.recipes.report", "plots and a markdown table comparing runs"),
}


def _parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    epilog = "commands:\n" + "\n".join(lines) if lines else None
    p = argparse.ArgumentParser(
        prog="fastbind",
        description="Fast binding of rare and novel classes (Hebbian Softmax, neural cache, MbPA).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"fastbind {__version__}")
    p.add_argument("command", nargs="?", help="the command to run (see below)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="command arguments: [--config FILE] [key=value ...]")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 0
    if ns.command not in COMMANDS:
        print(f"fastbind: error: unknown command {ns.command!r} (known: {', '.join(COMMANDS) or 'none'})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[ns.command][0])
    config_cls = getattr(module, "CONFIG", None)
    if config_cls is not None and any(a in ("-h", "--help") for a in ns.args):
        from fastbind.training.config import format_help

        print((module.__doc__ or "").strip())
        print(f"\nsettings (key=value; --config FILE.json or a preset name):\n{format_help(config_cls)}")
        return 0
    try:
        return int(module.main(ns.args) or 0)
    except UserError as e:
        print(f"fastbind {ns.command}: error: {e}", file=sys.stderr)
        return 2
