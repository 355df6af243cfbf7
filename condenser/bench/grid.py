"""A picture of a condensed file: classes as rows, IPC order as columns, pixels denormalised.

numpy + formats + Pillow only, so looking at a file needs no torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import formats
from condenser.checkpoint import atomic_write_bytes
from condenser.errors import CondenserError


def to_uint8(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float [N, C, H, W] -> uint8 pixels, the inverse of (x/255 - mean)/std."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.clip(np.rint((images * s + m) * 255.0), 0, 255).astype(np.uint8)


def image_grid(pixels: np.ndarray, num_classes: int, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 [n*K, ch, H, W] in record order (r = i*K + c) -> [K*(H*s+pad)+pad, n*(W*s+pad)+pad(, ch)]."""
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise CondenserError(f"cannot draw images of shape {pixels.shape}; expected [N, 1 or 3, H, W]")
    if scale < 1 or pad < 0:
        raise CondenserError(f"scale must be >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    n_rec, ch, h, w = pixels.shape
    if n_rec % num_classes:
        raise CondenserError(f"{n_rec} records do not fill whole IPC blocks of {num_classes} classes")
    ipc = n_rec // num_classes
    tiles = pixels.transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)  # [N, H*s, W*s, ch]
    th, tw = h * scale, w * scale
    grid = np.full((num_classes * (th + pad) + pad, ipc * (tw + pad) + pad, ch), fill, dtype=np.uint8)
    for r in range(n_rec):
        i, c = divmod(r, num_classes)  # image number i of class c: row c, column i
        top, left = pad + c * (th + pad), pad + i * (tw + pad)
        grid[top : top + th, left : left + tw] = tiles[r]
    return grid[..., 0] if ch == 1 else grid


def png_bytes(grid: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def show_file(path: str | Path, out: str | Path, ipc: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Write the grid of `path`'s IPC-`ipc` prefix (default: every stored block) to the PNG `out`."""
    with formats.open_mdc(path) as reader:
        k = ipc or reader.blocks_present
        prefix = reader.read(k)
        pixels_meta = reader.header["pixels"]
    grid = image_grid(to_uint8(prefix.images, pixels_meta["mean"], pixels_meta["std"]), prefix.num_classes,
                      pad=pad, scale=scale)
    atomic_write_bytes(out, png_bytes(grid))
    return grid
