"""``fastbind lm-eval model=PATH``: a local Hugging Face model evaluated on its own tokenizer."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

pytest.importorskip("transformers")
import torch.nn.functional as F

from hf_models import LINES, make_tokenizer, tiny_model
from fastbind.cli import main as cli
from fastbind.errors import UserError
from fastbind.hf import HFCausalLM
from fastbind.hf.evaluate import encode_text
from fastbind.lm import LMEvalConfig
from fastbind.memory.neural_cache import NeuralCache


@pytest.fixture
def folder(tmp_path):
    tok = make_tokenizer()
    model = tiny_model("llama", len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "train.txt").write_text("\n".join(LINES * 4) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(LINES[::-1] * 2) + "\n")
    return tmp_path


def _digest(folder) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        h.update(str(p).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _run(folder, *extra) -> dict:
    args = ["lm-eval", f"model={folder / 'model'}", f"text={folder / 'test.txt'}", f"out={folder / 'out'}",
            "progress=false", *extra]
    assert cli(args) == 0
    return json.loads((folder / "out" / "eval-test.json").read_text())


def _slow_windowed_nll(model, ids: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Target by target: t + 1 predicted from the window that scores it (as window_spans says)."""
    n = ids.numel() - 1
    out = torch.empty(n)
    with torch.no_grad():
        for t in range(n):
            if t < window:
                a = 0
            else:  # the window whose new targets contain t
                e = window + ((t - window) // stride + 1) * stride
                a = min(e, n) - window
            logits = model(input_ids=ids[a : t + 1].unsqueeze(0)).logits[0, -1]
            out[t] = F.cross_entropy(logits.float().unsqueeze(0), ids[t + 1].unsqueeze(0))
    return out


def test_windowed_perplexity_and_words_against_slow_reference(folder):
    before = _digest(folder / "model")
    r = _run(folder, "window=16", "stride=4")
    assert _digest(folder / "model") == before  # the model folder is never written
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder / "model")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder / "model").eval()
    ids, words = encode_text(tok, folder / "test.txt")
    assert ids[0] == tok.bos_token_id and words == len((folder / "test.txt").read_text().split())
    nll = _slow_windowed_nll(model, ids, 16, 4)
    assert r["tokens"] == ids.numel() - 1 == words
    assert r["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    assert r["variants"]["model"]["word_ppl"] == pytest.approx(math.exp(nll.sum().item() / words), rel=1e-5)
    assert r["buckets"] == [] and r["edges"] == []  # no train=: no buckets
    assert r["min_context"] == 12 and r["train"] is None


def test_memories_and_buckets(folder):
    r = _run(folder, f"train={folder / 'train.txt'}", "window=16", "stride=8", "cache.lambda=0.2",
             "cache.theta=0.5", "mbpa.lambda=0.05", "mbpa.steps=1", "knnlm.lambda=0.2", "knnlm.k=4",
             "dyneval.lr=1e-4", "dyneval.stats_batch=2")
    names = set(r["variants"])
    assert {"model", "+cache", "+mbpa", "+knnlm", "+dyneval", "+dyneval+cache+mbpa+knnlm"} <= names
    # buckets by the training text's token counts: every target of the test text is in the train text
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder / "model")
    train, _ = encode_text(tok, folder / "train.txt")
    test, _ = encode_text(tok, folder / "test.txt")
    counts = torch.bincount(train, minlength=len(tok))
    assert sum(b["tokens"] for b in r["buckets"]) == r["tokens"]
    assert [b for b in r["buckets"] if b["name"] == "<100"][0]["tokens"] == int((counts[test[1:]] < 100).sum())
    assert any(p.name.startswith("knnlm-") for p in (folder / "out").iterdir())
    assert r["variants"]["+knnlm"]["word_ppl"] > 0 and r["variants"]["+dyneval"]["settings"]["dyneval"]["lr"] == 1e-4


