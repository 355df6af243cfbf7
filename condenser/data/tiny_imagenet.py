"""Tiny-ImageNet (200 classes, 3x64x64) in its released folder layout (tiny-imagenet-200/).

train/<wnid>/images/*.JPEG (500 per class) is the train split; the labelled val/ split
(val/images + val_annotations.txt, 50 per class) serves as "test", as is usual, since the
official test/ has no labels. Classes are the sorted wnids; their names come from words.txt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from condenser.data.images import decode_images, list_images
from condenser.data.source import FileSource
from condenser.data.spec import DatasetSpec
from condenser.errors import CondenserError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class TinyImageNetSource(FileSource):
    def __init__(self, spec: DatasetSpec) -> None:
        super().__init__(spec)
        self.dirnames = ("tiny-imagenet-200", "tiny-imagenet/tiny-imagenet-200", "tiny-imagenet")

    def files(self, split: str) -> str:
        return (
            "wnids.txt, train/<wnid>/images/*.JPEG"
            if split == "train"
            else "wnids.txt, val/val_annotations.txt"
        )

    def present(self, directory: Path, split: str) -> bool:
        if not (directory / "wnids.txt").is_file():
            return False
        return (
            (directory / "train").is_dir()
            if split == "train"
            else (directory / "val/val_annotations.txt").is_file()
        )

    def spec(self, root: str | Path | None = None) -> DatasetSpec:
        """Class names come from the data (words.txt); without the data, numbered placeholders."""
        directory, _ = self.find("train", root)
        return self.spec_for(directory) if directory is not None else self._spec

    def wnids(self, directory: Path) -> list[str]:
        wnids = sorted({w.strip() for w in (directory / "wnids.txt").read_text().split() if w.strip()})
        if len(wnids) != self._spec.num_classes:
            raise CondenserError(f"{directory / 'wnids.txt'} lists {len(wnids)} classes, expected 200")
        return wnids

    def spec_for(self, directory: Path) -> DatasetSpec:
        words: dict[str, str] = {}
        words_file = directory / "words.txt"
        if words_file.is_file():
            for line in words_file.read_text().splitlines():
                wnid, _, text = line.partition("\t")
                words[wnid] = text.split(",")[0].strip()
        names = tuple(words.get(w) or w for w in self.wnids(directory))
        if len(set(names)) != len(names):  # some first synonyms repeat; keep names unique
            names = tuple(f"{n} ({w})" for n, w in zip(names, self.wnids(directory), strict=True))
        s = self._spec
        return DatasetSpec(s.name, s.num_classes, names, s.image_shape, s.mean, s.std, s.allow_flip)

    def read(self, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        index = {w: i for i, w in enumerate(self.wnids(directory))}
        paths: list[Path] = []
        labels: list[int] = []
        if split == "train":
            for wnid in index:
                files = list_images(directory / "train" / wnid)
                paths += files
                labels += [index[wnid]] * len(files)
        else:
            for line in (directory / "val/val_annotations.txt").read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    paths.append(directory / "val/images" / parts[0])
                    labels.append(index[parts[1]])
        if not paths:
            raise CondenserError(f"{directory}: no Tiny-ImageNet {split} images found")
        return decode_images(paths, self._spec.image_shape), np.asarray(labels, dtype=np.int64)

    def download(self, base: Path, split: str) -> None:
        from torchvision.datasets.utils import download_and_extract_archive  # lazy

        download_and_extract_archive(URL, download_root=str(base))
