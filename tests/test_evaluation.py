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
