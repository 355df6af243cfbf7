"""Multi-formation decoding (docs/format.md §4.1): one stored image -> f*f full-size training images.

The numpy reference of the decode rule. Stored image r = i*C + c of a factor-f file is an f x f grid of
patches of H/f x W/f pixels; patch p (row-major) is resized to H x W with the separable 2-tap bilinear
rule of `resize_weights` (torch's align_corners=False), columns first, then rows, every product and sum
rounded to float32. condenser/methods/formation.py evaluates the same weights and the same operations
in torch, so server and device decode bit for bit alike (tests/test_formation.py).

Decoded order: decoded sample j = i*f*f + p of class c is decoded record d = j*C + c (IPC-major over
decoded samples), so the IPC-k prefix decodes to records 0 .. k*f*f*C - 1. With f > 1, views are stored
per stored record as f*f groups of views: view p*Vd + u of stored record r is view u of its patch p
(Vd = views per decoded image), and `mix_partner` holds a decoded record index.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np

from formats.data import Prefix, Views
from formats.errors import InvalidDataError
from formats.targets import CompactTargets


def check_factor(factor: int, image_hw: tuple[int, int]) -> int:
    """f as an int: >= 1 and dividing the image height and width (docs/format.md §4)."""
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)):
        raise InvalidDataError(f"formation_factor must be an integer, got {factor!r}")
    f = int(factor)
    h, w = image_hw
    if f < 1 or h % f or w % f:
        raise InvalidDataError(f"formation_factor {f} must be >= 1 and divide the image size {h}x{w}")
    return f


def resize_weights(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, ...]:
    """Per-row source indices and weights of a 1-d align_corners=False linear resize (docs/format.md §6).

    start, length: int [m] (the source span of each row); returns i0, i1 (int64 [m, out], absolute
    indices) and w0, w1 (float32 [m, out]). src = max(s * (o + 0.5) - 0.5, 0) with s = float32(length /
    out), the product and difference evaluated exactly and rounded once to float32 (as torch's CPU kernel
    does with a fused multiply-add); neighbours clamp to the span's last index.
    """
    length = np.asarray(length, dtype=np.int64)
    scale = (length.astype(np.float32) / np.float32(out)).astype(np.float64)
    dst = np.arange(out, dtype=np.float64) + 0.5
    src = np.maximum((scale[:, None] * dst[None, :] - 0.5).astype(np.float32), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), length[:, None] - 1)
    i1 = np.minimum(i0 + 1, length[:, None] - 1)
    w1 = (src - i0).astype(np.float32)
    w0 = np.float32(1.0) - w1
    start = np.asarray(start, dtype=np.int64)
    return start[:, None] + i0, start[:, None] + i1, w0, w1


@lru_cache(maxsize=32)
def upsample_weights(small: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1), each [out], of the resize of a whole `small`-long axis to `out` (read-only)."""
    arrays = tuple(a[0] for a in resize_weights(np.zeros(1), np.array([small]), out))
    for a in arrays:
        a.setflags(write=False)
    return arrays  # type: ignore[return-value]


def split_patches(images: np.ndarray, factor: int) -> np.ndarray:
    """Stored images [..., ch, H, W] -> patches [..., f*f, ch, H/f, W/f], patch p = (p // f, p % f)."""
    *lead, ch, height, width = images.shape
    h, w = height // factor, width // factor
    grid = images.reshape(*lead, ch, factor, h, factor, w)
    n = len(lead)
    order = (*range(n), n + 1, n + 3, n, n + 2, n + 4)  # lead, patch row, patch col, ch, h, w
    return grid.transpose(order).reshape(*lead, factor * factor, ch, h, w)


