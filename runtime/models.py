"""The networks a trainer bundle names (ConvNet-D3, ResNet-AP), defined once for device and server.

The torch backend builds its network from the bundle's spec (arch, arch_kwargs, in_shape,
num_classes; runtime/bundle.py TrainerMeta) with `build_model`; the condenser trains, matches
features on and exports these same classes (condenser/models/ re-exports them), so one torch seed
gives the same initial parameters on both sides.

Importing this module imports torch. `import runtime` never does: only the torch backend and the
condenser import this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import TrainerError


class ModelSpecError(TrainerError, ValueError):
    """A model spec names an architecture the runtime cannot build, or options it cannot honour."""


ModelFactory = Callable[..., "Classifier"]
ARCHS: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class decorator: file the architecture under `name` beside its definition."""
    def add(factory: ModelFactory) -> ModelFactory:
        ARCHS[name] = factory
        return factory
    return add


def build_model(arch: str, in_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> Classifier:
    """Instantiate `arch`; an unknown arch or option is a ModelSpecError naming it."""
    factory = ARCHS.get(arch)
    if factory is None:
        raise ModelSpecError(f"model {arch!r} has no runtime definition; the runtime builds: "
                             f"{', '.join(sorted(ARCHS))} (use backend='onnx' for other models)")
    try:  # reject unknown options by name, without hiding TypeErrors raised inside the model
        inspect.signature(factory).bind(tuple(in_shape), num_classes, **kwargs)
    except TypeError as exc:
        raise ModelSpecError(f"model {arch!r}: {exc}") from None
    return factory(tuple(in_shape), num_classes, **kwargs)


# --------------------------------------------------------------------------------- shared parts


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
        raise ModelSpecError(f"{arch}: in_shape must be (C, H, W) with positive sizes, got {in_shape!r}")
    c, h, w = (int(s) for s in in_shape)
    if min(h, w) < min_size:
        raise ModelSpecError(f"{arch}: input {h}x{w} is smaller than the minimum {min_size}x{min_size}")
    return c, h, w


def check_num_classes(num_classes: int, arch: str) -> int:
    if int(num_classes) < 1:
        raise ModelSpecError(f"{arch}: num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def make_norm(kind: str, channels: int, arch: str) -> nn.Module:
    """'instance' is GroupNorm(C, C): per-sample statistics, exportable to ONNX, as in DC/DSA/IDC."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ModelSpecError(f"{arch}: unknown norm {kind!r}; known: instance, batch, none")


# ------------------------------------------------------------------------------------- ConvNet-D3

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True), "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "sigmoid": nn.Sigmoid}
_POOLS: dict[str, Callable[[], nn.Module]] = {
    "avg": lambda: nn.AvgPool2d(2, 2), "max": lambda: nn.MaxPool2d(2, 2), "none": nn.Identity}


@register("convnet")
class ConvNet(Classifier):
    """`depth` blocks of conv3x3 -> norm -> act -> 2x2 pool, then one linear layer.

    The DC/DSA/IDC/MDC evaluation network at the defaults (ConvNet-D3, width 128, instance norm).
    28x28 inputs give a 3x3 map at depth 3 (floor pooling); `first_padding=3` reproduces DC's
    MNIST variant that pads 28 to 32 in the first conv (4x4 map).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 128, depth: int = 3,
                 norm: str = "instance", act: str = "relu", pool: str = "avg", first_padding: int = 1):
        super().__init__()
        if act not in _ACTS:
            raise ModelSpecError(f"convnet: unknown act {act!r}; known: {', '.join(_ACTS)}")
        if pool not in _POOLS:
            raise ModelSpecError(f"convnet: unknown pool {pool!r}; known: {', '.join(_POOLS)}")
        if depth < 1 or width < 1:
            raise ModelSpecError(f"convnet: depth and width must be >= 1, got depth={depth} width={width}")
        shrink = 2**depth if pool != "none" else 1
        c, h, w = check_in_shape(in_shape, 1, "convnet")
        h, w = h + 2 * (first_padding - 1), w + 2 * (first_padding - 1)
        if min(h, w) < shrink:
            raise ModelSpecError(f"convnet: input {in_shape[1]}x{in_shape[2]} is too small for depth {depth}")
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


# -------------------------------------------------------------------------------------- ResNet-AP


class _APBlock(nn.Module):
    """Basic residual block that downsamples with a 2x2 average pool instead of a strided conv."""

    def __init__(self, cin: int, cout: int, downsample: bool, norm: str):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, cout, "resnet-ap")
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, cout, "resnet-ap")
        self.shortcut: nn.Module = nn.Identity()
        if downsample or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.AvgPool2d(2, 2) if downsample else nn.Identity(),
                make_norm(norm, cout, "resnet-ap"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        if self.downsample:
            out = F.avg_pool2d(out, 2, 2)
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register("resnet-ap10")
class ResNetAP(Classifier):
    """IDC's ResNet-AP: conv3x3 stem, four stages (width x1, x2, x4, x8), avg-pool downsampling.

    Average pooling keeps gradients dense over the image, which IDC found better for gradient
    matching than strided convolutions. `depth=10` is one block per stage, 18 is two.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 64, depth: int = 10,
                 norm: str = "instance"):
        super().__init__()
        blocks = {10: 1, 18: 2}.get(depth)
        if blocks is None:
            raise ModelSpecError(f"resnet-ap: depth must be 10 or 18, got {depth}")
        c, h, w = check_in_shape(in_shape, 8, "resnet-ap")
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False),
                                  make_norm(norm, width, "resnet-ap"), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = width
        for stage in range(4):
            cout = width * 2**stage
            for b in range(blocks):
                layers.append(_APBlock(cin, cout, downsample=stage > 0 and b == 0, norm=norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.feature_shape = (cin, h // 8, w // 8)
        self.classifier = nn.Linear(cin, check_num_classes(num_classes, "resnet-ap"))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


__all__ = ["ARCHS", "Classifier", "ConvNet", "ModelSpecError", "ResNetAP", "build_model", "check_in_shape",
           "check_num_classes", "make_norm", "register"]
