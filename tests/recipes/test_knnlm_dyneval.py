"""lm-eval / lm-sweep with the kNN-LM's training-set memory and dynamic evaluation, on tiny trained runs
(an LSTM and a transformer), against direct computations."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from fastbind.cli import main as cli
from fastbind.evaluation import collect_stream, window_spans
from fastbind.evaluation.dyneval import DynEvalSettings, DynamicEvaluator, dyneval_stream, gradient_statistics
from fastbind.lm import load_lm_run
from fastbind.memory import KNNLM

from test_lm_recipes import TINY  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("knnlm")
    out = {"lstm": root / "lstm", "transformer": root / "tf"}
    assert cli(["lm-train", f"out={out['lstm']}", *TINY, "max_steps=12", "eval_every=6"]) == 0
    assert cli(["lm-train", f"out={out['transformer']}", *TINY, "max_steps=12", "eval_every=6", "arch=transformer",
                "transformer.heads=2", "transformer.context=16"]) == 0
    return out


def _brute_force_knn(h_train, y_train, h, y, k, tau):
    """p_kNN(y) of each query by the definition: the k nearest keys by squared distance, exp(-d/tau)."""
    d = ((h[:, None, :].double() - h_train[None, :, :].double()) ** 2).sum(-1)  # (n, N)
    dist, idx = d.topk(k, dim=1, largest=False)
    w = torch.softmax(-dist / tau, dim=1)
    return (w * (y_train[idx] == y[:, None])).sum(1)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_lm_eval_knnlm_matches_a_brute_force_datastore_and_mixture(runs, arch):
    run = runs[arch]
    k, tau, lam = 8, 5.0, 0.3
    args = ["lm-eval", str(run), "split=test", "progress=false", "max_tokens=300", f"knnlm.k={k}",
            f"knnlm.temperature={tau}", f"knnlm.lambda={lam}", "knnlm.dtype=float32"]
    assert cli(args) == 0
    r = json.loads((run / "eval-test.json").read_text())
    assert set(r["variants"]) == {"model", "+knnlm"}
    assert r["variants"]["+knnlm"]["settings"]["knnlm"] == {"k": k, "temperature": tau, "lambda": lam, "stride": 1,
                                                             "backend": "exact"}
    _, model, corpus, ck = load_lm_run(run)
    extra = {} if arch == "lstm" else {"window": 10, "stride": 5}  # the run's bptt and half of it
    Ht, Yt, _ = collect_stream(model, corpus.train, bptt=100, device=CPU, **extra)
    H, Y, LP = collect_stream(model, corpus.test, bptt=100, device=CPU, max_tokens=300, **extra)
    assert Ht.shape[0] == corpus.train.numel() - 1  # every training target is in the datastore
    p = (1 - lam) * LP.double().exp() + lam * _brute_force_knn(Ht, Yt, H, Y, k, tau)
    assert r["variants"]["+knnlm"]["ppl"] == pytest.approx(math.exp(-p.log().mean().item()), rel=1e-4)
    # the datastore holds exactly those pairs, and a second evaluation reuses it
    store_dir = run / f"knnlm-step{ck['step']}-float32"
    store = KNNLM.load(store_dir)
    torch.testing.assert_close(torch.tensor(store.keys[:]), Ht)
    assert torch.equal(torch.tensor(store.values[:]).long(), Yt)
    before = (store_dir / "keys.npy").stat().st_mtime_ns
    assert cli(args) == 0
    assert (store_dir / "keys.npy").stat().st_mtime_ns == before


def test_a_datastore_is_rebuilt_for_other_weights_at_the_same_step(runs, tmp_path):
    """The datastore is keyed by the checkpoint's weights, not only its step: a model changed
    under the same step (e.g. retrained in the same folder) gets a new datastore."""
    import shutil

    from fastbind.evaluation import KNNLMSettings
    from fastbind.lm import knnlm_store, weights_digest
    from fastbind.runs import RunFolder

    run = RunFolder(shutil.copytree(runs["lstm"], tmp_path / "run"))
    lm = load_lm_run(run.path)
    s = KNNLMSettings(lam=0.1, k=4, dtype="float32")
    first = knnlm_store(run, lm, s, 0, 0, CPU)
    assert first.source["weights"] == weights_digest(lm.model)
    keys = torch.tensor(first.keys[:])
    with torch.no_grad():
        lm.model.head.weight.mul_(1.0)  # unchanged weights: the same store
    assert torch.equal(torch.tensor(knnlm_store(run, lm, s, 0, 0, CPU).keys[:]), keys)
    with torch.no_grad():
        next(lm.model.parameters()).add_(0.5)  # the embedding: other keys
    again = knnlm_store(run, lm, s, 0, 0, CPU)
    assert again.source["weights"] == weights_digest(lm.model) != first.source["weights"]
    assert not torch.equal(torch.tensor(again.keys[:]), keys)
    assert weights_digest(lm.model.to(torch.bfloat16)) != again.source["weights"]  # any dtype hashes


def test_knnlm_stride_scores_a_sample_and_reports_the_model_on_it(runs):
    run = runs["lstm"]
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=300", "knnlm.k=4",
                "knnlm.lambda=0.2", "knnlm.stride=3", "cache.lambda=0.1", "cache.size=50"]) == 0
    r = json.loads((run / "eval-test.json").read_text())["variants"]
    assert r["+knnlm"]["tokens"] == r["model@sample"]["tokens"] == r["+cache@sample"]["tokens"] == 100
    assert r["model"]["tokens"] == r["+cache"]["tokens"] == 300 and r["+cache+knnlm"]["tokens"] == 100


def test_transformer_dyneval_is_score_then_adapt_over_the_windows(runs):
    """+dyneval over a transformer against a slow loop: one window at a time on a copy of the model,
    scoring the window's new targets, then one update on their mean NLL."""
    _, model, corpus, _ = load_lm_run(runs["transformer"])
    s = DynEvalSettings(lr=1e-4, decay=0.01, segment=4, stats_tokens=400, stats_batch=4)
    from fastbind.data.stream import ChunkStream
    stats = gradient_statistics(model, ChunkStream(corpus.train[:401], 4, 10))
    tokens = corpus.test[:61]
    _, Y, LP = dyneval_stream(model, tokens, s, stats, device=CPU, window=10, stride=4)
    ref_model = copy.deepcopy(model).eval()
    ev = DynamicEvaluator(ref_model, stats, s)
    ref = torch.empty(60)
    for a, c, b in window_spans(60, 10, 4):
        out = ref_model(tokens[a:b].view(1, -1), None, targets=tokens[a + 1 : b + 1].view(1, -1))
        ref[c:b] = -out.nll[0, c - a :].detach()
        ev.step(out.nll[0, c - a :].mean())
    torch.testing.assert_close(LP, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(Y, tokens[1:])
    # the first window is scored before any update; later ones by the adapted model
    _, _, static = collect_stream(model, tokens, bptt=5, device=CPU, window=10, stride=4)
    torch.testing.assert_close(LP[:10], static[:10], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(LP[10:], static[10:])
    # lr = 0 is the static windowed evaluation in the same windows, bit for bit
    _, _, off = dyneval_stream(model, tokens, DynEvalSettings(lr=0.0), stats, device=CPU, window=10, stride=4)
    assert torch.equal(off, static)
    # a segment other than the reading's stride would score targets with other context than the model
    with pytest.raises(ValueError, match="must be its stride"):
        dyneval_stream(model, tokens, s, stats, device=CPU, window=10)
    # the trained weights are untouched
    fresh = load_lm_run(runs["transformer"])[1]
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_lm_eval_dyneval_variants_compose_with_the_memories_in_one_pass(runs, arch):
    run = runs[arch]
    segment = "dyneval.segment=4" if arch == "lstm" else "stride=4"  # a transformer steps once per window
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=200", "dyneval.lr=1e-3",
                segment, "dyneval.stats_tokens=400", "dyneval.stats_batch=4", "cache.lambda=0.2",
                "cache.size=50"]) == 0
    r = json.loads((run / "eval-test.json").read_text())
    assert list(r["variants"]) == ["model", "+cache", "+dyneval", "+dyneval+cache"]
    v = r["variants"]
    assert v["+dyneval+cache"]["settings"]["dyneval"]["lr"] == 1e-3 and v["+dyneval+cache"]["settings"]["cache"]
    assert v["+dyneval+cache"]["settings"]["dyneval"]["segment"] == 4
    assert v["+dyneval"]["ppl"] != v["model"]["ppl"]


