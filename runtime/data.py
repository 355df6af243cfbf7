"""Dataset files without torch: the IDX reader, the dataset roots and their search order, and the test
images a device evaluates on (raw arrays, .npz files, IDX directories). The condenser reads its IDX datasets
and searches its roots with these same functions (condenser/data/mnist.py, condenser/data/roots.py)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import DataError

DATA_ENV = "MULTISIZE_DATA"
# Known system locations of datasets: Debian's dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist.
SYSTEM_ROOTS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
IDX_NAMES = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
             "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}


@dataclass(frozen=True)
class DataRoot:
    """A directory searched for datasets, and why it is on the list (a not-found message shows both)."""

    path: Path
    origin: str  # "--data-root", "$MULTISIZE_DATA", "user cache" or "system"


def data_roots(explicit: str | os.PathLike[str] | None = None, cache: Path | None = None,
               system: Sequence[Path] | None = None) -> list[DataRoot]:
    """Dataset roots in resolution order (README "Data"): the explicit root, $MULTISIZE_DATA, the user cache,
    then the system roots (`system`, default SYSTEM_ROOTS); the runtime has no explicit root or cache."""
    roots = [] if explicit is None else [DataRoot(Path(explicit).expanduser(), "--data-root")]
    if env := os.environ.get(DATA_ENV):
        roots.append(DataRoot(Path(env).expanduser(), f"${DATA_ENV}"))
    if cache is not None:
        roots.append(DataRoot(cache, "user cache"))
    roots += [DataRoot(Path(r), "system") for r in (SYSTEM_ROOTS if system is None else system)]
    return roots


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


def _read_bytes(path: Path) -> bytes:
    """The whole file, gunzipped when it is named .gz; DataError names the file when it cannot be read."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:  # missing, unreadable, not gzip, truncated or corrupt gzip
        raise DataError(f"cannot read IDX file {path}: {exc}") from None


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (magic 00 00 08 ndim, big-endian uint32 dims, the bytes) as a writable
    uint8 array; every malformed file is a DataError naming the file and what is wrong."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (magic {data[:4].hex() or 'missing'})")
    if data[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes, "
                        f"the file holds {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != size:
        raise DataError(f"{path}: IDX header says {size} bytes for shape {dims}, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # the uncompressed file first: no gunzip
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_stems(split: str) -> tuple[str, str]:
    if split not in IDX_NAMES:
        raise DataError(f"unknown split {split!r}; known: {', '.join(sorted(IDX_NAMES))}")
    return IDX_NAMES[split]


def idx_files(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The split's image and label files in `directory` (each plain or .gz), or None when one is missing."""
    img, lab = (_find_idx(directory, stem) for stem in _idx_stems(split))
    return None if img is None or lab is None else (img, lab)


def read_idx_dir(root: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The split of an MNIST-layout directory: uint8 images [N, ...] and int64 labels [N]."""
    files = idx_files(root, split)
    if files is None:
        img_stem, lab_stem = _idx_stems(split)
        raise DataError(f"{root}: no {img_stem}[.gz] / {lab_stem}[.gz] IDX files")
    x, y = read_idx(files[0]), read_idx(files[1])
    if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise DataError(f"{root}: IDX images {x.shape} and labels {y.shape} do not match")
    return x, y.astype(np.int64)


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
    roots = [r.path for r in data_roots()]
    for root in roots:
        for cand in (root / name, root / name.replace("_", "-")):
            if cand.is_dir():
                try:
                    return read_idx_dir(cand, split)
                except DataError:
                    continue
    raise DataError(f"test data {name!r}: not a file, not a directory, and not found as a dataset under "
                    f"{', '.join(str(r) for r in roots)}")


__all__ = ["DATA_ENV", "IDX_NAMES", "SYSTEM_ROOTS", "DataRoot", "data_roots", "idx_files", "load_test_data",
           "prepare_images", "read_idx", "read_idx_dir", "read_npz"]
