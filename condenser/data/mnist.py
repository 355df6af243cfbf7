"""MNIST and Fashion-MNIST: the original IDX files, read with numpy (no torchvision needed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from condenser.data.source import FileSource
from condenser.errors import CondenserError

_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX uint8 array (gzipped or not); raises CondenserError naming the file if malformed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise CondenserError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CondenserError(f"{path} is not an IDX file (bad magic)")
    if data[2] != 0x08:
        raise CondenserError(f"{path}: IDX element type 0x{data[2]:02x} is not uint8 (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CondenserError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise CondenserError(
            f"{path}: IDX header says {expected} bytes for shape {dims}, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # prefer the uncompressed file: no gunzip
        if (directory / name).is_file():
            return directory / name
    return None


class IdxSource(FileSource):
    """An MNIST-layout dataset (60000/10000 images of 1x28x28 in IDX files)."""

    def __init__(
        self, spec, dirnames: tuple[str, ...], torchvision_class: str, apt_package: str | None = None
    ):
        super().__init__(spec)
        self.dirnames = dirnames
        self._tv_class = torchvision_class
        self._apt = apt_package

    def files(self, split: str) -> str:
        return " + ".join(f"{s}[.gz]" for s in _STEMS[split])

    def present(self, directory: Path, split: str) -> bool:
        return all(_find(directory, s) is not None for s in _STEMS[split])

    def read(self, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        img_stem, lab_stem = _STEMS[split]
        images = read_idx(_find(directory, img_stem))
        labels = read_idx(_find(directory, lab_stem))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise CondenserError(
                f"{directory}: IDX images {images.shape} and labels {labels.shape} do not match"
            )
        return images[:, None], labels.astype(np.int64)

    def download(self, base: Path, split: str) -> None:
        import torchvision.datasets as tvd  # lazy: only users who download need it

        getattr(tvd, self._tv_class)(root=str(base), train=split == "train", download=True)

    def hints(self, base: Path) -> list[str]:
        hints = super().hints(base)
        if self._apt:
            hints.insert(
                0,
                f"Debian/Ubuntu: sudo apt-get install {self._apt}  "
                f"(installs /usr/share/datasets/{self.dirnames[0]})",
            )
        return hints
