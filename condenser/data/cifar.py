"""CIFAR-10/100 in their python-pickle layout (what torchvision downloads), read without torchvision.

The official batches are pickles, and a plain pickle.load runs whatever a file names (a replaced batch
in a shared data directory could call os.system). They are read with an Unpickler that resolves only the
globals a batch of dicts, lists, strings, ints and numpy arrays needs, so nothing else can be called.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from condenser.data.source import FileSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError

_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy >= 2 / numpy 1.x


class UnsafePickleError(CondenserError):
    """A CIFAR batch refers to a Python object that a batch never holds (it could run code): not loaded."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes, limited to latin-1 (no codec lookups)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"calls _codecs.encode with {encoding!r}, which a CIFAR batch never does")
    return text.encode("latin1")


# (module, name) -> object: all a CIFAR batch refers to, whichever numpy or protocol wrote it.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _NUMPY_CORE.numeric._frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refers to {module}.{name}, which a CIFAR batch never holds") from None


def load_batch(path: Path) -> dict:
    """One CIFAR batch file as a dict, through the restricted unpickler; UnsafePickleError names a bad global."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"CIFAR batch {path} {exc}; not loaded (replace it with the official file)") from None
    if not isinstance(batch, dict):
        raise CondenserError(f"cannot read CIFAR batch {path}: a {type(batch).__name__}, not a dict")
    return batch


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
                batch = load_batch(path)
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[self._label_key], dtype=np.int64))
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
                raise CondenserError(f"cannot read CIFAR batch {path}: {exc!r}") from exc
        return np.concatenate(images), np.concatenate(labels)

    def download(self, base: Path, split: str) -> None:
        import torchvision.datasets as tvd  # lazy

        getattr(tvd, self._tv_class)(root=str(base), train=split == "train", download=True)
