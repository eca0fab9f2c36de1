"""Every bad setting is one line on stderr naming the key as typed, exit status 2, and nothing written.

Each row of ``CASES`` runs ``fastbind COMMAND out=RUN KEY=VALUE`` in-process through the CLI entry
point: the value is refused while the command line is read, before any data, model or run folder,
so each row takes milliseconds. To cover a new setting, add a row ``(command, "key=value",
"a fragment of the message")``; the key as typed must appear in the message too.
"""

from __future__ import annotations

import pytest

from fastbind.cli import main as cli

CASES: list[tuple[str, str, str]] = [
    # lm-train: LMTrainConfig
    ("lm-train", "seed=-1", "must lie in [0, 2**32)"),
    ("lm-train", "data= ", "must name a corpus"),
    ("lm-train", "device=gpu", "must be auto, cpu, mps, cuda or cuda:N"),
    ("lm-train", "threads=-1", "must be >= 0"),
    ("lm-train", "max_steps=0", "must be >= 1"),
    ("lm-train", "max_minutes=-1", "must be >= 0"),
    ("lm-train", "stop_after=-5", "must be >= 0"),
    ("lm-train", "batch_size=0", "must be >= 1"),
    ("lm-train", "bptt=-1", "must be >= 0"),
    ("lm-train", "carry_state=maybe", "expected a boolean"),
    ("lm-train", "eval_every=-1", "must be >= 0"),
    ("lm-train", "eval_batch_size=0", "must be >= 1"),
    ("lm-train", "eval_max_tokens=-1", "must be >= 0"),
    ("lm-train", "patience=-2", "must be >= 0"),
    ("lm-train", "log_every=0", "must be >= 1"),
    ("lm-train", "memorize_after=-1", "must be >= 0"),
    ("lm-train", "buckets=[1000,100]", "strictly increasing"),
    ("lm-train", "buckets=[0,100]", "must be positive"),
    ("lm-train", "buckets=[10,x]", "expected an integer"),
    ("lm-train", "tensorboard=perhaps", "expected a boolean"),
    ("lm-train", "progress=2", "expected a boolean"),
    ("lm-train", "seed=1.5", "expected an integer"),
    # lm-train: the transformer section
    ("lm-train", "transformer.blocks=0", "must be >= 1"),
    ("lm-train", "transformer.heads=0", "must be >= 1"),
    ("lm-train", "transformer.context=0", "must be >= 1"),
    ("lm-train", "transformer.width=-1", "must be >= 1, or 0"),
    ("lm-train", "transformer.positions=alibi", "is not one of rotary, learned"),
    ("lm-train", "transformer.mlp=relu", "is not one of gelu, swiglu"),
    ("lm-train", "transformer.mlp_ratio=0", "must be > 0"),
    ("lm-train", "transformer.dropout=1", "must lie in [0, 1)"),
    ("lm-train", "transformer.attn_dropout=-0.1", "must lie in [0, 1)"),
    # lm-train: OptimConfig (the short key lr and the full keys)
    ("lm-train", "lr=0", "must be > 0"),
    ("lm-train", "optim.lr=-1e-3", "must be > 0"),
    ("lm-train", "optim.name=lion", "is not one of adam, adamw, rmsprop, sgd"),
    ("lm-train", "optim.momentum=-0.9", "must be >= 0"),
    ("lm-train", "optim.weight_decay=-1", "must be >= 0"),
    ("lm-train", "optim.eps=-1e-8", "must be >= 0"),
    ("lm-train", "optim.alpha=1", "must lie in [0, 1)"),
    ("lm-train", "optim.betas=[0.9,1]", "must be two numbers in [0, 1)"),
    ("lm-train", "optim.betas=[0.9]", "expected 2 items"),
    ("lm-train", "optim.clip=-1", "must be >= 0"),
    ("lm-train", "optim.schedule=step", "is not one of constant, cosine, linear"),
    ("lm-train", "optim.warmup_steps=-1", "must be >= 0"),
    ("lm-train", "optim.min_lr_ratio=1.5", "must lie in [0, 1]"),
    # lm-train: SyntheticConfig
    ("lm-train", "synthetic.train_tokens=0", "must be >= 1"),
    ("lm-train", "synthetic.valid_tokens=0", "must be >= 1"),
    ("lm-train", "synthetic.test_tokens=0", "must be >= 1"),
    ("lm-train", "synthetic.background_vocab=0", "must be >= 1"),
    ("lm-train", "synthetic.background_zipf=-1", "must be >= 0"),
    ("lm-train", "synthetic.num_topics=0", "must be >= 1"),
    ("lm-train", "synthetic.topic_words=0", "must lie in [1, 9900]"),
    ("lm-train", "synthetic.topic_words=20000", "must lie in [1, 9900]"),
    ("lm-train", "synthetic.topic_skip_top=-1", "must be >= 0"),
    ("lm-train", "synthetic.topic_zipf=-0.5", "must be >= 0"),
    ("lm-train", "synthetic.entity_pool=-1", "must be >= 0"),
    ("lm-train", "synthetic.entity_pool=0", "must be > 0 while w_new_entity"),
    ("lm-train", "synthetic.entity_zipf=-1", "must be >= 0"),
    ("lm-train", "synthetic.bigram_successors=0", "must be >= 1"),
    ("lm-train", "synthetic.bigram_decay=0", "must lie in (0, 1]"),
    ("lm-train", "synthetic.w_background=-1", "must be >= 0"),
    ("lm-train", "synthetic.w_topic=-1", "must be >= 0"),
    ("lm-train", "synthetic.w_bigram=-1", "must be >= 0"),
    ("lm-train", "synthetic.w_new_entity=-1", "must be >= 0"),
    ("lm-train", "synthetic.w_repeat_entity=-1", "must be >= 0"),
    ("lm-train", "synthetic.w_cue=-1", "must be >= 0"),
    ("lm-train", "synthetic.cue_words=0", "must be >= 1 while w_cue > 0"),
    ("lm-train", "synthetic.mean_sentence_length=0.5", "must be >= 1"),
    ("lm-train", "synthetic.mean_sentences_per_document=0", "must be >= 1"),
    # catbabi: CatbAbIConfig (and its optimizer through lr)
    ("catbabi", "mode=both", "is not one of qa, lm"),
    ("catbabi", "seed=-1", "must lie in [0, 2**32)"),
    ("catbabi", "device=tpu", "must be auto, cpu, mps, cuda or cuda:N"),
    ("catbabi", "threads=-1", "must be >= 0"),
    ("catbabi", "max_steps=0", "must be >= 1"),
    ("catbabi", "max_minutes=-1", "must be >= 0"),
    ("catbabi", "batch_size=0", "must be >= 1"),
    ("catbabi", "seg_len=0", "must be >= 1"),
    ("catbabi", "valid_fraction=1", "must lie in (0, 1)"),
    ("catbabi", "valid_fraction=0", "must lie in (0, 1)"),
    ("catbabi", "eval_every=-1", "must be >= 0"),
    ("catbabi", "eval_segments=-1", "must be >= 0"),
    ("catbabi", "log_every=0", "must be >= 1"),
    ("catbabi", "test=later", "is not one of end, now"),
    ("catbabi", "compile=maybe", "expected a boolean"),
    ("catbabi", "tensorboard=maybe", "expected a boolean"),
    ("catbabi", "progress=maybe", "expected a boolean"),
    ("catbabi", "lr=0", "must be > 0"),
    ("catbabi", "optim.clip=-1", "must be >= 0"),
    # curriculum: CurriculumConfig
    ("curriculum", "head=foo", "is not one of softmax, hebbian, mbpa"),
    ("curriculum", "head=[]", "needs at least one value"),
    ("curriculum", "seeds=[]", "needs at least one value"),
    ("curriculum", "seeds=0,-1", "each value must lie in [0, 2**32)"),
    ("curriculum", "objective=cosine", "is not one of l2, ip, svm, smax"),
    ("curriculum", "T=5,-1", "each value must be >= 0"),
    ("curriculum", "gamma=0.1,2", "each value must lie in [0, 1]"),
    ("curriculum", "lr=0", "each value must be positive"),
    ("curriculum", "batch_size=32,0", "each value must be >= 1"),
    ("curriculum", "criterion=some", "is not one of new, all"),
    ("curriculum", "start_classes=0", "must be >= 1"),
    ("curriculum", "new_classes=0", "must be >= 1"),
    ("curriculum", "threshold=1", "must lie in [0, 1)"),
    ("curriculum", "eval_every=0", "must be >= 1"),
    ("curriculum", "max_classes=-1", "must be >= 0"),
    ("curriculum", "max_steps=0", "must be >= 1"),
    ("curriculum", "max_minutes=-1", "must be >= 0"),
    ("curriculum", "checkpoint_every=0", "must be >= 1"),
    ("curriculum", "augment=maybe", "expected a boolean"),
    ("curriculum", "dropout=1", "must lie in [0, 1)"),
    ("curriculum", "channels=0", "must be >= 1"),
    ("curriculum", "device=gpu", "must be auto, cpu, mps, cuda or cuda:N"),
    ("curriculum", "threads=-1", "must be >= 0"),
    ("curriculum", "progress=maybe", "expected a boolean"),
    # curriculum: MbPAHeadSettings
    ("curriculum", "mbpa.size=0", "must be >= 1"),
    ("curriculum", "mbpa.k=0", "must be >= 1"),
    ("curriculum", "mbpa.steps=0", "must be >= 1"),
    ("curriculum", "mbpa.lr=0", "must be > 0"),
    ("curriculum", "mbpa.l2=-1", "must be >= 0"),
    ("curriculum", "mbpa.lambda=1.5", "must lie in [0, 1]"),
    ("curriculum", "mbpa.eps=0", "must be > 0"),
    # corpus-stats: CorpusStatsConfig
    ("corpus-stats", "data=[]", "must name one or more corpora"),
    ("corpus-stats", "seed=-1", "must lie in [0, 2**32)"),
    ("corpus-stats", "rare=1", "must be >= 2"),
    ("corpus-stats", "window=0", "must be >= 1"),
    ("corpus-stats", "progress=maybe", "expected a boolean"),
    ("corpus-stats", "synthetic.num_topics=0", "must be >= 1"),
    # report: ReportConfig
    ("report", "split=dev", "must be valid, test or train"),
    # model sections (models/registry.py): model, lstm, fwm; the keys of earlier versions too
    ("lm-train", "hidden=0", "must be >= 1"),
    ("lm-train", "lstm.layers=0", "must be >= 1"),
    ("lm-train", "model.layers=0", "must be >= 1"),
    ("lm-train", "emb_dim=0", "must be >= 1"),
    ("lm-train", "T=-5", "must be >= 0"),
    ("lm-train", "gamma=2", "(0, 1]"),
    ("lm-train", "gamma=0", "(0, 1]"),
    ("lm-train", "cutoffs=[5,3]", "increasing"),
    ("lm-train", "cutoffs=[0,3]", "positive"),
    ("lm-train", "div_value=0", "> 0"),
    ("lm-train", "lstm.dropout=1", "[0, 1)"),
    ("lm-train", "model.dropout=1", "[0, 1)"),
    ("lm-train", "lstm.input_dropout=-0.1", "[0, 1)"),
    ("lm-train", "fwm.size=0", "must be >= 1"),
    ("lm-train", "model.fwm_size=0", "must be >= 1"),
    ("lm-train", "fwm.hops=0", "must be >= 1"),
    ("lm-train", "model.fwm_hops=0", "must be >= 1"),
    ("lm-train", "model.vocab_size=-1", ">= 0"),
    ("lm-train", "arch=gru", "lstm, fwm"),
    ("lm-train", "head=adaptive", "hebbian"),
    ("lm-train", "softmax=sampled", "adaptive"),
    ("lm-train", "objective=hinge", "smax"),
    ("catbabi", "hidden=0", "must be >= 1"),
    ("catbabi", "emb_dim=-3", "must be >= 1"),
    ("catbabi", "fwm.hops=0", "must be >= 1"),
    ("catbabi", "model.fwm_size=0", "must be >= 1"),
    ("catbabi", "model.dropout=1.5", "[0, 1)"),
    ("catbabi", "model.gamma=2", "(0, 1]"),
    ("catbabi", "arch=gru", "lstm, fwm"),
    # continual: ContinualConfig and its sections
    ("continual", "dataset=omniglot", "omniglot runs the classes scenario only"),
    ("continual", "tasks=1", "must be >= 2"),
    ("continual", "tasks=-1", "must be >= 0"),
    ("continual", "method=sgd", "'sgd' is not one of"),
    ("continual", "scenario=split", "'split' is not one of"),
    ("continual", "seeds=-1", "must lie in [0, 2**32)"),
    ("continual", "lr=0", "each value must be positive"),
    ("continual", "new_examples=0", "each value must be >= 1"),
    ("continual", "eval_at=-1", "each value must be >= 0"),
    ("continual", "memory=0", "must be >= 1"),
    ("continual", "batch_size=0", "must be >= 1"),
    ("continual", "train_examples=0", "must be >= 1"),
    ("continual", "old_classes=0", "must be >= 1"),
    ("continual", "steps_per_task=-1", "must be >= 0"),
    ("continual", "eval_examples=-1", "must be >= 0"),
    ("continual", "stop_after=-1", "must be >= 0"),
    ("continual", "valid_fraction=1", "must lie in (0, 1)"),
    ("continual", "dropout=1", "must lie in [0, 1)"),
    ("continual", "momentum=-0.5", "must be >= 0"),
    ("continual", "hidden=[0]", "sizes >= 1"),
    ("continual", "device=gpu", "must be auto, cpu, mps, cuda or cuda:N"),
    ("continual", "mbpa.k=0", "must be >= 1"),
    ("continual", "mbpa.steps=0", "must be >= 1"),
    ("continual", "mbpa.lr=0", "must be > 0"),
    ("continual", "mbpa.l2=-1", "must be >= 0"),
    ("continual", "mbpa.eps=0", "must be > 0"),
    ("continual", "ewc.lambda=-1", "values >= 0"),
    ("continual", "ewc.fisher_examples=0", "must be >= 1"),
    ("continual", "replay.ratio=0", "values > 0"),
    ("continual", "replay.ratio=0.01", "at least one replayed example per batch of 32"),
    ("continual", "hebbian.gamma=2", "must lie in [0, 1]"),
    ("continual", "hebbian.T=-1", "must be >= 0"),
    ("continual", "memory_policy=fifo", "is not one of reservoir, recent"),
]


