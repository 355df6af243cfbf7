"""Generated labelled image sets for tests and smoke runs: any class count and shape, no files.

Each class has a smooth random prototype (a 4x4 pattern per channel, upsampled); an image is
its class prototype plus pixel noise, so the set is learnable but not trivial. Labels cycle
0..K-1 (a "shuffled" order, so first_of_class is exercised). Prototypes depend on `seed` only;
the noise also on the split, so train and test are different draws of the same classes.
Normalisation is fixed at mean 0.5, std 0.25 per channel.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from condenser.data.dataset import ImageDataset
from condenser.data.source import DatasetSource
from condenser.data.spec import DatasetSpec
from condenser.errors import UnknownNameError

PREFIX = "synthetic:"
GRAMMAR = "synthetic:K:CxHxW[:PER_CLASS], e.g. synthetic:200:3x64x64:10"


def synthetic_spec(
    num_classes: int = 10, image_shape: tuple[int, int, int] = (1, 28, 28), name: str = "synthetic"
) -> DatasetSpec:
    c = image_shape[0]
    return DatasetSpec(
        name=name,
        num_classes=num_classes,
        class_names=tuple(f"class_{i:03d}" for i in range(num_classes)),
        image_shape=tuple(image_shape),
        mean=(0.5,) * c,
        std=(0.25,) * c,
        allow_flip=True,
    )


def synthetic(
    num_classes: int = 10,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    per_class: int = 20,
    seed: int = 0,
    split: str = "train",
    name: str = "synthetic",
) -> ImageDataset:
    """A generated ImageDataset of `per_class` images for each of `num_classes` classes."""
    c, h, w = image_shape
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, c, 4, 4, generator=g) * 200 + 28
    protos = F.interpolate(protos, size=(h, w), mode="bilinear", align_corners=False)
    g.manual_seed(seed * 2 + (0 if split == "train" else 1) + 1_000_003)
    labels = torch.arange(num_classes * per_class) % num_classes
    noise = torch.randn(labels.numel(), c, h, w, generator=g) * 24
    images = (protos[labels] + noise).round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels, synthetic_spec(num_classes, image_shape, name))


@dataclass(frozen=True)
class SyntheticSource(DatasetSource):
    """Registered as `synthetic` (10 classes, 1x28x28, 20/10 per class) and as the `synthetic:` family."""

    name: str = "synthetic"
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 28, 28)
    per_class: int = 20
    seed: int = 0

    @classmethod
    def from_name(cls, name: str) -> SyntheticSource:
        m = re.fullmatch(r"synthetic:(\d+):(\d+)x(\d+)x(\d+)(?::(\d+))?", name)
        if not m or int(m.group(1)) < 1:
            raise UnknownNameError(f"bad synthetic dataset name {name!r}; expected {GRAMMAR}")
        k, c, h, w = (int(m.group(i)) for i in range(1, 5))
        return cls(name=name, num_classes=k, image_shape=(c, h, w), per_class=int(m.group(5) or 20))

    def spec(self, root: str | Path | None = None) -> DatasetSpec:
        return synthetic_spec(self.num_classes, self.image_shape, self.name)

    def load(self, split: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
        return _cached(self, split)


@functools.lru_cache(maxsize=8)
def _cached(src: SyntheticSource, split: str) -> ImageDataset:
    per_class = src.per_class if split == "train" else max(1, src.per_class // 2)
    return synthetic(src.num_classes, src.image_shape, per_class, src.seed, split, src.name)
