"""`from_arrays`: the user's own images, already in memory, as a dataset every stage loads by name.

The result is registered for this process as `arrays:NAME` (a later one with the same name replaces it),
so the teacher, the condensation and the build load it like any named dataset, and the cache keys hold
its content fingerprint (ImageDataset.fingerprint): other arrays under the same name never reuse a cached
teacher or run. Without test arrays, a test split is held out per class (condenser/data/holdout.py, keys
are the array indices). Mean/std are measured on the training split unless given, as for image folders.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from condenser.data.dataset import ImageDataset
from condenser.data.holdout import DEFAULT_HOLDOUT, DEFAULT_SPLIT_SEED, check_holdout, holdout_mask
from condenser.data.images import channel_stats
from condenser.data.source import DatasetSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError, UnknownNameError

PREFIX = "arrays:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LAYOUTS = ("NHWC", "NCHW")
_CHANNELS = (1, 3)


class ArrayDataError(CondenserError, ValueError):
    """In-memory images, labels or class names that cannot form a dataset (dtype, shape, range, names)."""


class ArraySource(DatasetSource):
    """An in-memory dataset: its two splits and how the test split was made."""

    def __init__(self, train: ImageDataset, test: ImageDataset, split: dict) -> None:
        self.name = train.spec.name
        self.train = train
        self.test = test
        self.split = split

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, train={len(self.train)}, test={len(self.test)})"

    def spec(self, root: object = None) -> DatasetSpec:
        return self.train.spec

    def load(self, split: str, root: object = None, download: bool = False) -> ImageDataset:
        return self.train if split == "train" else self.test

    def describe(self) -> dict:
        return {"name": self.name, **self.split}


_REGISTERED: dict[str, ArraySource] = {}


def register(source: ArraySource) -> ArraySource:
    """Make `source` the dataset that its name loads in this process."""
    _REGISTERED[source.name] = source
    return source


def registered(name: str) -> ArraySource:
    """The in-memory dataset of that name; UnknownNameError if none was made in this process."""
    if name not in _REGISTERED:
        made = ", ".join(sorted(_REGISTERED)) or "none"
        raise UnknownNameError(f"no in-memory dataset {name!r} in this process (made here: {made}); "
                               "`arrays:` datasets exist only in the Python process that called from_arrays()")
    return _REGISTERED[name]


def _channels_first(images: object, what: str, layout: str | None) -> np.ndarray:
    """uint8 [N, C, H, W] from [N, H, W, C], [N, C, H, W] or grayscale [N, H, W]."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise ArrayDataError(f"{what} must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ArrayDataError(f"{what} must be uint8 pixels (0..255), got {images.dtype}; for floats in [0, 1] "
                             "pass (x * 255).round().astype(np.uint8)")
    if images.ndim == 3:
        images = images[:, None]
        layout = "NCHW"
    if images.ndim != 4 or images.shape[0] == 0:
        raise ArrayDataError(f"{what} must be [N, H, W, C] or [N, C, H, W] with N >= 1, got shape "
                             f"{list(images.shape)}")
    if layout is None:
        last, second = images.shape[3] in _CHANNELS, images.shape[1] in _CHANNELS
        if last == second:
            raise ArrayDataError(f"{what} of shape {list(images.shape)}: cannot tell the channel axis (1 or 3 "
                                 "channels); pass layout='NHWC' or layout='NCHW'")
        layout = "NHWC" if last else "NCHW"
    if layout not in _LAYOUTS:
        raise ArrayDataError(f"layout {layout!r}: use one of {', '.join(_LAYOUTS)}")
    out = images.transpose(0, 3, 1, 2) if layout == "NHWC" else images
    return np.array(out, dtype=np.uint8, order="C", copy=True)  # a private copy: the caller may reuse theirs


def _labels(labels: object, n: int, num_classes: int, what: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise ArrayDataError(f"{what} must be integers (class indices), got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ArrayDataError(f"{what} must have shape [{n}] (one per image), got {list(arr.shape)}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        raise ArrayDataError(f"{what}[{bad[0]}] = {arr[bad[0]]} is outside 0..{num_classes - 1} "
                             f"({num_classes} class names)")
    return arr.astype(np.int64)


def _class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(class_names) if not isinstance(class_names, str) else ()
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise ArrayDataError(f"class_names must be 2 or more non-empty strings, got {class_names!r}")
    if len(set(names)) != len(names):
        raise ArrayDataError(f"class_names repeat a name: {list(names)}")
    return names


def _spec(name: str, names: tuple[str, ...], images: np.ndarray, mean: Sequence[float] | None,
          std: Sequence[float] | None, allow_flip: bool) -> DatasetSpec:
    measured = channel_stats(images)
    mean = tuple(float(v) for v in mean) if mean is not None else measured[0]
    std = tuple(float(v) for v in std) if std is not None else measured[1]
    c = images.shape[1]
    if len(mean) != c or len(std) != c or min(std) <= 0:
        raise ArrayDataError(f"mean and std need {c} values (one per channel, std > 0), got {mean} and {std}")
    return DatasetSpec(f"{PREFIX}{name}", len(names), names, tuple(images.shape[1:]), mean, std, allow_flip)


def from_arrays(
    train_images: np.ndarray | torch.Tensor,
    train_labels: Sequence[int] | np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    *,
    test_images: np.ndarray | torch.Tensor | None = None,
    test_labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    name: str = "arrays",
    layout: str | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = DEFAULT_SPLIT_SEED,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    allow_flip: bool = True,
) -> ArraySource:
    """A dataset `arrays:NAME` from uint8 images [N, H, W, C] or [N, C, H, W] (1 or 3 channels; [N, H, W] is
    grayscale) and integer labels in 0..len(class_names)-1; registered for this process.

    Without `test_images`/`test_labels`, `holdout` of every class (default 0.2) is held out as the test
    split, chosen by `seed`. `layout` is needed only when the channel axis is ambiguous. `allow_flip=False`
    for classes that a mirror image changes (digits, text). Raises ArrayDataError naming the bad argument.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ArrayDataError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names cache folders)")
    if (test_images is None) != (test_labels is None):
        raise ArrayDataError("give test_images and test_labels together, or neither (a test split is held out)")
    names = _class_names(class_names)
    images = _channels_first(train_images, "train_images", layout)
    labels = _labels(train_labels, len(images), len(names), "train_labels")
    missing = [names[c] for c in range(len(names)) if not np.any(labels == c)]
    if missing:
        raise ArrayDataError(f"classes {missing} have no training images")
    if test_images is None:
        check_holdout(holdout, seed, "from_arrays")
        test_mask = holdout_mask(labels, [str(i) for i in range(len(labels))], names, holdout, seed,
                                 "from_arrays")
        test_x, test_y = images[test_mask], labels[test_mask]
        images, labels = images[~test_mask], labels[~test_mask]
        split = {"test": "held out of the training arrays", "holdout": holdout, "seed": seed}
    else:
        test_x = _channels_first(test_images, "test_images", layout)
        test_y = _labels(test_labels, len(test_x), len(names), "test_labels")
        if test_x.shape[1:] != images.shape[1:]:
            raise ArrayDataError(f"test_images are {list(test_x.shape[1:])} per image (C, H, W), train_images "
                                 f"{list(images.shape[1:])}")
        split = {"test": "given arrays"}
    spec = _spec(name, names, images, mean, std, allow_flip)
    train = ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), spec)
    test = ImageDataset(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y), spec)
    return register(ArraySource(train, test, {"train_images": len(train), "test_images": len(test), **split}))
