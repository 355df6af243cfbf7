"""MNIST and Fashion-MNIST: the original IDX files, read with runtime.data's numpy reader (no torchvision needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from condenser.data.source import FileSource
from condenser.errors import CondenserError
from runtime.data import IDX_NAMES, SYSTEM_ROOTS, idx_files, read_idx_dir
from runtime.errors import DataError


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
        return " + ".join(f"{s}[.gz]" for s in IDX_NAMES[split])

    def present(self, directory: Path, split: str) -> bool:
        return idx_files(directory, split) is not None

    def read(self, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The runtime's IDX reader (runtime.data, shared with the device's test data), its DataError as the
        condenser's error type; the images gain their channel axis."""
        try:
            images, labels = read_idx_dir(directory, split)
        except DataError as exc:
            raise CondenserError(str(exc)) from exc
        if images.ndim != 3:
            raise CondenserError(f"{directory}: IDX images {images.shape} are not [N, H, W] single-channel images")
        return images[:, None], labels

    def download(self, base: Path, split: str) -> None:
        import torchvision.datasets as tvd  # lazy: only users who download need it

        getattr(tvd, self._tv_class)(root=str(base), train=split == "train", download=True)

    def hints(self, base: Path) -> list[str]:
        hints = super().hints(base)
        if self._apt:
            hints.insert(
                0,
                f"Debian/Ubuntu: sudo apt-get install {self._apt}  "
                f"(installs {SYSTEM_ROOTS[0] / self.dirnames[0]})",
            )
        return hints
