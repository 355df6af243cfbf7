"""Multi-formation for the decoupled methods (condenser/statmatch/formed.py): teacher-ranked real crops stitched
f x f into stored images, herding over stored images, and a factor-2 sre2l build that the runtime loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import formats
import runtime
from condenser.build import BuildConfig, build
from condenser.data import ImageDataset, load_dataset
from condenser.data.synthetic import synthetic_spec
from condenser.methods import MethodConfigError
from condenser.methods.formation import decode
from condenser.profiles import get_profile
from condenser.statmatch.formed import (
    FormationConfig,
    FormationError,
    cut,
    formed_images,
    rank_class,
    round_trip,
    stitch,
)

DATASET = "synthetic:10:1x16x16:16"
SMALL = {"teacher_kwargs": {"norm": "batch", "width": 8}, "teacher_max_train": 128}


class Brightness(nn.Module):
    """Logits (m, -m) of the mean pixel m, so class 0 is 'bright' and class 1 'dark'; its feature is m."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3))[:, None] * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.embed(x)[:, 0]
        return torch.stack([m, -m], 1)


def uniform_dataset(levels: dict[int, list[int]]) -> ImageDataset:
    """8x8 images of one grey level each: crops, area downsampling and the decode keep them exactly uniform."""
    labels = torch.tensor([c for c, vs in levels.items() for _ in vs])
    values = torch.tensor([v for vs in levels.values() for v in vs], dtype=torch.uint8)
    return ImageDataset(values.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous(), labels, synthetic_spec(2, (1, 8, 8)))


def grey(train: ImageDataset, index: int) -> float:
    """The normalised grey level of image `index`."""
    return float(train.normalized(torch.tensor([index]))[0, 0, 0, 0])


def test_each_class_keeps_the_crops_the_teacher_is_surest_of_best_first():
    train = uniform_dataset({0: [250, 10, 130, 240, 100, 220], 1: [5, 200, 35, 15, 230, 25]})
    cfg = FormationConfig(factor=2, candidates=6, crops=3)
    bright = rank_class([Brightness()], train, 0, 4, cfg, torch.Generator().manual_seed(0))
    dark = rank_class([Brightness()], train, 1, 4, cfg, torch.Generator().manual_seed(0))
    assert train.images[bright.sources, 0, 0, 0].tolist() == [250, 240, 220, 130]  # lowest loss first
    assert train.images[dark.sources, 0, 0, 0].tolist() == [5, 15, 25, 35]
    assert bright.losses.tolist() == sorted(bright.losses.tolist())
    assert bright.crops.shape == (4, 1, 8, 8) and bright.boxes.shape == (4, 3)
    assert all(1 <= s <= 8 and t + s <= 8 and left + s <= 8 for t, left, s in bright.boxes.tolist())
    with pytest.raises(FormationError, match="class 0 of 'synthetic' has 6 real images; forming 8 patches"):
        rank_class([Brightness()], train, 0, 8, cfg, torch.Generator())


def test_stored_images_decode_to_the_round_trip_of_their_crops_in_row_major_order():
    train = load_dataset("synthetic:2:1x8x8:8", "train")
    cfg = FormationConfig(factor=2, candidates=8, crops=2)
    classes = [rank_class([Brightness()], train, c, 8, cfg, torch.Generator().manual_seed(c)) for c in range(2)]
    stored = stitch(classes, 2, 2)  # [2 stored images x 2 classes, 1, 8, 8], IPC-major
    assert stored.shape == (4, 1, 8, 8)
    decoded = decode(stored, 2)  # [4, 4 patches, 1, 8, 8]
    for i in range(2):
        for c in range(2):
            want = round_trip(classes[c].crops[i * 4:(i + 1) * 4], 2)
            torch.testing.assert_close(decoded[i * 2 + c], want, rtol=0, atol=1e-6)
    # a crop is the bilinear resize of its box of the recorded source image
    k = classes[1]
    box_top, box_left, side = k.boxes[0].tolist()
    source = train.normalized(k.sources[:1])
    torch.testing.assert_close(cut(source, k.boxes[:1]), torch.nn.functional.interpolate(
        source[:, :, box_top:box_top + side, box_left:box_left + side], size=(8, 8), mode="bilinear"))


