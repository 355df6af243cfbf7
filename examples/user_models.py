"""Small networks of your own, as a device trainer exports them (docs/trainer.md, "Your own model").

Each function is a factory: `condenser export-trainer --model examples.user_models:bn_cnn` calls it with
the --model-kwarg values, plus in_shape and num_classes because its signature names them. Run from the
repository root (or install your package) so that "examples.user_models" imports.
"""

from __future__ import annotations

import torch
from torch import nn


def bn_cnn(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: int = 32,
           depth: int = 3) -> nn.Module:
    """ConvNet-D3 with BatchNorm: `depth` blocks of conv3x3 -> BatchNorm -> ReLU -> 2x2 average pool."""
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for d in range(depth):
        layers += [nn.Conv2d(c if d == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                   nn.AvgPool2d(2)]
        h, w = h // 2, w // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * h * w, num_classes))


class _Residual(nn.Module):
    """x + f(x): the residual add a user writes in forward."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_mlp(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: int = 64,
                 blocks: int = 2, dropout: float = 0.1) -> nn.Module:
    """Flatten -> Linear, then residual blocks of LayerNorm -> Linear -> GELU -> Dropout -> Linear, SiLU head."""
    c, h, w = in_shape
    body = [_Residual(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(width, width))) for _ in range(blocks)]
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), *body, nn.SiLU(), nn.Linear(width, num_classes))


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet's depthwise 3x3 (a Conv2d with groups = channels) then pointwise 1x1, each BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
                         nn.BatchNorm2d(cin), nn.ReLU(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def mobilenet_like(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: int = 16,
                   dropout: float = 0.2) -> nn.Module:
    """A small MobileNet (v1) for 28x28 inputs: stem conv, four separable blocks (two of stride 2), max pool,
    global average pool, dropout, linear head."""
    c = in_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        _separable(width, 2 * width, 1), _separable(2 * width, 2 * width, 2),
        _separable(2 * width, 4 * width, 1), nn.MaxPool2d(2), _separable(4 * width, 4 * width, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, num_classes))


def group_norm_cnn(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: int = 8) -> nn.Module:
    """GroupNorm and InstanceNorm blocks with max pooling and a 2x2 adaptive average pool."""
    c = in_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))


def bn_mlp(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: int = 32) -> nn.Module:
    """Flatten -> Linear -> BatchNorm1d -> ReLU -> Linear."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, num_classes))
