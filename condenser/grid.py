"""A picture of a condensed file: classes as rows, IPC order as columns, pixels denormalised.

numpy + formats + Pillow only (no torch, and outside condenser.bench, whose package imports torch), so
`condenser show` starts in well under a second. Rows are labelled with the class names and columns with
the IPC index k (column k is image number k of every class: the images the IPC-k prefix adds).
A multi-formation file (docs/format.md §4.1) is drawn as stored (each tile an f x f grid of patches), or,
decoded, with one column per training image, labelled `i.p` (patch p of stored image i).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import formats
from condenser.errors import CondenserError
from formats.atomic import atomic_write_bytes

TEXT_GAP = 4  # pixels between a label and the images
MAX_NAME_CHARS = 24


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


def _label(name: object) -> str:
    """A header's class name as drawable text: latin-1 printable characters (what every Pillow default font
    draws), at most MAX_NAME_CHARS of them; anything else becomes '?'."""
    text = "".join(ch if ch.isprintable() and ord(ch) < 256 else "?" for ch in str(name))
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 2] + ".."


def column_labels(columns: int, factor: int = 1, decoded: bool = False) -> list[str]:
    """The IPC index 1..n of every column, or for decoded training images `i.p`: patch p of stored image i."""
    if not decoded or factor == 1:
        return [str(i + 1) for i in range(columns)]
    ff = factor * factor
    return [f"{i // ff + 1}.{i % ff + 1}" for i in range(columns)]


def labelled_grid(grid: np.ndarray, class_names: Sequence[str], tile: tuple[int, int], pad: int,
                  columns: Sequence[str] | None = None) -> np.ndarray:
    """`grid` with the class names left of the rows and `columns` (default: the IPC index 1..n) above the
    columns."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = [_label(n) for n in class_names]
    text_h = max(font.getbbox("Ag0")[3], 1)
    name_w = max(int(font.getlength(n)) for n in names)
    th, tw = tile
    ipc = (grid.shape[1] - pad) // (tw + pad)
    columns = list(columns) if columns is not None else column_labels(ipc)
    left, top = name_w + 2 * TEXT_GAP, text_h + 2 * TEXT_GAP
    colour = 0 if grid.ndim == 2 else (0, 0, 0)
    canvas = Image.new("L" if grid.ndim == 2 else "RGB", (left + grid.shape[1], top + grid.shape[0]), 255)
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(names):
        y = top + pad + c * (th + pad) + (th - text_h) // 2
        draw.text((TEXT_GAP, y), name, fill=colour, font=font)
    pitch = tw + pad
    widest = max(font.getlength(label) for label in columns)
    every = max(1, math.ceil((widest + TEXT_GAP) / pitch))  # no overlapping numbers
    for i in range(0, ipc, every):
        label = columns[i]
        x = left + pad + i * pitch + (tw - int(font.getlength(label))) // 2
        draw.text((x, TEXT_GAP), label, fill=colour, font=font)
    return np.asarray(canvas)


def png_bytes(grid: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def show_file(path: str | Path, out: str | Path, ipc: int | None = None, pad: int = 2, scale: int = 1,
              labels: bool = True, decoded: bool = False) -> np.ndarray:
    """Write the grid of `path`'s IPC-`ipc` prefix (default: every stored block) to the PNG `out`: its stored
    images, or with `decoded` the training images they decode to (one column per decoded sample)."""
    with formats.open_mdc(path) as reader:
        k = ipc or reader.blocks_present
        prefix = reader.read(k, formation="decoded" if decoded else "stored")
        pixels_meta = reader.header["pixels"]
        class_names = reader.spec.class_names
    pixels = to_uint8(prefix.images, pixels_meta["mean"], pixels_meta["std"])
    grid = image_grid(pixels, prefix.num_classes, pad=pad, scale=scale)
    if labels:
        columns = column_labels(len(prefix) // prefix.num_classes, prefix.formation_factor, decoded)
        grid = labelled_grid(grid, class_names, (pixels.shape[2] * scale, pixels.shape[3] * scale), pad, columns)
    atomic_write_bytes(out, png_bytes(grid))
    return grid