def test_herding_orders_the_stored_images_by_their_decoded_features():
    # class 0: the 8 brightest form stored images {250,240,230,220} and {130,120,110,100}; the class's mean grey
    # (141 over all ten) is nearer the second, so herding puts it first (class 1 likewise)
    levels = {0: [250, 240, 230, 220, 130, 120, 110, 100, 0, 10], 1: [5, 15, 25, 35, 200, 210, 220, 230, 240, 250]}
    train = uniform_dataset(levels)
    cfg = FormationConfig(factor=2, candidates=10, crops=1)
    ranked, _, _ = formed_images([Brightness()], None, train, 2, cfg)
    herded, labels, record = formed_images([Brightness()], Brightness(), train, 2, cfg, herding_real=10)
    assert record["herding_order"] == [[1, 0], [1, 0]]
    torch.testing.assert_close(herded, ranked[[2, 3, 0, 1]])  # IPC-major: stored image i of class c is i*2 + c
    assert labels.tolist() == [0, 1, 0, 1]
    first = [grey(train, s) for s in record["sources"][0][:4]]  # the sources follow their stored images
    torch.testing.assert_close(decode(herded[:1], 2)[0, :, 0, 0, 0], torch.tensor(first))
    assert [int(train.images[s, 0, 0, 0]) for s in record["sources"][0]] == [130, 120, 110, 100, 250, 240, 230, 220]


def _formed_build(tmp_path, **settings) -> BuildConfig:
    tree = get_profile("smoke").updated({"method": {"name": "sre2l", "sre2l": SMALL}, "relabel.views": 2,
                                         "pack.embed_trainer": False, "pack.pixels": "float32", **settings})
    return BuildConfig(dataset=DATASET, ipc=2, settings=tree, device="cpu")


def test_a_factor_two_sre2l_build_writes_formed_images_whose_prefixes_load_in_the_runtime(tmp_path):
    out = build(_formed_build(tmp_path, **{"condense.factor": 2}), tmp_path / "f2.mdc", log=lambda _: None)
    assert out.result.factor == 2
    with formats.open_mdc(out.path) as reader:
        assert reader.spec.formation_factor == 2 and reader.spec.views.count == 8  # 2 views x 4 patches
        prov = reader.header["provenance"]
        whole = reader.read(2, formation="decoded")
    assert prov["method"] == "sre2l" and prov["schedule"] == "formed" and "RDED" in prov["formation"]["construction"]
    assert len(prov["herding_order"]) == 10 and sorted(prov["herding_order"][0]) == [0, 1]
    sources, boxes = torch.tensor(prov["formation"]["sources"]), torch.tensor(prov["formation"]["boxes"])
    assert sources.shape == (10, 8) and boxes.shape == (10, 8, 3)
    # every decoded training image is the round trip of its recorded crop of a real image of its class
    train = load_dataset(DATASET, "train")
    assert all((train.labels[sources[c]] == c).all() for c in range(10))
    ipc_major = sources.view(10, 2, 4).transpose(0, 1).reshape(-1)  # [stored image i, class c, patch p]
    crops = cut(train.normalized(ipc_major), boxes.view(10, 2, 4, 3).transpose(0, 1).reshape(-1, 3))
    decoded_order = round_trip(crops, 2).view(2, 10, 4, 1, 16, 16).transpose(1, 2).reshape(-1, 1, 16, 16)
    np.testing.assert_allclose(whole.images, decoded_order.numpy(), atol=1e-5)
    for budget in (1, 2):
        ds = runtime.load(out.path, budget=budget)
        assert (ds.ipc, len(ds), ds.num_views) == (budget, budget * 40, 2)
        assert ds.stored_images.shape == (budget * 10, 1, 16, 16)
        np.testing.assert_array_equal(ds.images, whole.images[:budget * 40])


def test_a_factor_that_does_not_divide_the_image_is_refused(tmp_path):
    with pytest.raises(MethodConfigError, match="factor 3 does not divide the image size 16x16"):
        build(_formed_build(tmp_path, **{"condense.factor": 3}), tmp_path / "f3.mdc", log=lambda _: None)