def test_transformer_dyneval_reads_the_windows_of_the_static_model(runs, capsys):
    """+dyneval and model score each target with the same context: with a step too small to change
    a weight, the adapted stream is the static one (the default stride, half the window)."""
    run = runs["transformer"]
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=200", "dyneval.lr=1e-30",
                "dyneval.stats_tokens=400", "dyneval.stats_batch=4"]) == 0
    r = json.loads((run / "eval-test.json").read_text())
    assert r["stride"] == 5 and r["variants"]["+dyneval"]["settings"]["dyneval"]["segment"] == 5
    assert r["variants"]["+dyneval"]["ppl"] == pytest.approx(r["variants"]["model"]["ppl"], rel=1e-6)
    assert cli(["lm-eval", str(run), "progress=false", "dyneval.lr=1e-3", "dyneval.segment=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dyneval.segment=4" in err and "set stride=4" in err and "\n" not in err


def test_sweep_tunes_each_memory_then_the_mixture_lambdas_and_applies_them(runs):
    run = runs["lstm"]
    args = ["lm-sweep", str(run), "progress=false", "max_tokens=300", "test_max_tokens=300", "mbpa=false",
            "sizes=[50]", "thetas=[0.3]", "cache_lambdas=[0.1,0.2]", "knnlm=true", "knnlm_ks=[2,8]",
            "knnlm_temperatures=[1,10]", "knnlm_lambdas=[0.1,0.3]", "dyneval=true", "dyneval_lrs=[1e-4,1e-3]",
            "dyneval_decays=[0,0.01]", "dyneval_segment=4", "dyneval_stats_tokens=400", "dyneval_stats_batch=4",
            "dyneval_max_tokens=150", "mix_lambdas=[0.1,0.2]"]
    assert cli(args) == 0
    s = json.loads((run / "sweep-valid.json").read_text())
    # the kNN grid was scored on neighbours searched once at the largest k: the same as searching at each k
    _, model, corpus, ck = load_lm_run(run)
    from fastbind.evaluation import KNNLMSettings, knnlm_log_probs, mix_variant
    H, Y, LP = collect_stream(model, corpus.valid, bptt=100, device=CPU, max_tokens=300)
    store = KNNLM.load(run / f"knnlm-step{ck['step']}-float16")
    for row in s["grid"]["knnlm"]:
        kn = row["knnlm"]
        lp = knnlm_log_probs(H, Y, store, KNNLMSettings(k=kn["k"], temperature=kn["temperature"]))
        assert row["ppl"] == pytest.approx(math.exp(-mix_variant(LP, knnlm=(kn["lambda"], lp)).double().mean()),
                                           rel=1e-5)
    assert s["best_knnlm"] == min(s["grid"]["knnlm"], key=lambda r: r["ppl"])
    assert s["best_dyneval"] == min(s["grid"]["dyneval"], key=lambda r: r["ppl"]) and len(s["grid"]["dyneval"]) == 4
    assert set(s["best_mixtures"]) == {"+cache+knnlm", "+dyneval+cache", "+dyneval+knnlm", "+dyneval+cache+knnlm"}
    mix = s["best_mixtures"]["+cache+knnlm"]
    assert mix["cache"]["lambda"] in (0.1, 0.2) and mix["knnlm"]["k"] == s["best_knnlm"]["knnlm"]["k"]
    test = json.loads((run / "eval-test.json").read_text())
    assert test["tuned_on"] == "valid"
    for name in ("model", "+cache", "+knnlm", "+dyneval", "+cache+knnlm", "+dyneval+cache+knnlm"):
        assert name in test["variants"], name
    assert test["variants"]["+dyneval+cache+knnlm"]["settings"]["dyneval"] == s["best_dyneval"]["dyneval"]


@pytest.mark.parametrize("args,fragment", [
    (["knnlm.k=0"], "knnlm.k"), (["knnlm.temperature=0"], "knnlm.temperature"),
    (["knnlm.lambda=1"], "knnlm.lambda"), (["dyneval.lr=-1"], "dyneval.lr"), (["dyneval.segment=-1"], "dyneval.segment"),
    (["window=-1"], "window"), (["knnlm.backend=annoy"], "knnlm.backend"),
    (["knnlm.lambda=0.6", "cache.lambda=0.5"], "cache.lambda + knnlm.lambda must be < 1"),
    (["knnlm.lambda=0.1", "mbpa.lambda=0.1", "knnlm.stride=2", "mbpa.stride=3"], "same stride"),
    (["knnlm.lambda=0.1", "split=train"], "finds every query in its own datastore"),
    (["knnlm.lambda=0.1", "knnlm.k=100000", "max_tokens=50"], "more than the datastore's"),
    (["window=4"], "window/stride apply to arch=transformer"),
])
def test_bad_settings_are_one_line_errors(runs, capsys, args, fragment):
    assert cli(["lm-eval", str(runs["lstm"]), "progress=false", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_transformer_window_longer_than_its_context_is_refused(runs, capsys):
    assert cli(["lm-eval", str(runs["transformer"]), "progress=false", "window=17"]) == 2
    assert "longer than the model's context (16 tokens)" in capsys.readouterr().err


@pytest.mark.parametrize("args,fragment", [
    (["knnlm=true", "knnlm_ks=[]"], "knnlm_ks"), (["dyneval=true", "dyneval_lrs=[0]"], "dyneval_lrs"),
    (["mix_lambdas=[1.0]"], "mix_lambdas"), (["knnlm=true", "knnlm_lambdas=[0,0.1]"], "knnlm_lambdas"),
    (["knnlm=true", "mbpa_stride=2", "knnlm_stride=3"], "would score different samples"),
    (["knnlm=true", "test_mbpa_stride=2", "test_knnlm_stride=3"], "would score different samples"),
    (["knnlm=true", "split=train"], "finds every query in its own datastore"),
    (["split=test"], "would tune on the split it then reports"),
    (["knnlm=true", "knnlm_ks=[100000]"], "more than the datastore's"),
])
def test_sweep_bad_grids(runs, capsys, args, fragment):
    assert cli(["lm-sweep", str(runs["lstm"]), "progress=false", "max_tokens=100", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_sweep_refuses_a_transformer_segment_other_than_its_stride(runs, capsys):
    assert cli(["lm-sweep", str(runs["transformer"]), "progress=false", "max_tokens=100", "mbpa=false",
                "dyneval=true", "dyneval_segment=4"]) == 2
    assert "dyneval_segment=4" in capsys.readouterr().err


def test_faiss_backend_reports_its_recall_against_exact_search(runs):
    pytest.importorskip("faiss")
    run = runs["lstm"]
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=300", "knnlm.k=8",
                "knnlm.lambda=0.2", "knnlm.backend=faiss", "knnlm.nlist=4", "knnlm.nprobe=4"]) == 0
    r = json.loads((run / "eval-test.json").read_text())
    # every list probed: the exact neighbours up to ties between equal distances
    assert r["knnlm_recall_at_k"] > 0.99 and r["knnlm_recall_queries"] == 256
    exact = r["variants"]["+knnlm"]["ppl"]
    assert cli(["lm-eval", str(run), "split=test", "progress=false", "max_tokens=300", "knnlm.k=8",
                "knnlm.lambda=0.2"]) == 0
    assert json.loads((run / "eval-test.json").read_text())["variants"]["+knnlm"]["ppl"] == pytest.approx(exact, rel=1e-5)


def test_transformer_statistics_take_each_rows_last_segment_as_evaluation_steps_do(runs):
    from fastbind.data.stream import ChunkStream
    from fastbind.lm import dyneval_statistics, last_targets

    lm = load_lm_run(runs["transformer"])
    s = DynEvalSettings(lr=1e-4, segment=3, stats_tokens=200, stats_batch=4)
    ms = dyneval_statistics(lm, s, 10, CPU)
    # by hand: the squared gradient of each batch's mean NLL over its rows' last 3 targets, averaged
    params = [p for p in lm.model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    chunks = list(ChunkStream(lm.corpus.train[:201], 4, 10))
    lm.model.eval()
    for x, y in chunks:
        out = lm.model(x, None, targets=y)
        grads = torch.autograd.grad(out.nll[:, -3:].mean(), params)
        sums = [a + g**2 for a, g in zip(sums, grads)]
    for (name, _), total in zip(((n, p) for n, p in lm.model.named_parameters() if p.requires_grad), sums):
        torch.testing.assert_close(ms[name], total / len(chunks), rtol=1e-5, atol=1e-12, msg=name)
    assert last_targets(torch.arange(5).view(1, 5), 2).tolist() == [[-100, -100, -100, 3, 4]]
