"""``fastbind corpus-stats [data=ptb,wikitext-2,synthetic] [key=value ...]``: corpora side by side.

Prints, for each corpus, the statistics that decide how much a fast-binding mechanism can
help (:mod:`fastbind.data.statistics`): test tokens per training-frequency bucket, type–token
growth, how often a rare word recurs within the window / document (what a neural cache
uses) and how much the previous two tokens tell about a rare word's identity (what
memorized activations use). ``out=FILE.json`` also writes them. The synthetic corpus takes
its ``synthetic.*`` settings, as in ``lm-train``::

    fastbind corpus-stats data=../shared/data/wikitext-2,../shared/data/ptb,synthetic
    fastbind corpus-stats data=synthetic synthetic.w_cue=0     # the generator without cues
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fastbind._io import atomic_write
from fastbind.data.statistics import corpus_statistics
from fastbind.data.synthetic import SyntheticConfig
from fastbind.errors import BadSetting, UserError
from fastbind.lm import LMTrainConfig, load_data
from fastbind.training.config import parse_cli


@dataclass
class CorpusStatsConfig:
    """Settings of ``fastbind corpus-stats``."""

    data: tuple[str, ...] = ("synthetic",)  # corpora, as lm-train's data= (comma-separated)
    data_dir: str | None = None  # cache folder for named data sets
    seed: int = 0  # of the synthetic corpus
    rare: int = 100  # a word is rare when its training count is in [1, rare)
    window: int = 2000  # look-back of the recurrence statistic, in tokens
    out: str | None = None  # also write the statistics to this JSON file
    progress: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:  # bad values fail while the command line is read, before any corpus is read
        if not self.data or not all(name.strip() for name in self.data):
            raise BadSetting("data", "must name one or more corpora, e.g. data=synthetic,ptb")
        if not 0 <= self.seed < 2**32:
            raise BadSetting("seed", "must lie in [0, 2**32)")
        if self.rare < 2:
            raise BadSetting("rare", "must be >= 2 (a rare word's training count lies in [1, rare))")
        if self.window < 1:
            raise BadSetting("window", "must be >= 1")


def _row(s: dict) -> list[str]:
    g, r, c = s["type_growth"], s["rare_recurrence"], s["context_gain"]
    shares = " / ".join(f"{100 * v:.0f}" for v in s["bucket_share"].values())
    types = " / ".join(f"{v:,}" for v in g["types"].values())
    doc = "–" if r["in_document"] is None else f"{100 * r['in_document']:.0f}%"
    beta = " / ".join(f"{v:.2f}" for v in g["heaps_beta"].values()) or "–"
    return [s["name"], f"{s['train_tokens']:,}", shares, types, beta, f"{100 * r['in_window']:.0f}%", doc,
            f"{c['gain_nats']:.2f}"]


def format_stats(stats: list[dict]) -> str:
    """A markdown table of :func:`corpus_statistics` results, one row per corpus."""
    s0 = stats[0]
    head = ["corpus", "train tokens", "test tokens % (" + " / ".join(s0["bucket_share"]) + ")",
            "types after " + " / ".join(f"{n:,}" for n in s0["type_growth"]["types"]),
            "Heaps β (" + " / ".join(s0["type_growth"]["heaps_beta"]) + ")",
            f"rare recur in {s0['settings']['window']:,}", "rare recur in doc", "context gain (nats)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_row(s)) + " |" for s in stats]
    return "\n".join(lines)


def run(cfg: CorpusStatsConfig) -> list[dict]:
    stats = []
    for name in tqdm(cfg.data, desc="corpora", disable=not cfg.progress):
        corpus = load_data(LMTrainConfig(data=name, data_dir=cfg.data_dir, seed=cfg.seed, synthetic=cfg.synthetic))
        stats.append({"data": name, **corpus_statistics(corpus, rare=cfg.rare, window=cfg.window)})
    print(format_stats(stats))
    print(f"(rare = training count in [1, {cfg.rare}); context gain = nats the previous two tokens take off a "
          "rare word's identity, held-out)")
    if cfg.out:
        text = json.dumps(stats, indent=2).encode()
        atomic_write(Path(cfg.out), lambda fh: fh.write(text))
    return stats


CONFIG = CorpusStatsConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, CorpusStatsConfig)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (settings are key=value, e.g. data=ptb)")
    run(cfg)
    return 0
