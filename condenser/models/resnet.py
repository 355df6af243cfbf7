"""Residual networks: IDC's ResNet-AP (average-pool downsampling) and ResNet-18 with a small-image stem."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from condenser.models.base import (
    Classifier,
    ModelConfigError,
    check_in_shape,
    check_num_classes,
    make_norm,
)

SMALL_IMAGE = 64  # inputs up to this size keep full resolution in the stem


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
            raise ModelConfigError(f"resnet-ap: depth must be 10 or 18, got {depth}")
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


class ResNet18(Classifier):
    """torchvision's ResNet-18; for inputs up to 64px the stem is a stride-1 3x3 conv without max-pool."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, norm: str = "batch"):
        super().__init__()
        c, h, w = check_in_shape(in_shape, 8, "resnet18")
        net = tv_resnet18(weights=None, num_classes=check_num_classes(num_classes, "resnet18"))
        if max(h, w) <= SMALL_IMAGE:
            net.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif c != 3:
            net.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if norm != "batch":  # swap every BatchNorm for the requested norm, same channel count
            for module in list(net.modules()):
                for child_name, child in list(module.named_children()):
                    if isinstance(child, nn.BatchNorm2d):
                        setattr(module, child_name, make_norm(norm, child.num_features, "resnet18"))
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                  net.layer1, net.layer2, net.layer3, net.layer4)
        self.classifier = net.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))
