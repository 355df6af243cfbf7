"""Model registry: every network the condenser trains, matches features on, or exports.

`build_model(name, in_shape, num_classes, **kwargs)` returns a `Classifier` exposing
`features`, `embed`, `classifier` and `forward` (see base.py). The architectures a device can build
from a trainer bundle (runtime/models.py ARCHS: convnet, resnet-ap10) are registered from there, so
both sides construct the same classes; the rest need torchvision and live here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from condenser.models.base import Classifier, ModelConfigError
from condenser.models.convnet import ConvNet
from condenser.models.resnet import ResNet18, ResNetAP
from condenser.models.torchvision_nets import efficientnet_b0, mobilenet_v2, shufflenet_v2_x1_0
from condenser.registry import Registry
from runtime.models import ARCHS, ModelSpecError

ModelFactory = Callable[..., Classifier]

REGISTRY: Registry[ModelFactory] = Registry("model")
for _name, _factory in ARCHS.items():
    REGISTRY.add(_name, _factory)
REGISTRY.add("resnet18", ResNet18)
REGISTRY.add("mobilenet_v2", mobilenet_v2)
REGISTRY.add("shufflenet_v2_x1_0", shufflenet_v2_x1_0)
REGISTRY.add("efficientnet_b0", efficientnet_b0)


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, **kwargs: Any) -> Classifier:
    """Instantiate a registered model; unknown names raise UnknownNameError, bad options ModelConfigError
    (the runtime's ModelSpecError from the shared definitions, as the condenser's own error type)."""
    factory = REGISTRY.get(name)
    try:  # reject unknown options by name, without hiding TypeErrors raised inside the model
        inspect.signature(factory).bind(tuple(in_shape), num_classes, **kwargs)
    except TypeError as exc:
        raise ModelConfigError(f"model {name!r}: {exc}") from None
    try:
        return factory(tuple(in_shape), num_classes, **kwargs)
    except ModelSpecError as exc:
        raise ModelConfigError(str(exc)) from None


def model_names() -> list[str]:
    return REGISTRY.names()


__all__ = ["REGISTRY", "Classifier", "ConvNet", "ModelConfigError", "ResNet18", "ResNetAP",
           "build_model", "model_names"]
