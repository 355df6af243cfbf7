"""CIFAR-10/100 in their python-pickle layout (what torchvision downloads), read without torchvision."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from condenser.data.source import FileSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError


class CifarSource(FileSource):
    """cifar-10-batches-py/{data_batch_1..5,test_batch} or cifar-100-python/{train,test}."""

    def __init__(
        self,
        spec: DatasetSpec,
        dirnames: tuple[str, ...],
        split_files: dict[str, tuple[str, ...]],
        label_key: str,
        torchvision_class: str,
    ) -> None:
        super().__init__(spec)
        self.dirnames = dirnames
        self._split_files = split_files
        self._label_key = label_key
        self._tv_class = torchvision_class

    def files(self, split: str) -> str:
        return ", ".join(self._split_files[split])

    def present(self, directory: Path, split: str) -> bool:
        return all((directory / f).is_file() for f in self._split_files[split])

    def read(self, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in self._split_files[split]:
            path = directory / name
            try:
                with open(path, "rb") as f:
                    batch = pickle.load(f, encoding="latin1")  # the official format is a pickle
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[self._label_key], dtype=np.int64))
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
                raise CondenserError(f"cannot read CIFAR batch {path}: {exc!r}") from exc
        return np.concatenate(images), np.concatenate(labels)

    def download(self, base: Path, split: str) -> None:
        import torchvision.datasets as tvd  # lazy

        getattr(tvd, self._tv_class)(root=str(base), train=split == "train", download=True)
