"""fastbind.hf: the Hebbian output layer on tiny GPT-2 and Llama models, its capture, the Trainer
callback, saving and reloading, and bf16."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import last_hidden, make_tokenizer, tiny_model, transformers
from fastbind.errors import UserError
from fastbind.hf import (
    HebbianMemorizer, hebbian_head, load_counts, save_pretrained, to_linear, token_counts,
)
from fastbind.layers.hebbian_softmax import HebbianSoftmax

V = len(make_tokenizer())


def reference_memorize(W: torch.Tensor, counts: torch.Tensor, h: torch.Tensor, y: torch.Tensor, gamma: float,
                       T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's update written out class by class (float64): what memorize must give."""
    W, counts = W.double().clone(), counts.clone()
    for c in sorted(set(y.tolist())):
        sel = y == c
        n, before = int(sel.sum()), int(counts[c])
        if before < T:
            lam = max(n / (before + n), gamma)
            W[c] = lam * h[sel].double().mean(0) + (1 - lam) * W[c]
        counts[c] += n
    return W, counts


def shifted(labels: torch.Tensor) -> torch.Tensor:
    """Targets as transformers' causal-LM loss takes them: labels[t + 1], -100 at the end."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)


def test_unchanged_until_memorize(family):
    """The Hebbian head gives the model's own logits and loss (tied and untied models)."""
    for tied in (True, False):
        model = tiny_model(family, V, tied=tied)
        ref = copy.deepcopy(model)
        head = hebbian_head(model)
        assert isinstance(model.get_output_embeddings(), HebbianSoftmax) and head.bias is None
        x = torch.randint(0, V, (3, 12))
        a, b = model(input_ids=x, labels=x), ref(input_ids=x, labels=x)
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.loss, b.loss)


def test_captured_h_is_the_last_hidden_state(family):
    """h is the base model's last hidden state after its final norm; the head on it gives the logits."""
    model = tiny_model(family, V)
    head = hebbian_head(model, counts="zero")
    memorizer = HebbianMemorizer(model)
    x = torch.randint(0, V, (2, 10))
    labels = x.clone()
    labels[0, 4] = -100
    model.train()
    logits = model(input_ids=x, labels=labels).logits
    model.eval()
    with torch.no_grad():
        hidden = last_hidden(model, x)
    torch.testing.assert_close(head(hidden), logits)
    y = shifted(labels)
    keep = y != -100
    assert torch.equal(memorizer._y[0], y[keep])
    torch.testing.assert_close(memorizer._h[0], hidden[keep])
    assert memorizer._y[0].numel() == 2 * 9 - 1  # the last position and the ignored label drop out


def test_eval_forwards_are_not_recorded():
    model = tiny_model("gpt2", V)
    hebbian_head(model, counts="zero")
    memorizer = HebbianMemorizer(model)
    x = torch.randint(0, V, (2, 8))
    model.eval()
    model(input_ids=x, labels=x)
    assert memorizer.forwards == 0 and memorizer.memorize() == 0


def test_plain_loop_matches_reference_under_accumulation(family):
    """Two micro-batches, one step, one memorize: the layer's reference on both batches' h."""
    model = tiny_model(family, V)
    gamma, T = 0.2, 3
    counts = torch.zeros(V, dtype=torch.int64)
    counts[:5] = 2  # a few tokens seen before
    counts[5:8] = T  # and some that no longer memorize
    head = hebbian_head(model, gamma=gamma, T=T, counts=counts, objective="l2")  # the paper's rule
    memorizer = HebbianMemorizer(model, center=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, V, (2, 9), generator=g) for _ in range(2)]
    before = copy.deepcopy(model)
    model.train()
    for x in batches:
        model(input_ids=x, labels=x).loss.backward()
    opt.step()
    stepped = head.weight.detach().clone()
    memorizer.memorize()
    with torch.no_grad():  # h of the forwards, i.e. with the weights before the step
        hs = torch.cat([last_hidden(before, x)[:, :-1].reshape(-1, 32) for x in batches])
    ys = torch.cat([x[:, 1:].reshape(-1) for x in batches])
    W, c = reference_memorize(stepped, counts, hs, ys, gamma, T)
    torch.testing.assert_close(head.weight.detach().double(), W, atol=1e-6, rtol=1e-6)
    assert torch.equal(head.counts, c)
    assert memorizer.steps == 1


