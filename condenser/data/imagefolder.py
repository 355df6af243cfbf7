"""`imagefolder:PATH[:SIZE][:holdout=F][:seed=N]`: any class-per-subfolder image set.

Layouts, tried in this order:
- PATH/train/<class>/** with PATH/test/<class>/** (or PATH/val/): the given splits.
- PATH/train/<class>/** alone: the test split is held out of train/.
- PATH/<class>/** (torchvision's ImageFolder): the test split is held out of all images.
A PATH with test/ or val/ but no train/ is an error (test/ could also be a class of the third layout).
Holding out takes `holdout` (default 0.2) of every class, chosen by `seed` (default 0) as
condenser/data/holdout.py describes; the options are part of the dataset name, so the teacher, the build
and `condenser eval --dataset` see the same split, and a file's header records them. They are refused
when the folder has its own test split.
Classes are the sorted sub-folder names of the training folder (hidden ones skipped); a test class that
it lacks is an error. Images are found recursively (condenser.data.images.list_images).
Image shape: channels from the first training image's mode (grayscale -> 1, else RGB 3); size
SIZE (`64` = 64x64, or `HxW`) when given, else the first training image's size. Every image of
another size is resized (shorter side, bilinear) and centre-cropped to it.
Mean/std are measured on the training split (rounded to 4 decimals); flips are allowed.
Decoded images are held for the process; `condenser.data.clear_cache()` drops them after files change.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from condenser.data.dataset import ImageDataset
from condenser.data.holdout import DEFAULT_HOLDOUT, DEFAULT_SPLIT_SEED, check_holdout, holdout_mask
from condenser.data.images import channel_stats, decode_images, list_images, probe
from condenser.data.source import DatasetSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError, DatasetNotFoundError

PREFIX = "imagefolder:"
GRAMMAR = "imagefolder:PATH[:SIZE][:holdout=F][:seed=N]"
LAYOUT = ("PATH/<class>/*.png (a test split is held out), or PATH/train/<class>/*.png with PATH/test/<class>/ "
          "or PATH/val/<class>/ (without them the test split is held out of train/)")
_TEST_DIRS = ("test", "val")
_SIZE = re.compile(r"(\d+)(?:x(\d+))?")
_OPTION = re.compile(r"(\w+)=(.*)")


class ImageFolderNameError(CondenserError, ValueError):
    """An `imagefolder:` name has a bad size or option."""


@dataclass(frozen=True)
class FolderName:
    """What an `imagefolder:` name says: the folder, the image size and the holdout options (None: unset)."""

    path: Path
    size: tuple[int, int] | None = None
    holdout: float | None = None
    seed: int | None = None


def _option(name: str, key: str, value: str) -> float | int:
    kinds = {"holdout": float, "seed": int}
    if key not in kinds:
        raise ImageFolderNameError(f"{name!r}: unknown option {key!r}; expected {GRAMMAR}")
    try:
        return kinds[key](value)
    except ValueError:
        raise ImageFolderNameError(f"{name!r}: {key}={value!r} is not a {kinds[key].__name__}") from None


def parse_name(name: str) -> FolderName:
    """'imagefolder:PATH', with optional ':64' / ':64x48', ':holdout=0.1', ':seed=3' segments at the end.

    Segments are taken off the end while what is left is not an existing path, so a folder whose name
    looks like a segment still works.
    """
    rest = name[len(PREFIX) :]
    found: dict[str, object] = {}
    while not Path(rest).expanduser().exists() and ":" in rest:
        head, segment = rest.rsplit(":", 1)
        size, option = _SIZE.fullmatch(segment), _OPTION.fullmatch(segment)
        if not head or not (size or option):
            break
        key = "size" if size else option.group(1)
        if key in found:
            raise ImageFolderNameError(f"{name!r}: {key} given twice; expected {GRAMMAR}")
        if size:
            h = int(size.group(1))
            found["size"] = (h, int(size.group(2) or h))
        else:
            found[key] = _option(name, key, option.group(2))
        rest = head
    if not rest:
        raise DatasetNotFoundError(f"dataset name {name!r} has no path; expected {GRAMMAR} ({LAYOUT})")
    return FolderName(Path(rest).expanduser(), **found)


@dataclass(frozen=True)
class FolderLayout:
    """Where a folder's splits are: `test` None means the test split is held out of `train`."""

    train: Path
    test: Path | None


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class ImageFolderSource(DatasetSource):
    """A folder dataset; frozen so it can key the decode cache."""

    name: str
    path: Path
    size: tuple[int, int] | None = None
    holdout: float | None = None  # None: DEFAULT_HOLDOUT where the folder has no test split
    seed: int | None = None  # None: DEFAULT_SPLIT_SEED

    @classmethod
    def from_name(cls, name: str) -> ImageFolderSource:
        parsed = parse_name(name)
        check_holdout(parsed.holdout if parsed.holdout is not None else DEFAULT_HOLDOUT,
                      parsed.seed if parsed.seed is not None else DEFAULT_SPLIT_SEED, repr(name))
        return cls(name=name, path=parsed.path.resolve(), size=parsed.size, holdout=parsed.holdout,
                   seed=parsed.seed)

    @property
    def holdout_fraction(self) -> float:
        return DEFAULT_HOLDOUT if self.holdout is None else self.holdout

    @property
    def split_seed(self) -> int:
        return DEFAULT_SPLIT_SEED if self.seed is None else self.seed

    def layout(self) -> FolderLayout:
        return _folder_layout(self)

    def class_names(self) -> tuple[str, ...]:
        base = self.layout().train
        names = tuple(p.name for p in _class_dirs(base))
        if not names:
            raise DatasetNotFoundError(f"{base} has no class sub-folders. Expected layout: {LAYOUT}")
        return names

    def spec(self, root: str | Path | None = None) -> DatasetSpec:
        return _folder_spec(self)

    def load(self, split: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
        return _folder_dataset(self, split)

    def describe(self) -> dict:
        layout = self.layout()
        out: dict = {"name": self.name, "path": str(self.path), "train": str(layout.train)}
        if layout.test is not None:
            return {**out, "test": str(layout.test)}
        return {**out, "test": f"held out of {layout.train}", "holdout": self.holdout_fraction,
                "seed": self.split_seed}


@functools.lru_cache(maxsize=8)
def _folder_layout(src: ImageFolderSource) -> FolderLayout:
    if not src.path.is_dir():
        raise DatasetNotFoundError(f"dataset {src.name!r}: folder {src.path} not found. Expected layout: {LAYOUT}")
    tests = [src.path / d for d in _TEST_DIRS if (src.path / d).is_dir()]
    train = src.path / "train"
    if not train.is_dir():
        if tests:
            raise DatasetNotFoundError(
                f"dataset {src.name!r}: {tests[0]} exists but {train} does not; put the training images in "
                f"{train}/<class>/ (or, for a held-out split, all images in {src.path}/<class>/)")
        return FolderLayout(train=src.path, test=None)
    if tests and (src.holdout is not None or src.seed is not None):
        raise ImageFolderNameError(
            f"dataset {src.name!r}: {tests[0]} is its test split, so holdout/seed do not apply; drop them "
            "from the name or move that folder away")
    return FolderLayout(train=train, test=tests[0] if tests else None)


def _labelled_files(src: ImageFolderSource, directory: Path) -> tuple[list[Path], list[int]]:
    index = {name: i for i, name in enumerate(src.class_names())}
    paths: list[Path] = []
    labels: list[int] = []
    for sub in _class_dirs(directory):
        if sub.name not in index:
            raise CondenserError(f"{sub}: class {sub.name!r} is not among the train classes of {src.path}")
        files = list_images(sub)
        paths += files
        labels += [index[sub.name]] * len(files)
    if not paths:
        raise DatasetNotFoundError(f"{directory} holds no images. Expected layout: {LAYOUT}")
    return paths, labels


@functools.lru_cache(maxsize=8)
def _folder_files(src: ImageFolderSource, split: str) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    layout = src.layout()
    if split == "test" and layout.test is not None:
        paths, labels = _labelled_files(src, layout.test)
        return tuple(paths), tuple(labels)
    paths, labels = _labelled_files(src, layout.train)
    if layout.test is None:
        keys = [p.relative_to(layout.train).as_posix() for p in paths]
        test = holdout_mask(labels, keys, src.class_names(), src.holdout_fraction, src.split_seed,
                            f"dataset {src.name!r} ({layout.train})")
        keep = test if split == "test" else ~test
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
        labels = [y for y, k in zip(labels, keep, strict=True) if k]
    return tuple(paths), tuple(labels)


@functools.lru_cache(maxsize=8)
def _folder_shape(src: ImageFolderSource) -> tuple[int, int, int]:
    c, h, w = probe(_folder_files(src, "train")[0][0])
    return (c, *src.size) if src.size else (c, h, w)


@functools.lru_cache(maxsize=8)
def _folder_arrays(src: ImageFolderSource, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = _folder_files(src, split)
    return decode_images(paths, _folder_shape(src)), np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _folder_spec(src: ImageFolderSource) -> DatasetSpec:
    classes = src.class_names()
    mean, std = channel_stats(_folder_arrays(src, "train")[0])
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


def clear_folder_cache() -> None:
    """Forget every folder's layout, file lists and decoded images (after its files changed)."""
    for cached in (_folder_layout, _folder_files, _folder_shape, _folder_arrays, _folder_spec, _folder_dataset):
        cached.cache_clear()
