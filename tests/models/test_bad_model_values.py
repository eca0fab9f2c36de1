"""Bad model settings: one line on stderr naming the key, exit 2, and no run folder."""

from __future__ import annotations

import pytest

from fastbind.cli import main as cli

# (command, key=value items, a fragment of the message). The key typed last is the one at fault.
BAD = [
    ("lm-train", ["hidden=0"], "must be >= 1"),
    ("lm-train", ["lstm.layers=0"], "must be >= 1"),
    ("lm-train", ["model.layers=0"], "must be >= 1"),  # the key of earlier versions
    ("lm-train", ["emb_dim=0"], "must be >= 1"),
    ("lm-train", ["head=hebbian", "T=-5"], "must be >= 0"),
    ("lm-train", ["head=hebbian", "gamma=2"], "(0, 1]"),
    ("lm-train", ["gamma=0"], "(0, 1]"),
    ("lm-train", ["softmax=adaptive", "cutoffs=[5,3]"], "increasing"),
    ("lm-train", ["cutoffs=[0,3]"], "positive"),
    ("lm-train", ["div_value=0"], "> 0"),
    ("lm-train", ["lstm.dropout=1"], "[0, 1)"),
    ("lm-train", ["model.dropout=1"], "[0, 1)"),
    ("lm-train", ["lstm.input_dropout=-0.1"], "[0, 1)"),
    ("lm-train", ["fwm.size=0"], "must be >= 1"),
    ("lm-train", ["model.fwm_size=0"], "must be >= 1"),
    ("lm-train", ["fwm.hops=0"], "must be >= 1"),
    ("lm-train", ["model.fwm_hops=0"], "must be >= 1"),
    ("lm-train", ["model.vocab_size=-1"], ">= 0"),
    ("lm-train", ["arch=gru"], "lstm, fwm"),
    ("lm-train", ["head=adaptive"], "hebbian"),
    ("lm-train", ["softmax=sampled"], "adaptive"),
    ("lm-train", ["objective=hinge"], "smax"),
    ("catbabi", ["hidden=0"], "must be >= 1"),
    ("catbabi", ["emb_dim=-3"], "must be >= 1"),
    ("catbabi", ["fwm.hops=0"], "must be >= 1"),
    ("catbabi", ["model.fwm_size=0"], "must be >= 1"),
    ("catbabi", ["model.dropout=1.5"], "[0, 1)"),
    ("catbabi", ["model.head=hebbian", "model.gamma=2"], "(0, 1]"),
    ("catbabi", ["arch=gru"], "lstm, fwm"),
]


@pytest.mark.parametrize("command,items,fragment", BAD, ids=[" ".join([c, *i]) for c, i, _ in BAD])
def test_bad_model_value_is_one_line_and_writes_nothing(tmp_path, capsys, command, items, fragment):
    out = tmp_path / "run"
    assert cli([command, f"out={out}", "progress=false", *items]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    # The setting at fault is named (under the field's name, the last part of the typed key).
    key = items[-1].split("=")[0]
    field = key.split(".")[-1].removeprefix("fwm_")
    assert field in err[0], err
    assert not out.exists()


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