def test_hidden_equals_head_input(folder):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder / "model").eval()
    model = HFCausalLM(hf)
    x = torch.randint(0, model.vocab_size, (1, 12))
    out = model(x, targets=x)
    with torch.no_grad():
        h = hf.base_model(input_ids=x).last_hidden_state
    torch.testing.assert_close(out.hidden, h)
    torch.testing.assert_close(out.logits, hf.lm_head(h))
    assert model.context == 64 and model.d_out == 32


def test_cache_variant_matches_direct_mixture(folder):
    """A text shorter than the window: one forward; the cache over its h, mixed as lm-eval mixes."""
    (folder / "short.txt").write_text("\n".join(LINES[:3]) + "\n")
    args = ["lm-eval", f"model={folder / 'model'}", f"text={folder / 'short.txt'}", f"out={folder / 'out'}",
            "progress=false", "cache.lambda=0.25", "cache.theta=0.3", "cache.size=100"]
    assert cli(args) == 0
    r = json.loads((folder / "out" / "eval-short.json").read_text())
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder / "model").eval()
    ids, _ = encode_text(tok, folder / "short.txt")
    n = ids.numel() - 1
    assert n < 64
    with torch.no_grad():
        H = hf.base_model(input_ids=ids[:-1].unsqueeze(0)).last_hidden_state[0]
        lp = hf.lm_head(H).log_softmax(-1).gather(1, ids[1:, None])[:, 0]
    cache = NeuralCache(size=100, theta=0.3).log_prob(H, ids[1:])
    p = torch.where(torch.arange(n) > 0, torch.logaddexp(lp + math.log(0.75), cache + math.log(0.25)), lp)
    assert r["variants"]["+cache"]["ppl"] == pytest.approx(math.exp(-p.mean().item()), rel=1e-5)
    assert r["variants"]["model"]["ppl"] == pytest.approx(math.exp(-lp.mean().item()), rel=1e-5)


def test_one_line_errors(folder, capsys):
    base = ["lm-eval", f"model={folder / 'model'}", f"text={folder / 'test.txt'}", "progress=false"]
    cases = [
        (base, "out="),
        ([*base, f"out={folder / 'model' / 'eval'}"], "inside the model folder"),
        ([*base, f"out={folder / 'o'}", "knnlm.lambda=0.2"], "train="),
        ([*base, f"out={folder / 'o'}", "window=65"], "context"),
        (["lm-eval", f"model={folder / 'nope'}", f"text={folder / 'test.txt'}", f"out={folder / 'o'}"],
         "no such folder"),
        (["lm-eval", f"model={folder / 'model'}", f"text={folder / 'missing.txt'}", f"out={folder / 'o'}"],
         "no such text file"),
        (["lm-eval", "runs/x", f"text={folder / 'test.txt'}"], "goes with model="),
        ([*base, f"out={folder / 'o'}", "runs/x"], "not both"),
    ]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (argv, err)


def test_config_checks():
    with pytest.raises(UserError, match="text="):
        LMEvalConfig(model="m", out="o")
    with pytest.raises(UserError, match="batch_size"):
        LMEvalConfig(model="m", text="t", out="o", batch_size=2)


def test_bf16_weights_agree_with_float32(folder):
    """dtype=bfloat16: the same evaluation to bf16 rounding, memories and dynamic evaluation included."""
    extra = (f"train={folder / 'train.txt'}", "window=32", "stride=8", "cache.lambda=0.1", "mbpa.lambda=0.05",
             "knnlm.lambda=0.2", "knnlm.k=8", "dyneval.lr=1e-4")
    full = _run(folder, *extra, "dtype=float32")
    half = _run(folder, *extra, "dtype=bfloat16")
    assert full["dtype"] == "float32" and half["dtype"] == "bfloat16"
    for name in ("model", "+cache", "+mbpa", "+knnlm", "+dyneval"):
        assert half["variants"][name]["ppl"] == pytest.approx(full["variants"][name]["ppl"], rel=0.02), name
