"""fastbind corpus-stats: a side-by-side table and a JSON file; one-line errors."""

from __future__ import annotations

import json

from fastbind.cli import main as cli

SMALL = ["synthetic.train_tokens=20000", "synthetic.valid_tokens=1000", "synthetic.test_tokens=5000",
         "synthetic.background_vocab=800", "synthetic.entity_pool=600", "synthetic.num_topics=5", "progress=false"]


def test_prints_a_row_per_corpus_and_writes_json(tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert cli(["corpus-stats", "data=synthetic,synthetic", f"out={out}", "window=500", *SMALL]) == 0
    table = capsys.readouterr().out
    assert table.count("| synthetic |") == 2 and "context gain" in table and "rare recur in 500" in table
    stats = json.loads(out.read_text())
    assert [s["data"] for s in stats] == ["synthetic", "synthetic"] and stats[0] == stats[1]
    assert stats[0]["train_tokens"] >= 20000 and stats[0]["settings"]["window"] == 500


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    for argv, needle in ((["data=" + str(tmp_path / "none")], "unknown corpus"), (["rare=1"], "bad value rare=1: must be >= 2"),
                         (["oops"], "unexpected argument")):
        assert cli(["corpus-stats", *argv, *SMALL]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
