"""Datasets as in-memory uint8 tensors with a per-class index (see loader.load_dataset), from a name
(registered, `imagefolder:PATH`, `synthetic:...`) or from the user's arrays (`from_arrays`)."""

from condenser.data.arrays import ArrayDataError, ArraySource, from_arrays
from condenser.data.catalog import DATASETS
from condenser.data.dataset import ImageDataset
from condenser.data.loader import (
    DEFAULT_DATASET,
    clear_cache,
    data_fingerprint,
    get_source,
    get_spec,
    load_dataset,
)
from condenser.data.roots import ENV_VAR, user_cache_dir
from condenser.data.spec import DatasetSpec, denormalize_to_uint8, normalize
from condenser.data.synthetic import synthetic

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "ENV_VAR",
    "ArrayDataError",
    "ArraySource",
    "DatasetSpec",
    "ImageDataset",
    "clear_cache",
    "data_fingerprint",
    "denormalize_to_uint8",
    "from_arrays",
    "get_source",
    "get_spec",
    "load_dataset",
    "normalize",
    "synthetic",
    "user_cache_dir",
]
