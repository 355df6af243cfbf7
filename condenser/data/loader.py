"""Public entry points: names (registered or `imagefolder:` / `synthetic:` families) -> spec or data."""

from __future__ import annotations

import hashlib
from pathlib import Path

from condenser.data.arrays import PREFIX as ARRAYS_PREFIX
from condenser.data.arrays import registered
from condenser.data.catalog import DATASETS
from condenser.data.dataset import ImageDataset
from condenser.data.imagefolder import PREFIX as FOLDER_PREFIX
from condenser.data.imagefolder import ImageFolderSource, clear_folder_cache
from condenser.data.source import SPLITS, DatasetSource, clear_file_cache
from condenser.data.spec import DatasetSpec
from condenser.data.synthetic import GRAMMAR as SYNTHETIC_GRAMMAR
from condenser.data.synthetic import PREFIX as SYNTHETIC_PREFIX
from condenser.data.synthetic import SyntheticSource
from condenser.errors import UnknownNameError

DEFAULT_DATASET = "fashion-mnist"
_SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test"}


def get_source(name: str) -> DatasetSource:
    """The source behind a dataset name; UnknownNameError lists the registered names."""
    if name.startswith(FOLDER_PREFIX):
        return ImageFolderSource.from_name(name)
    if name.startswith(SYNTHETIC_PREFIX):
        return SyntheticSource.from_name(name)
    if name.startswith(ARRAYS_PREFIX):
        return registered(name)
    if name not in DATASETS:
        known = ", ".join(DATASETS.names())
        raise UnknownNameError(
            f"unknown dataset {name!r}; known: {known}; or imagefolder:PATH, or {SYNTHETIC_GRAMMAR}, "
            "or in Python condenser.data.from_arrays(...)"
        )
    return DATASETS.get(name)


def get_spec(name: str = DEFAULT_DATASET, root: str | Path | None = None) -> DatasetSpec:
    """The dataset's spec. Static for registered names (no files needed), except that Tiny-ImageNet
    reads its class names from the data when found under `root`; imagefolder reads its folder."""
    return get_source(name).spec(root)


def load_dataset(
    name: str = DEFAULT_DATASET,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load a split ("train", "test"; "val" means test) into memory, cached per process.

    Files are searched under `root`, $MULTISIZE_DATA, the user cache and system paths
    (condenser.data.roots); torchvision downloads them only when `download` is True.
    Raises DatasetNotFoundError (listing every path tried and how to get the data) or
    UnknownNameError. The returned tensors may be shared between calls: do not modify them.
    """
    if split not in _SPLIT_ALIASES:
        raise UnknownNameError(f"unknown split {split!r}; known: {', '.join(SPLITS)} (val = test)")
    return get_source(name).load(_SPLIT_ALIASES[split], root, download)


def data_fingerprint(name: str, root: str | Path | None = None, splits: tuple[str, ...] = SPLITS) -> str:
    """One hash of the named splits' content (ImageDataset.fingerprint), for cache keys built from a name.

    The loads are cached per process, so calling this again, or after the data was loaded, costs nothing.
    """
    parts = [f"{split}={load_dataset(name, split, root).fingerprint}" for split in splits]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def clear_cache() -> None:
    """Drop every decoded dataset held by this process (frees memory; rereads files that changed)."""
    clear_file_cache()
    clear_folder_cache()
