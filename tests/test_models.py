"""Model registry: shapes for the three input sizes, registry errors, convnet options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from condenser.errors import UnknownNameError
from condenser.models import Classifier, ModelConfigError, build_model, model_names

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
ALL = ["convnet", "resnet-ap10", "resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0"]
# expected (channels, h, w) of features(x) per input size
FEATURES = {
    "convnet": {28: (128, 3, 3), 32: (128, 4, 4), 64: (128, 8, 8)},
    "resnet-ap10": {28: (512, 3, 3), 32: (512, 4, 4), 64: (512, 8, 8)},
    "resnet18": {28: (512, 4, 4), 32: (512, 4, 4), 64: (512, 8, 8)},
    "mobilenet_v2": {28: (1280, 2, 2), 32: (1280, 2, 2), 64: (1280, 4, 4)},
    "shufflenet_v2_x1_0": {28: (1024, 4, 4), 32: (1024, 4, 4), 64: (1024, 8, 8)},
    "efficientnet_b0": {28: (1280, 2, 2), 32: (1280, 2, 2), 64: (1280, 4, 4)},
}


@pytest.fixture(autouse=True)
def _threads():
    torch.manual_seed(0)


def test_names():
    assert sorted(ALL) == model_names()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes(name, shape):
    model = build_model(name, shape, 10).eval()
    assert isinstance(model, Classifier) and isinstance(model.classifier, nn.Linear)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        feats, emb, logits = model.features(x), model.embed(x), model(x)
    assert feats.shape == (2, *FEATURES[name][shape[1]])
    assert emb.shape == (2, model.classifier.in_features)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits, model.classifier(emb))


def test_unknown_model():
    with pytest.raises(UnknownNameError, match="convnet"):
        build_model("vgg", (1, 28, 28), 10)


def test_unknown_option_and_bad_input():
    with pytest.raises(ModelConfigError, match="colour"):
        build_model("convnet", (1, 28, 28), 10, colour=1)
    with pytest.raises(ModelConfigError, match="norm"):
        build_model("convnet", (1, 28, 28), 10, norm="layer")
    with pytest.raises(ModelConfigError, match="too small"):
        build_model("convnet", (1, 4, 4), 10)
    with pytest.raises(ModelConfigError, match="in_shape"):
        build_model("resnet18", (28, 28), 10)


@pytest.mark.parametrize("norm,kind", [("instance", nn.GroupNorm), ("batch", nn.BatchNorm2d), ("none", None)])
def test_convnet_options(norm, kind):
    model = build_model("convnet", (1, 28, 28), 5, width=16, depth=2, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(c.out_channels == 16 for c in convs)
    if kind is None:
        assert norms == []
    else:
        assert len(norms) == 2 and all(type(m) is kind for m in norms)
        if kind is nn.GroupNorm:  # instance norm: one group per channel, affine
            assert all(m.num_groups == m.num_channels == 16 and m.affine for m in norms)
    x = torch.randn(3, 1, 28, 28)
    assert model.features(x).shape == (3, 16, 7, 7)
    assert model(x).shape == (3, 5)


def test_convnet_default_is_d3_width128():
    model = build_model("convnet", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128] * 3
    assert model.classifier.in_features == 128 * 4 * 4
    assert any(isinstance(m, nn.AvgPool2d) for m in model.modules())


def test_convnet_first_padding_matches_dc_mnist():
    model = build_model("convnet", (1, 28, 28), 10, first_padding=3)
    assert model.features(torch.randn(1, 1, 28, 28)).shape == (1, 128, 4, 4)


def test_convnet_act_pool_options():
    model = build_model("convnet", (3, 32, 32), 10, width=8, pool="max", act="leakyrelu")
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    model = build_model("convnet", (3, 32, 32), 10, width=8, depth=1, pool="none")
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 8, 32, 32)


def test_resnet_ap_width_is_configurable():
    model = build_model("resnet-ap10", (1, 28, 28), 10, width=8)
    assert model.features(torch.randn(1, 1, 28, 28)).shape == (1, 64, 3, 3)
    assert not any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in model.modules())
