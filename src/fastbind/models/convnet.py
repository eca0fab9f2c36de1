"""The Matching-Networks convnet with a growing set of output classes (Omniglot curriculum).

Vinyals et al. (2016)'s encoder as used by Rae et al. (2018), section 4.1: four blocks of
(64 filters 3 × 3, batch norm, ReLU, 2 × 2 max pool) map a 28 × 28 image to 64 numbers;
dropout 0.2 before the output layer, whose weights are Glorot-initialised. The output
layer has ``max_classes`` rows from the start, but only the first ``n`` (the classes
introduced so far, in order of arrival) take part: :meth:`ConvClassifier.forward` returns
logits over those rows only, so the others get no gradient and no probability mass, and
:meth:`ConvClassifier.memorize` lets the Hebbian update look for neighbours among them only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastbind.layers.hebbian_softmax import HebbianSoftmax

__all__ = ["ConvClassifier", "ConvNetConfig", "ConvOutput", "conv_encoder", "mlp_encoder"]


@dataclass
class ConvNetConfig:
    """Model settings of the curriculum classifier (``max_classes`` is set from the data when 0)."""

    max_classes: int = 0
    channels: int = 64
    blocks: int = 4
    dropout: float = 0.2  # on the features, before the output layer
    head: Literal["softmax", "hebbian"] = "softmax"
    gamma: float = 0.1  # Hebbian γ
    T: int = 20  # Hebbian T
    objective: Literal["l2", "ip", "svm", "smax"] = "l2"
    # "conv": the encoder above; "mlp": fully connected ReLU layers of the sizes in `hidden`
    # on the flattened image (the continual-learning MLP, e.g. 784-1000-1000-10).
    encoder: Literal["conv", "mlp"] = "conv"
    hidden: tuple[int, ...] = (1000, 1000)
    image_size: int = 28


class ConvOutput(NamedTuple):
    logits: torch.Tensor  # (B, n) over the first n classes
    features: torch.Tensor  # (B, d) before dropout: what memorize and MbPA see


def conv_encoder(channels: int = 64, blocks: int = 4, in_channels: int = 1) -> nn.Sequential:
    """``blocks`` × (conv 3 × 3, batch norm, ReLU, max pool 2 × 2), flattened: (B, C, 28, 28) → (B, channels)."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def mlp_encoder(in_features: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Flatten, then ``Linear → ReLU`` for each size in ``hidden``: (B, ...) → (B, hidden[-1])."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, width in enumerate(hidden):
        layers += [nn.Linear(in_features if i == 0 else hidden[i - 1], width), nn.ReLU()]
    return nn.Sequential(*layers)


class ConvClassifier(nn.Module):
    """An image encoder (the convnet, or an MLP) and a softmax or Hebbian Softmax head over a
    growing class set."""

    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        if cfg.max_classes <= 0:
            raise ValueError("ConvNetConfig.max_classes must be set (> 0)")
        self.cfg = cfg
        if cfg.encoder == "conv":
            self.encoder = conv_encoder(cfg.channels, cfg.blocks)
        elif cfg.encoder == "mlp":
            if not cfg.hidden or min(cfg.hidden) < 1:
                raise ValueError(f"hidden must be one or more positive sizes, got {cfg.hidden}")
            self.encoder = mlp_encoder(cfg.image_size ** 2, tuple(cfg.hidden))
        else:
            raise ValueError(f"encoder must be 'conv' or 'mlp', got {cfg.encoder!r}")
        with torch.no_grad():  # conv: 28 → 14 → 7 → 3 → 1 after four poolings
            d = self.encoder(torch.zeros(1, 1, cfg.image_size, cfg.image_size)).shape[1]
        self.d = d
        if cfg.head == "hebbian":
            self.head: nn.Module = HebbianSoftmax(d, cfg.max_classes, gamma=cfg.gamma, T=cfg.T,
                                                  objective=cfg.objective)
        elif cfg.head == "softmax":
            self.head = nn.Linear(d, cfg.max_classes)
        else:
            raise ValueError(f"head must be 'softmax' or 'hebbian', got {cfg.head!r}")
        self.reset_head()

    @torch.no_grad()
    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights (as in the paper) and zero bias; the same for either head kind."""
        bound = (6.0 / (self.d + self.cfg.max_classes)) ** 0.5
        self.head.weight.copy_(torch.rand(self.head.weight.shape, generator=generator) * (2 * bound) - bound)
        self.head.bias.zero_()

    @property
    def is_hebbian(self) -> bool:
        return isinstance(self.head, HebbianSoftmax)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-dropout features ``(B, d)`` of images ``x (B, 1, 28, 28)``."""
        return self.encoder(x)

    def classify(self, features: torch.Tensor, n: int) -> torch.Tensor:
        """Logits ``(B, n)`` over the first ``n`` classes (dropout applied in training mode)."""
        h = F.dropout(features, self.cfg.dropout, self.training)
        return F.linear(h, self.head.weight[:n], self.head.bias[:n])

    def forward(self, x: torch.Tensor, n: int) -> ConvOutput:
        """Logits over the first ``n`` classes and the features, for images ``x (B, 1, 28, 28)``."""
        if not 0 < n <= self.cfg.max_classes:
            raise ValueError(f"n must lie in [1, {self.cfg.max_classes}], got {n}")
        f = self.features(x)  # (B, d)
        return ConvOutput(self.classify(f, n), f)

    @torch.no_grad()
    def memorize(self, features: torch.Tensor, y: torch.Tensor, n: int) -> None:
        """Hebbian update after the optimizer step, among the first ``n`` rows (no-op for softmax)."""
        if self.is_hebbian:
            self.head.memorize(features, y, active=n)

    def output_layer(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W (n, d), b (n,))``: the rows of the introduced classes (for MbPA)."""
        return self.head.weight[:n], self.head.bias[:n]