def test_pretrained_counts_leave_trained_rows_alone():
    """One callback step with counts="pretrained": every row with count >= T is unchanged; only
    the new tokens' rows memorize (learning rate 0, so memorize is the only change)."""
    model = tiny_model("gpt2", V)
    new = torch.tensor([V - 2, V - 1])
    head = hebbian_head(model, T=50, new_tokens=new)
    start = head.weight.detach().clone()
    x = torch.randint(0, V - 2, (8, 12))
    x[:, 3] = V - 1  # the new token occurs as a target
    trainer, callback = _trainer(model, [{"input_ids": r, "labels": r} for r in x], lr=0.0, steps=1, batch=8)
    trainer.train()
    old = head.counts >= head.T
    assert int(old.sum()) == V - 2
    assert torch.equal(head.weight.detach()[old], start[old])
    assert not torch.equal(head.weight.detach()[V - 1], start[V - 1])
    assert int(head.counts[V - 1]) == 8 and callback.memorizer.steps == 1


def _trainer(model, rows, *, lr=1e-3, steps=3, batch=2, accumulation=1, eval_rows=None, tmp=None):
    import tempfile

    from fastbind.hf import HebbianCallback

    callback = HebbianCallback(model)
    args = transformers.TrainingArguments(
        output_dir=tmp or tempfile.mkdtemp(), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=lr, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, eval_strategy="steps" if eval_rows else "no", eval_steps=1, per_device_eval_batch_size=2,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=eval_rows,
                                   callbacks=[callback])
    return trainer, callback


def test_callback_once_per_optimizer_step(tmp_path):
    """Trainer with gradient accumulation 2 and evaluation after every step: one memorize per
    optimizer step, on exactly the training micro-batches' targets, as the layer's reference."""
    model = tiny_model("gpt2", V)
    gamma, T = 0.1, 4
    head = hebbian_head(model, gamma=gamma, T=T, counts="zero", objective="l2")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (12, 10), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100  # a prompt the loss skips
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)]
    trainer, callback = _trainer(model, rows, steps=3, batch=2, accumulation=2, eval_rows=rows[:4], tmp=str(tmp_path))
    seen: list[torch.Tensor] = []  # labels of every training forward, recorded independently
    model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["labels"].clone()) if m.training else None, with_kwargs=True)
    calls = []
    original = head.memorize

    def spy(h, y, **kw):
        W0, c0 = head.weight.detach().clone(), head.counts.clone()
        original(h, y, **kw)
        calls.append((W0, c0, h.clone(), y.clone(), head.weight.detach().clone()))

    head.memorize = spy
    trainer.train()
    assert trainer.state.global_step == 3 and len(calls) == 3 and len(seen) == 6
    for k, (W0, c0, h, y, W1) in enumerate(calls):
        expected = torch.cat([shifted(lab)[shifted(lab) != -100] for lab in seen[2 * k : 2 * k + 2]])
        assert torch.equal(y, expected)  # both micro-batches, shifted, -100 dropped; no eval forward
        W, _ = reference_memorize(W0, c0, h, y, gamma, T)
        torch.testing.assert_close(W1.double(), W, atol=1e-6, rtol=1e-6)


def test_tied_weights(recwarn):
    """Untie (default) survives tie_weights(); untie=False warns and memorize writes the embeddings."""
    model = tiny_model("llama", V)
    emb = model.get_input_embeddings().weight
    head = hebbian_head(model)
    assert head.weight is not emb and not model.config.tie_word_embeddings
    model.tie_weights()
    assert model.get_output_embeddings().weight is not emb

    tied = tiny_model("gpt2", V)
    with pytest.warns(UserWarning, match="input embeddings"):
        head = hebbian_head(tied, counts="zero", untie=False)
    assert head.weight is tied.get_input_embeddings().weight
    memorizer = HebbianMemorizer(tied)
    x = torch.randint(0, V, (2, 6))
    before = tied.get_input_embeddings().weight.detach().clone()
    tied.train()
    tied(input_ids=x, labels=x)
    memorizer.memorize()
    assert not torch.equal(tied.get_input_embeddings().weight.detach(), before)


