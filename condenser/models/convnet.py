"""ConvNet-D3, the DC/DSA/IDC/MDC evaluation network, with configurable depth, width, norm, act, pool."""

from __future__ import annotations

import torch
from torch import nn

from condenser.models.base import (
    Classifier,
    ModelConfigError,
    check_in_shape,
    check_num_classes,
    make_norm,
)

_ACTS = {"relu": lambda: nn.ReLU(inplace=True), "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
         "sigmoid": nn.Sigmoid}
_POOLS = {"avg": lambda: nn.AvgPool2d(2, 2), "max": lambda: nn.MaxPool2d(2, 2), "none": nn.Identity}


class ConvNet(Classifier):
    """`depth` blocks of conv3x3 -> norm -> act -> 2x2 pool, then one linear layer.

    28x28 inputs give a 3x3 map at depth 3 (floor pooling); `first_padding=3` reproduces DC's
    MNIST variant that pads 28 to 32 in the first conv (4x4 map).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 128, depth: int = 3,
                 norm: str = "instance", act: str = "relu", pool: str = "avg", first_padding: int = 1):
        super().__init__()
        if act not in _ACTS:
            raise ModelConfigError(f"convnet: unknown act {act!r}; known: {', '.join(_ACTS)}")
        if pool not in _POOLS:
            raise ModelConfigError(f"convnet: unknown pool {pool!r}; known: {', '.join(_POOLS)}")
        if depth < 1 or width < 1:
            raise ModelConfigError(f"convnet: depth and width must be >= 1, got depth={depth} width={width}")
        shrink = 2**depth if pool != "none" else 1
        c, h, w = check_in_shape(in_shape, 1, "convnet")
        h, w = h + 2 * (first_padding - 1), w + 2 * (first_padding - 1)
        if min(h, w) < shrink:
            raise ModelConfigError(
                f"convnet: input {in_shape[1]}x{in_shape[2]} is too small for depth {depth}")
        layers: list[nn.Module] = []
        for d in range(depth):
            layers += [nn.Conv2d(c if d == 0 else width, width, 3, padding=first_padding if d == 0 else 1),
                       make_norm(norm, width, "convnet"), _ACTS[act](), _POOLS[pool]()]
            if pool != "none":
                h, w = h // 2, w // 2
        self.body = nn.Sequential(*layers)
        self.feature_shape = (width, h, w)
        self.classifier = nn.Linear(width * h * w, check_num_classes(num_classes, "convnet"))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
