"""Residual networks: IDC's ResNet-AP (runtime/models.py's definition) and ResNet-18 with a small-image stem."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from condenser.models.base import Classifier, check_in_shape, check_num_classes, make_norm
from runtime.models import ResNetAP

SMALL_IMAGE = 64  # inputs up to this size keep full resolution in the stem


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


__all__ = ["SMALL_IMAGE", "ResNet18", "ResNetAP"]