@pytest.mark.parametrize("command,item,fragment", CASES, ids=[f"{c} {i}" for c, i, _ in CASES])
def test_bad_value_is_one_line_naming_the_key(tmp_path, capsys, command, item, fragment):
    out = tmp_path / "run"
    assert cli([command, f"out={out}", item]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    key = item.partition("=")[0].strip()
    assert fragment in lines[0] and key in lines[0], lines[0]
    assert lines[0].startswith(f"fastbind {command}: error: ")
    assert not out.exists()


def test_a_bad_value_is_named_as_typed_with_its_value(capsys):
    assert cli(["lm-train", "out=unused", "batch_size=0"]) == 2
    assert capsys.readouterr().err.strip() == "fastbind lm-train: error: bad value batch_size=0: must be >= 1"
    assert cli(["curriculum", "out=unused", "mbpa.lambda=1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastbind curriculum: error: bad value mbpa.lambda=1.5: must lie in [0, 1]"


def test_a_bad_value_in_a_config_file_is_named_by_its_dotted_path(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"optim": {"lr": 0}, "synthetic": {"num_topics": 0}}')
    assert cli(["lm-train", f"out={tmp_path / 'run'}", "--config", str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err.strip() == "fastbind lm-train: error: bad value optim.lr=0: must be > 0"
    assert not (tmp_path / "run").exists()
