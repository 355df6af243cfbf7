"""The interface every registered model implements, and the error for a bad model configuration."""

from __future__ import annotations

import torch
from torch import nn

from condenser.errors import CondenserError


class ModelConfigError(CondenserError, ValueError):
    """A model was asked for with options it cannot honour (unknown norm, input too small, ...)."""


class Classifier(nn.Module):
    """A network split into a feature extractor and a linear head.

    Condensation methods match statistics of `features` / `embed`, so every model exposes them
    the same way: `forward(x) == classifier(embed(x))`.
    """

    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature layer before flatten/pooling, [B, C, h, w]."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The vector fed to the classifier, [B, D]. Default: flatten(features(x))."""
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def check_in_shape(in_shape: tuple[int, ...], min_size: int, arch: str) -> tuple[int, int, int]:
    """Validate (C, H, W); `min_size` is the smallest H/W the architecture can reduce."""
    if len(in_shape) != 3 or any(int(s) < 1 for s in in_shape):
        raise ModelConfigError(f"{arch}: in_shape must be (C, H, W) with positive sizes, got {in_shape!r}")
    c, h, w = (int(s) for s in in_shape)
    if min(h, w) < min_size:
        raise ModelConfigError(f"{arch}: input {h}x{w} is smaller than the minimum {min_size}x{min_size}")
    return c, h, w


def check_num_classes(num_classes: int, arch: str) -> int:
    if int(num_classes) < 1:
        raise ModelConfigError(f"{arch}: num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def make_norm(kind: str, channels: int, arch: str) -> nn.Module:
    """'instance' is GroupNorm(C, C): per-sample statistics, exportable to ONNX, as in DC/DSA/IDC."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ModelConfigError(f"{arch}: unknown norm {kind!r}; known: instance, batch, none")
