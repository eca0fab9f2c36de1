"""Classifier evaluation over a growing class set: softmax argmax, MbPA mixture, eval mode."""

from __future__ import annotations

import torch

from fastbind.evaluation import accuracy, predict
from fastbind.memory import MbPA
from fastbind.models.convnet import ConvClassifier, ConvNetConfig


def _model():
    torch.manual_seed(0)
    return ConvClassifier(ConvNetConfig(max_classes=9, channels=8, dropout=0.5))


def test_predict_is_the_argmax_over_the_introduced_classes_in_eval_mode():
    model = _model().train()
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    pred = predict(model, images, 4, chunk=7)  # chunked like any batch size
    model.eval()
    with torch.no_grad():
        ref = model(images.float().div(255).unsqueeze(1), 4).logits.argmax(1)
    assert torch.equal(pred, ref) and model.training is False
    model.train()
    predict(model, images, 4)
    assert model.training  # the mode is restored
    assert accuracy(model, images, ref, 4) == 1.0
    assert accuracy(model, images, (ref + 1) % 4, 4) == 0.0


def test_mbpa_mixture_ends():
    model = _model().eval()
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8)
    x = images.float().div(255).unsqueeze(1)
    mbpa = MbPA(size=50, k=5, lr=5.0)
    with torch.no_grad():
        f = model.features(x)
        mbpa.write(f, torch.arange(12) % 5)
        W, b = model.output_layer(5)
        adapted = mbpa.logits(f, W, b).argmax(1)
        plain = model.classify(f, 5).argmax(1)
    assert not torch.equal(adapted, plain)  # the memory changes some predictions
    assert torch.equal(predict(model, images, 5, mbpa, lam=1.0), adapted)
    assert torch.equal(predict(model, images, 5, mbpa, lam=0.0), plain)
    assert torch.equal(predict(model, images, 5, MbPA(size=5), lam=1.0), plain)  # empty memory: the model


def test_cache_variants_leave_the_empty_cache_out_at_the_first_target():
    """+cache and +cache+mbpa at the first target (nothing stored yet) are the model and the model
    with MbPA, renormalised, not (1 − λ)·p_model; afterwards they are the plain mixture."""
    from fastbind.evaluation import CacheSettings, cache_defined, cache_log_probs, variant_log_probs
    from fastbind.memory import mix_log_probs

    torch.manual_seed(0)
    H, Y = torch.randn(12, 5), torch.randint(0, 4, (12,))
    lp = torch.log_softmax(torch.randn(12, 4), -1).gather(1, Y[:, None]).squeeze(1)
    lp_cache = cache_log_probs(H, Y, CacheSettings(size=100, theta=0.3))
    lp_mbpa = torch.log_softmax(torch.randn(12, 4), -1).gather(1, Y[:, None]).squeeze(1)
    assert lp_cache[0] == float("-inf")  # the cache itself still says "nothing stored"
    out = variant_log_probs(lp, cache=(0.2, lp_cache), mbpa=(0.1, lp_mbpa))
    torch.testing.assert_close(out["+cache"][0], lp[0])
    torch.testing.assert_close(out["+cache+mbpa"][0], torch.log((0.7 * lp[0].exp() + 0.1 * lp_mbpa[0].exp()) / 0.8))
    torch.testing.assert_close(out["+cache"][1:], mix_log_probs(lp[1:], (0.2, lp_cache[1:])))
    assert cache_defined(3).tolist() == [False, True, True]