def upsample(patches: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """float32 [..., h, w] -> [..., H, W]: columns, then rows, each a 2-tap weighted sum (the format's rule)."""
    x = np.asarray(patches, dtype=np.float32)
    c0, c1, cw0, cw1 = upsample_weights(x.shape[-1], out_hw[1])
    r0, r1, rw0, rw1 = upsample_weights(x.shape[-2], out_hw[0])
    cols = np.take(x, c0, axis=-1) * cw0 + np.take(x, c1, axis=-1) * cw1
    return np.take(cols, r0, axis=-2) * rw0[:, None] + np.take(cols, r1, axis=-2) * rw1[:, None]


def decode_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Stored images float32 [n, ch, H, W] -> their decoded samples [n, f*f, ch, H, W]."""
    images = np.asarray(images, dtype=np.float32)
    if factor == 1:
        return images[:, None]
    return upsample(split_patches(images, factor), images.shape[-2:])


def to_decoded_order(per_stored: np.ndarray, num_classes: int) -> np.ndarray:
    """[k*C, f*f, ...] (stored record, patch) -> [k*f*f*C, ...] in decoded-record order d = (i*f*f + p)*C + c."""
    n, ff = per_stored.shape[:2]
    k = n // num_classes
    a = per_stored.reshape(k, num_classes, ff, *per_stored.shape[2:]).swapaxes(1, 2)
    return a.reshape(k * ff * num_classes, *per_stored.shape[2:])


def to_stored_order(per_decoded: np.ndarray, num_classes: int, factor: int) -> np.ndarray:
    """The inverse of `to_decoded_order`: [k*f*f*C, ...] -> [k*C, f*f, ...]."""
    ff = factor * factor
    k = per_decoded.shape[0] // (ff * num_classes)
    a = per_decoded.reshape(k, ff, num_classes, *per_decoded.shape[1:]).swapaxes(1, 2)
    return a.reshape(k * num_classes, ff, *per_decoded.shape[1:])


def stored_record(decoded: np.ndarray, num_classes: int, factor: int) -> np.ndarray:
    """The stored record that decoded record d comes from: (d // (f*f*C)) * C + d % C."""
    d = np.asarray(decoded, dtype=np.int64)
    return d // (factor * factor * num_classes) * num_classes + d % num_classes


def _regroup_views(a: np.ndarray, num_classes: int, factor: int, to_decoded: bool) -> np.ndarray:
    """One view array between the stored [k*C, f*f*Vd, ...] and the decoded [k*f*f*C, Vd, ...] layout."""
    ff = factor * factor
    if to_decoded:
        n, v = a.shape[:2]
        return to_decoded_order(a.reshape(n, ff, v // ff, *a.shape[2:]), num_classes)
    grouped = to_stored_order(a, num_classes, factor)
    return grouped.reshape(grouped.shape[0], -1, *a.shape[2:])


def _regroup_targets(targets: Any, num_classes: int, factor: int, to_decoded: bool) -> Any:
    """Targets alongside their views: dense arrays move; CompactTargets keep their codec and move rows."""
    if not isinstance(targets, CompactTargets):
        return _regroup_views(np.asarray(targets), num_classes, factor, to_decoded)
    n, v, _ = targets.shape
    rows = _regroup_views(np.arange(n * v).reshape(n, v), num_classes, factor, to_decoded)
    moved = {name: a[rows.reshape(-1)] for name, a in targets.arrays.items()}
    return CompactTargets(targets.codec, targets.params, moved, rows.shape[1], targets.max_bytes)


def regroup_views(views: Views, num_classes: int, factor: int, *, to_decoded: bool) -> Views:
    """Views between the stored layout (what the file holds) and the decoded one (one row per training image).

    The stored layout has f*f*Vd views per stored record (view p*Vd + u belongs to patch p), the decoded
    one Vd views per decoded record; partners are decoded record indices in both. f = 1: unchanged.
    """
    if factor == 1:
        return views
    ff = factor * factor
    if to_decoded and views.num_views % ff:
        raise InvalidDataError(f"{views.num_views} views per stored image do not split into {ff} patches")
    moved = {name: _regroup_views(np.asarray(getattr(views, name)), num_classes, factor, to_decoded)
             for name in ("crop", "flip", "mix_partner", "mix_box", "mix_lam")}
    return Views(targets=_regroup_targets(views.targets, num_classes, factor, to_decoded), **moved)


def decode_prefix(prefix: Prefix) -> Prefix:
    """The prefix as training images: k*f*f*C decoded records, labels d % C, views in the decoded layout.

    `stored_images` keeps the stored ones. A factor-1 prefix is returned with stored_images = images.
    """
    f, c = prefix.formation_factor, prefix.num_classes
    if f == 1:
        return replace(prefix, stored_images=prefix.images)
    images = to_decoded_order(decode_images(prefix.images, f), c)
    labels = np.tile(np.arange(c, dtype=np.int64), images.shape[0] // c)
    views = None if prefix.views is None else regroup_views(prefix.views, c, f, to_decoded=True)
    return replace(prefix, images=images, labels=labels, views=views, stored_images=prefix.images)


__all__ = ["check_factor", "decode_images", "decode_prefix", "regroup_views", "resize_weights",
           "split_patches", "stored_record", "to_decoded_order", "to_stored_order", "upsample",
           "upsample_weights"]
