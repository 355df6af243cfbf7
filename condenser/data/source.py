"""Dataset sources: how one registered dataset finds, reads and (optionally) downloads its files."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from condenser.data.dataset import ImageDataset
from condenser.data.roots import candidate_dirs, download_root
from condenser.data.spec import DatasetSpec
from condenser.errors import DatasetNotFoundError
from runtime.data import DataRoot

SPLITS = ("train", "test")

IMAGEFOLDER_HINT = (
    "or use any class-per-folder image set as imagefolder:PATH "
    "(PATH/<class>/*.png, a test split held out; or PATH/train/<class>/ with PATH/test/<class>/ or val/)"
)


class DatasetSource(ABC):
    """A named dataset: its spec and how to load a split as an ImageDataset."""

    name: str

    @abstractmethod
    def spec(self, root: str | Path | None = None) -> DatasetSpec:
        """The dataset's spec; `root` matters only where the spec is read from the data."""

    @abstractmethod
    def load(self, split: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
        """The split ("train" or "test") in memory."""

    def require(self, split: str, root: str | Path | None = None, download: bool = False) -> None:
        """Raise DatasetNotFoundError now if `split` cannot be loaded (commands check before long work).

        The default loads it (decoded once per process, so the later load is free); file sources only
        look for their files.
        """
        self.load(split, root, download)

    def describe(self) -> dict:
        """What a build records about the data (its provenance): the name, plus where sources have choices
        that the name alone does not show (a held-out split's fraction and seed)."""
        return {"name": self.name}


class FileSource(DatasetSource):
    """A dataset stored as files under one of the searched roots (see condenser.data.roots)."""

    #: sub-directory names searched under every root, most specific first
    dirnames: tuple[str, ...] = ()

    def __init__(self, spec: DatasetSpec) -> None:
        self.name = spec.name
        self._spec = spec

    def spec(self, root: str | Path | None = None) -> DatasetSpec:
        return self._spec

    def spec_for(self, directory: Path) -> DatasetSpec:
        """Spec once the files are found; sources whose class names live in the data override it."""
        return self._spec

    @abstractmethod
    def files(self, split: str) -> str:
        """Human-readable list of the files a split needs (for the not-found message)."""

    @abstractmethod
    def present(self, directory: Path, split: str) -> bool:
        """Whether `directory` holds the split's files."""

    @abstractmethod
    def read(self, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [N, C, H, W], int64 [N]) from the files in `directory`."""

    def download(self, base: Path, split: str) -> None:
        raise DatasetNotFoundError(f"dataset {self.name!r} has no automatic download; see the hints")

    def hints(self, base: Path) -> list[str]:
        """Ways to get the data, most convenient first. `--download` exists on every command that loads
        a dataset (build, teacher, eval, bench, baseline)."""
        return [
            f"rerun with --download (needs network; in Python load_dataset({self.name!r}, download=True)); "
            f"files go under {base}",
            f"or put {self.files('train')} and {self.files('test')} in <root>/{self.dirnames[0]}/ "
            "(<root> = --data-root, $MULTISIZE_DATA or the user cache)",
            IMAGEFOLDER_HINT,
        ]

    def find(self, split: str, root: str | Path | None) -> tuple[Path | None, list[DataRoot]]:
        tried = candidate_dirs(self.dirnames, root)
        for cand in tried:
            if self.present(cand.path, split):
                return cand.path, tried
        return None, tried

    def require(self, split: str, root: str | Path | None = None, download: bool = False) -> None:
        self.resolve(split, root, download)

    def resolve(self, split: str, root: str | Path | None = None, download: bool = False) -> Path:
        """The directory holding the split, downloading first when allowed; else a clear error."""
        directory, tried = self.find(split, root)
        if directory is not None:
            return directory
        base = download_root(root)
        failure: Exception | None = None
        if download:
            try:
                base.mkdir(parents=True, exist_ok=True)
                self.download(base, split)
            except (OSError, RuntimeError, ValueError, ImportError) as exc:  # no network, bad archive
                failure = exc
            directory, tried = self.find(split, root)
            if directory is not None:
                return directory
        hints = self.hints(base)
        # first line: the problem and the first fix (the CLI prints only this line); then the details
        failed = f"; the download into {base} failed ({failure})" if failure else ""
        fix = "check the network or put the files in place" if failure else hints[0]
        lines = [f"dataset {self.name!r} ({split} split) not found in {len(tried)} places{failed}; fix: {fix}",
                 f"Looked for {self.files(split)} in"]
        lines += [f"  {c.path}  ({c.origin})" for c in tried]
        if download and not failure:
            lines.append(f"(downloaded into {base}, but the files are still missing)")
        lines.append("How to get it:")
        lines += [f"  - {h}" for h in hints]
        raise DatasetNotFoundError("\n".join(lines)) from failure

    def load(self, split: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
        return _read_cached(self, split, str(self.resolve(split, root, download)))


@functools.lru_cache(maxsize=8)
def _read_cached(source: FileSource, split: str, directory: str) -> ImageDataset:
    """Decode once per (source, split, directory) per process: repeated loads are free."""
    images, labels = source.read(Path(directory), split)
    spec = source.spec_for(Path(directory))
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        spec,
    )


def clear_file_cache() -> None:
    """Drop every dataset decoded from a registered source's files (condenser.data.clear_cache drops all)."""
    _read_cached.cache_clear()
