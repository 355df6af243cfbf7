"""torchvision's MobileNetV2, ShuffleNetV2-x1.0 and EfficientNet-B0, adapted to small images.

The stem conv takes the dataset's channel count and, for inputs up to 64px, stride 1 (and
ShuffleNet's stem max-pool is dropped), so 28/32/64px images keep a spatial map to the last
stage. The dropout+linear heads become one `nn.Linear` on the pooled features. No weights are
downloaded (these are G-VBSM backbones trained from scratch).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from condenser.models.base import Classifier, check_in_shape, check_num_classes
from condenser.models.resnet import SMALL_IMAGE


def _replace_conv(old: nn.Conv2d, in_channels: int, small: bool) -> nn.Conv2d:
    stride = 1 if small else old.stride
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=stride, padding=old.padding,
                    bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


class PooledClassifier(Classifier):
    """`body` -> global average pool -> linear; `features` is the body's last map."""

    def __init__(self, body: nn.Module, feat_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.classifier = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


def mobilenet_v2(in_shape: tuple[int, int, int], num_classes: int, width_mult: float = 1.0) -> Classifier:
    c, h, w = check_in_shape(in_shape, 8, "mobilenet_v2")
    net = tvm.mobilenet_v2(weights=None, width_mult=width_mult)
    net.features[0][0] = _replace_conv(net.features[0][0], c, max(h, w) <= SMALL_IMAGE)
    return PooledClassifier(net.features, net.last_channel, check_num_classes(num_classes, "mobilenet_v2"))


def shufflenet_v2_x1_0(in_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    c, h, w = check_in_shape(in_shape, 8, "shufflenet_v2_x1_0")
    net = tvm.shufflenet_v2_x1_0(weights=None)
    small = max(h, w) <= SMALL_IMAGE
    net.conv1[0] = _replace_conv(net.conv1[0], c, small)
    body = nn.Sequential(net.conv1, nn.Identity() if small else net.maxpool,
                         net.stage2, net.stage3, net.stage4, net.conv5)
    return PooledClassifier(body, net.fc.in_features, check_num_classes(num_classes, "shufflenet_v2_x1_0"))


def efficientnet_b0(in_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    c, h, w = check_in_shape(in_shape, 8, "efficientnet_b0")
    net = tvm.efficientnet_b0(weights=None)
    net.features[0][0] = _replace_conv(net.features[0][0], c, max(h, w) <= SMALL_IMAGE)
    feat_dim = net.classifier[-1].in_features
    return PooledClassifier(net.features, feat_dim, check_num_classes(num_classes, "efficientnet_b0"))
