"""`imagefolder:PATH[:SIZE]`: any class-per-subfolder image set.

Layout: PATH/train/<class>/**/*.png|jpg|... and PATH/test/<class>/... (PATH/val/ is accepted
for the test split). Classes are the sorted sub-folder names of train/ (of the test split when
there is no train/); a test class that train/ lacks is an error.
Image shape: channels from the first training image's mode (grayscale -> 1, else RGB 3); size
SIZE (`64` = 64x64, or `HxW`) when given, else the first training image's size. Every image of
another size is resized (shorter side, bilinear) and centre-cropped to it.
Mean/std are measured on the train split (rounded to 4 decimals); flips are allowed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from condenser.data.dataset import ImageDataset
from condenser.data.images import channel_stats, decode_images, list_images, probe
from condenser.data.source import DatasetSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError, DatasetNotFoundError

PREFIX = "imagefolder:"
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}
LAYOUT = "PATH/train/<class>/*.png (and PATH/test/<class>/*.png or PATH/val/<class>/*.png)"


def parse_name(name: str) -> tuple[Path, tuple[int, int] | None]:
    """'imagefolder:PATH' or 'imagefolder:PATH:64' / ':64x48' -> (path, (H, W) or None)."""
    rest = name[len(PREFIX) :]
    m = re.fullmatch(r"(.+):(\d+)(?:x(\d+))?", rest)
    if m and not Path(rest).expanduser().exists():
        h = int(m.group(2))
        return Path(m.group(1)).expanduser(), (h, int(m.group(3) or h))
    if not rest:
        raise DatasetNotFoundError(f"dataset name {name!r} has no path; expected imagefolder:PATH ({LAYOUT})")
    return Path(rest).expanduser(), None


@dataclass(frozen=True)
class ImageFolderSource(DatasetSource):
    """A folder dataset; frozen so it can key the decode cache."""

    name: str
    path: Path
    size: tuple[int, int] | None = None

    @classmethod
    def from_name(cls, name: str) -> ImageFolderSource:
        path, size = parse_name(name)
        return cls(name=name, path=path.resolve(), size=size)

    def split_dir(self, split: str) -> Path:
        tried = [self.path / d for d in _SPLIT_DIRS[split]]
        for d in tried:
            if d.is_dir():
                return d
        listed = ", ".join(str(t) for t in tried)
        raise DatasetNotFoundError(
            f"dataset {self.name!r} ({split} split) not found: tried {listed}. Expected layout: {LAYOUT}"
        )

    def class_names(self) -> tuple[str, ...]:
        base = self.path / "train" if (self.path / "train").is_dir() else self.split_dir("test")
        names = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
        if not names:
            raise DatasetNotFoundError(f"{base} has no class sub-folders. Expected layout: {LAYOUT}")
        return names

    def spec(self, root: str | Path | None = None) -> DatasetSpec:
        return _folder_spec(self)

    def load(self, split: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
        return _folder_dataset(self, split)


@functools.lru_cache(maxsize=8)
def _folder_files(src: ImageFolderSource, split: str) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    classes = src.class_names()
    index = {name: i for i, name in enumerate(classes)}
    directory = src.split_dir(split)
    paths: list[Path] = []
    labels: list[int] = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise CondenserError(f"{sub}: class {sub.name!r} is not among the train classes of {src.path}")
        files = list_images(sub)
        paths += files
        labels += [index[sub.name]] * len(files)
    if not paths:
        raise DatasetNotFoundError(f"{directory} holds no images. Expected layout: {LAYOUT}")
    return tuple(paths), tuple(labels)


@functools.lru_cache(maxsize=8)
def _folder_shape(src: ImageFolderSource) -> tuple[int, int, int]:
    split = "train" if (src.path / "train").is_dir() else "test"
    c, h, w = probe(_folder_files(src, split)[0][0])
    return (c, *src.size) if src.size else (c, h, w)


@functools.lru_cache(maxsize=8)
def _folder_arrays(src: ImageFolderSource, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = _folder_files(src, split)
    return decode_images(paths, _folder_shape(src)), np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _folder_spec(src: ImageFolderSource) -> DatasetSpec:
    classes = src.class_names()
    split = "train" if (src.path / "train").is_dir() else "test"
    mean, std = channel_stats(_folder_arrays(src, split)[0])
    return DatasetSpec(
        name=src.name,
        num_classes=len(classes),
        class_names=classes,
        image_shape=_folder_shape(src),
        mean=mean,
        std=std,
        allow_flip=True,
    )


@functools.lru_cache(maxsize=8)
def _folder_dataset(src: ImageFolderSource, split: str) -> ImageDataset:
    images, labels = _folder_arrays(src, split)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), _folder_spec(src))