def test_save_and_reload_round_trip(tmp_path, family):
    """save_pretrained, then from_pretrained: the same logits, an untied plain head, the counts."""
    model = tiny_model(family, V)
    head = hebbian_head(model, counts="zero")
    memorizer = HebbianMemorizer(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        x = torch.randint(0, V, (2, 8))
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        memorizer.memorize()
    save_pretrained(model, tmp_path / "m")
    assert isinstance(model.get_output_embeddings(), HebbianSoftmax)  # kept after saving
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True)
    assert isinstance(loaded.get_output_embeddings(), torch.nn.Linear)
    assert loaded.get_output_embeddings().weight is not loaded.get_input_embeddings().weight
    model.eval()
    loaded.eval()
    x = torch.randint(0, V, (2, 8))
    torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)
    assert torch.equal(load_counts(tmp_path / "m"), head.counts)
    # to_linear gives the model's own layer with the same Parameters, in place
    taken = to_linear(model)
    assert taken is head and model.get_output_embeddings().weight is head.weight


def test_bf16(family):
    """bf16 weights: memorize computes in float32 and writes bf16 rows (the reference, rounded)."""
    model = tiny_model(family, V).to(torch.bfloat16)
    gamma, T = 0.25, 10
    head = hebbian_head(model, gamma=gamma, T=T, counts="zero", objective="l2")
    assert head.weight.dtype == torch.bfloat16
    memorizer = HebbianMemorizer(model, center=False)
    x = torch.randint(0, V, (2, 8))
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    h, y = torch.cat(memorizer._h), torch.cat(memorizer._y)
    W0 = head.weight.detach().clone()
    memorizer.memorize()
    W, _ = reference_memorize(W0.float(), torch.zeros(V, dtype=torch.int64), h.float(), y, gamma, T)
    assert head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(head.weight.detach(), W.to(torch.bfloat16), rtol=0, atol=0)


def test_token_counts_and_errors():
    model = tiny_model("gpt2", V)
    assert token_counts(torch.tensor([1, 1, 3]), 5).tolist() == [0, 2, 0, 1, 0]
    with pytest.raises(UserError, match="token ids"):
        token_counts([7], 5)
    with pytest.raises(UserError, match="counts="):
        hebbian_head(model, counts="ones")
    with pytest.raises(UserError, match=r"counts must be a \(27,\)"):
        hebbian_head(model, counts=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(UserError, match="new_tokens"):
        hebbian_head(model, new_tokens=[V])
    with pytest.raises(UserError, match="not a HebbianSoftmax"):
        HebbianMemorizer(model)
    hebbian_head(model, counts=token_counts(torch.arange(V), V))
    with pytest.raises(UserError, match="already"):
        hebbian_head(model)
    memorizer = HebbianMemorizer(model)
    model.train()
    model(input_ids=torch.randint(0, V, (1, 5)))
    with pytest.raises(UserError, match="labels="):
        memorizer.memorize()
    memorizer.remove()
    model(input_ids=torch.randint(0, V, (1, 5)), labels=torch.randint(0, V, (1, 5)))
    assert memorizer.forwards == 0  # the hooks are off


def test_import_fastbind_does_not_import_transformers():
    code = "import sys, fastbind, fastbind.hf; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_centred_ip_rows_scale():
    """The defaults, center=True with objective="ip" and max_norm="rows": a first-sighting row becomes the
    direction of (its mean h − the step's mean h) at the median norm of the trained rows."""
    model = tiny_model("gpt2", V)
    new = torch.tensor([V - 1])
    rows = model.get_output_embeddings().weight.detach()[:-1].norm(dim=1).median()
    head = hebbian_head(model, counts="pretrained", new_tokens=new)  # the defaults: ip, max_norm="rows"
    assert head.objective == "ip" and head.max_norm == pytest.approx(float(rows))
    memorizer = HebbianMemorizer(model)  # center=True by default
    x = torch.randint(0, V - 1, (3, 10))
    x[:, 4] = V - 1
    model.train()
    model(input_ids=x, labels=x)
    h, y = torch.cat(memorizer._h), torch.cat(memorizer._y)
    memorizer.memorize()
    d = h[y == V - 1].mean(0) - h.mean(0)
    torch.testing.assert_close(head.weight.detach()[V - 1], d / d.norm() * rows, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="max_norm bounds"):
        hebbian_head(tiny_model("gpt2", V), objective="l2", max_norm=1.0)
    with pytest.raises(UserError, match="max_norm must be"):
        hebbian_head(tiny_model("gpt2", V), objective="ip", max_norm="big")


def test_bad_settings_leave_the_model_untouched():
    model = tiny_model("gpt2", V)
    for kwargs in ({"gamma": 2.0}, {"counts": "ones"}, {"objective": "ip", "max_norm": -1.0}):
        with pytest.raises(UserError):
            hebbian_head(model, **kwargs)
        assert isinstance(model.get_output_embeddings(), torch.nn.Linear) and model.config.tie_word_embeddings
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
