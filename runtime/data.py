"""Test images for evaluation: normalisation of raw arrays, .npz files and IDX directories, numpy only."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from runtime.errors import DataError

# Known system locations of IDX datasets (Debian's dataset-fashion-mnist package, ...).
SYSTEM_ROOTS = ("/usr/share/datasets",)
IDX_NAMES = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
             "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}


def prepare_images(x: np.ndarray, image_shape: tuple[int, int, int], mean: tuple[float, ...] | None,
                   std: tuple[float, ...] | None) -> np.ndarray:
    """Bring test images to the model's input: [N,C,H,W] float32 normalised.

    uint8 input is normalised with the file's mean/std; float input is taken as already normalised.
    [N,H,W] (one channel) and channels-last [N,H,W,C] are accepted.
    """
    x = np.asarray(x)
    c, h, w = image_shape
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] != (c, h, w) and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise DataError(f"test images have shape {x.shape}; the model takes [N, {c}, {h}, {w}]")
    if x.dtype == np.uint8:
        if mean is None or std is None:
            raise DataError("uint8 test images need the file's mean/std to normalise; "
                            "pass float32 normalised x")
        m = np.asarray(mean, np.float32).reshape(1, c, 1, 1)
        s = np.asarray(std, np.float32).reshape(1, c, 1, 1)
        return ((x.astype(np.float32) / np.float32(255.0) - m) / s).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"test images must be uint8 or float, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a numpy array: magic 0x0000 08 nd, big-endian dims, uint8 data."""
    try:
        with _open(path) as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    nd = data[3]
    if len(data) < 4 + 4 * nd:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    size = int(np.prod(dims, dtype=np.int64))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd)
    if body.size != size:
        raise DataError(f"{path}: IDX header says {dims} ({size} bytes), file holds {body.size}")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def read_idx_dir(root: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    img_stem, lab_stem = IDX_NAMES[split]
    img, lab = _find_idx(root, img_stem), _find_idx(root, lab_stem)
    if img is None or lab is None:
        raise DataError(f"{root}: no {img_stem}[.gz] / {lab_stem}[.gz] IDX files")
    x, y = read_idx(img), read_idx(lab).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{root}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path}: an .npz of test data needs arrays 'x' and 'y', "
                                f"has {sorted(z.files)}")
            return z["x"], z["y"].astype(np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_test_data(spec: str | os.PathLike[str], split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """x (as stored: uint8 or float) and int64 y from an .npz, an IDX directory, or a dataset name
    looked up in $MULTISIZE_DATA and the system dataset roots (e.g. 'fashion-mnist')."""
    path = Path(spec)
    if path.is_file():
        return read_npz(path)
    if path.is_dir():
        return read_idx_dir(path, split)
    name = str(spec)
    roots = [Path(r) for r in (os.environ.get("MULTISIZE_DATA"),) if r] + [Path(r) for r in SYSTEM_ROOTS]
    for root in roots:
        for cand in (root / name, root / name.replace("_", "-")):
            if cand.is_dir():
                try:
                    return read_idx_dir(cand, split)
                except DataError:
                    continue
    raise DataError(f"test data {name!r}: not a file, not a directory, and not found as a dataset under "
                    f"{', '.join(str(r) for r in roots)}")


__all__ = ["load_test_data", "prepare_images", "read_idx", "read_idx_dir", "read_npz"]
