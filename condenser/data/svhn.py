"""SVHN cropped digits (train_32x32.mat / test_32x32.mat), read with scipy like torchvision does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from condenser.data.source import FileSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError

_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


class SvhnSource(FileSource):
    """The .mat files hold X [32, 32, 3, N] and y [N, 1] with digit 0 stored as label 10."""

    def __init__(self, spec: DatasetSpec) -> None:
        super().__init__(spec)
        self.dirnames = ("svhn", "SVHN")

    def files(self, split: str) -> str:
        return _FILES[split]

    def present(self, directory: Path, split: str) -> bool:
        return (directory / _FILES[split]).is_file()

    def read(self, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            import scipy.io  # lazy: only SVHN needs it
        except ImportError as exc:
            raise CondenserError("reading SVHN needs scipy: pip install scipy") from exc
        path = directory / _FILES[split]
        try:
            mat = scipy.io.loadmat(str(path))
            x, y = mat["X"], mat["y"]
        except (OSError, ValueError, KeyError) as exc:
            raise CondenserError(f"cannot read SVHN file {path}: {exc!r}") from exc
        images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)), dtype=np.uint8)
        labels = y.reshape(-1).astype(np.int64) % 10
        return images, labels

    def download(self, base: Path, split: str) -> None:
        import torchvision.datasets as tvd  # lazy

        tvd.SVHN(root=str(base / self.dirnames[0]), split=split, download=True)
