"""``fastbind lm-eval RUN_DIR [split=test] [key=value ...]``: perplexity by frequency bucket.

``fastbind lm-eval model=PATH text=FILE|corpus [train=FILE|corpus] out=DIR [key=value ...]``
evaluates a local Hugging Face causal LM the same way, on its own tokenizer, with per-word
perplexity beside per-token (:func:`fastbind.hf.evaluate_model`, docs/huggingface.md).

With ``cache.lambda=0.1``, ``mbpa.lambda=0.04`` and/or ``knnlm.lambda=0.25`` it also evaluates
the model with evaluation-time memories (Rae et al. 2018, Table 1; Khandelwal et al. 2020): a
neural cache, MbPA and the kNN-LM's training-set datastore over the split's stream, mixed with
the model in probability space; with ``dyneval.lr=3e-5`` also the dynamically evaluated model
(Krause et al. 2018), alone and with the same memories. Reported as ``model``, ``+cache``,
``+mbpa``, ``+knnlm``, ``+cache+knnlm``, ..., ``+dyneval``, ``+dyneval+cache``, ... under
``"variants"``, each with the settings that made it (the top-level numbers stay the model's
own). A transformer is read in sliding windows (``window``, ``stride``). See
docs/evaluation_memories.md and docs/transformer.md.

Evaluates a trained run's checkpoint on one split as one contiguous stream (batch 1 by
default, recurrent state carried across chunks) and reports the perplexity overall and per
training-frequency bucket (``>10K``, ``1K-10K``, ``100-1K``, ``<100`` by default), as in
Table 2 of Rae et al. (2018). Prints a table and writes ``RUN_DIR/eval-<split>.json``, one
layout with or without memories (:func:`fastbind.runs.eval_record`)::

    {"ppl": 124.5, "nll": 4.82, "tokens": 82430,
     "buckets": [{"name": ">10K", "tokens": 51234, "ppl": 40.1}, ...],
     "variants": {"model": {"ppl": 124.5, ..., "settings": null},
                  "+cache": {..., "settings": {"cache": {"size": 10000, "theta": 0.3, "lambda": 0.1}}}, ...},
     "split": "test", "checkpoint": "best", "step": 9000, ...}
"""

from __future__ import annotations

from pathlib import Path

from fastbind.errors import UserError
from fastbind.evaluation import format_table
from fastbind.lm import LMEvalConfig, evaluate_run
from fastbind.training.config import parse_cli

CONFIG = LMEvalConfig  # for `fastbind <command> --help`


def main(argv: list[str]) -> int:
    cfg, rest = parse_cli(argv, LMEvalConfig)
    if cfg.model:
        if rest:
            raise UserError(f"give a run folder or model=PATH, not both (got {rest[0]!r})")
        from fastbind.hf.evaluate import evaluate_model  # noqa: PLC0415 — needs the hf extra

        result = evaluate_model(cfg)
        title = f"{cfg.model} ({result['architecture']}) — {result['split']} perplexity"
        for name, v in result["variants"].items():
            print(format_table(v, title if name == "model" else f"{name}:"))
            if "word_ppl" in v:
                print(f"  per word {v['word_ppl']:,.2f} ({result['words']:,} words)")
        print(f"wrote {result['path']}")
        return 0
    if len(rest) != 1:
        raise UserError("give exactly one run folder: fastbind lm-eval RUN_DIR [split=test] [key=value ...]")
    run_dir = Path(rest[0])
    result = evaluate_run(run_dir, cfg)
    title = f"{run_dir} ({result['head']}, step {result['step']}) — {cfg.split} perplexity"
    for name, v in result["variants"].items():
        print(format_table(v, title if name == "model" else f"{name}:"))
    print(f"wrote {result['path']}")
    return 0
