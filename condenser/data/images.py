"""Decode image files into one uint8 [N, C, H, W] array at a fixed size (for folder datasets)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from condenser.errors import CondenserError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
GRAY_MODES = frozenset({"1", "L", "I", "I;16", "F"})


def list_images(directory: Path) -> list[Path]:
    """Image files under `directory` (recursively), in sorted path order so loads are reproducible."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def probe(path: Path) -> tuple[int, int, int]:
    """(C, H, W) of one image: 1 channel for grayscale modes, else 3 (RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return (1 if im.mode in GRAY_MODES else 3, im.height, im.width)
    except OSError as exc:
        raise CondenserError(f"cannot read image {path}: {exc}") from exc


def decode_images(paths: Sequence[Path], shape: tuple[int, int, int]) -> np.ndarray:
    """Decode `paths` to uint8 [N, C, H, W].

    Images of another size are resized so the shorter side fits (bilinear, antialiased by PIL)
    and then centre-cropped: aspect ratio is kept, as in the usual ImageNet preprocessing.
    """
    from PIL import Image

    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    out = np.empty((len(paths), h, w, c), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                if im.size != (w, h):
                    scale = max(w / im.width, h / im.height)
                    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
                    im = im.resize((rw, rh), Image.Resampling.BILINEAR)
                    left, top = (rw - w) // 2, (rh - h) // 2
                    im = im.crop((left, top, left + w, top + h))
                out[i] = np.asarray(im, dtype=np.uint8).reshape(h, w, c)
        except OSError as exc:
            raise CondenserError(f"cannot decode image {path}: {exc}") from exc
    return out.transpose(0, 3, 1, 2).copy()


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 [N, C, H, W] in [0, 1] units, in chunks (no big float copy)."""
    c = images.shape[1]
    chunk = max(1, (1 << 22) // max(1, int(np.prod(images.shape[1:]))))
    s1 = np.zeros(c, dtype=np.float64)
    s2 = np.zeros(c, dtype=np.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].astype(np.float64) / 255.0
        s1 += block.sum(axis=(0, 2, 3))
        s2 += (block * block).sum(axis=(0, 2, 3))
    n = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel would divide by zero
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
