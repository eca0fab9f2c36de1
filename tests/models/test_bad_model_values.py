"""Model settings that do not go together: one line, before anything is written.

Single bad model values are rows of the table in tests/test_bad_values.py."""

from __future__ import annotations


from fastbind.cli import main as cli

def test_settings_that_do_not_go_together_are_one_line(tmp_path, capsys):
    # Checked once the vocabulary is known, still before anything is written.
    tiny = ["synthetic.train_tokens=20000", "synthetic.valid_tokens=2000", "synthetic.test_tokens=2000",
            "synthetic.background_vocab=1000", "synthetic.entity_pool=500", "synthetic.num_topics=5",
            f"data_dir={tmp_path / 'cache'}", "progress=false", "threads=1"]
    for items, fragment in ((["softmax=adaptive", "tied=true"], "tied=true needs softmax=full"),
                            (["softmax=adaptive", "cutoffs=[5,100000]"], "below the vocabulary size")):
        out = tmp_path / "run"
        assert cli(["lm-train", f"out={out}", *tiny, *items]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
        assert not out.exists()
