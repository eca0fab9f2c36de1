"""The curriculum convnet: masked rows, pre-dropout features for memorize, identical starts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastbind.models.convnet import ConvClassifier, ConvNetConfig


def test_shapes_and_masked_rows_get_no_gradient_and_no_mass():
    torch.manual_seed(0)
    model = ConvClassifier(ConvNetConfig(max_classes=12, channels=8))
    x, y = torch.rand(6, 1, 28, 28), torch.randint(5, (6,))
    out = model(x, 5)
    assert out.logits.shape == (6, 5) and out.features.shape == (6, 8)
    F.cross_entropy(out.logits, y).backward()
    grad = model.head.weight.grad
    assert grad[:5].abs().sum() > 0 and torch.equal(grad[5:], torch.zeros_like(grad[5:]))
    assert torch.equal(model.head.bias.grad[5:], torch.zeros(7))
    before = model.head.weight.detach().clone()
    torch.optim.RMSprop(model.parameters(), lr=1e-2).step()
    assert torch.equal(model.head.weight[5:], before[5:]) and not torch.equal(model.head.weight[:5], before[:5])
    # The distribution lives on the introduced classes only.
    assert torch.allclose(out.logits.softmax(1).sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="n must lie"):
        model(x, 13)


def test_memorize_sees_pre_dropout_features():
    torch.manual_seed(0)
    model = ConvClassifier(ConvNetConfig(max_classes=10, channels=8, head="hebbian", dropout=1.0, T=10, gamma=0.0))
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 0, 3, 3])
    out = model(x, 5)
    # Dropout 1.0 zeroes the classifier's input: the logits are the bias alone...
    assert torch.equal(out.logits, model.head.bias[:5].expand(4, 5))
    model.memorize(out.features.detach(), y, 5)
    # ...but memorize receives the features before dropout: first sighting, row = mean feature.
    torch.testing.assert_close(model.head.weight[0], out.features[:2].mean(0).detach())
    torch.testing.assert_close(model.head.weight[3], out.features[2:].mean(0).detach())
    assert out.features.abs().sum() > 0


def test_softmax_and_hebbian_start_from_the_same_weights():
    heads = []
    for head in ("softmax", "hebbian"):
        torch.manual_seed(3)
        m = ConvClassifier(ConvNetConfig(max_classes=7, channels=8, head=head))
        m.reset_head(torch.Generator().manual_seed(3))
        heads.append(m.state_dict())
    for k, v in heads[0].items():
        assert torch.equal(v, heads[1][k]), k
    bound = (6.0 / (8 + 7)) ** 0.5  # Glorot uniform
    assert float(heads[0]["head.weight"].abs().max()) <= bound
