"""Pixel encodings: normalized float32 images <-> stored uint8 / float16 / float32.

uint8 stores the de-normalized 0..255 pixel, so a stored image is a plain image; the header's
mean/std bring it back to the normalized space that training code works in.
"""

from __future__ import annotations

import numpy as np

from formats.errors import InvalidDataError

PIXEL_DTYPES = {"uint8": "uint8", "float16": "float16", "float32": "float32"}


def _stats(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32).reshape(1, channels, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, channels, 1, 1)
    return m, s


Stats = tuple[float, ...]


def encode_pixels(x: np.ndarray, encoding: str, mean: Stats, std: Stats) -> np.ndarray:
    """Normalized float images [n, C, H, W] -> stored array of the encoding's dtype."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InvalidDataError("images contain NaN or infinity")
    if encoding == "float32":
        return x.astype("<f4")
    if encoding == "float16":
        if x.size and float(np.abs(x).max()) > float(np.finfo(np.float16).max):
            raise InvalidDataError("images exceed the float16 range; use pixel_encoding='float32'")
        return x.astype("<f2")
    if encoding == "uint8":
        m, s = _stats(mean, std, x.shape[1])
        u = x * s  # one temporary, then in place: this runs over every pixel of the file
        u += m
        u *= 255.0
        np.rint(u, out=u)
        np.clip(u, 0, 255, out=u)
        return u.astype("<u1")
    raise InvalidDataError(f"pixel_encoding must be one of {sorted(PIXEL_DTYPES)}, got {encoding!r}")


def decode_pixels(a: np.ndarray, encoding: str, mean: Stats, std: Stats) -> np.ndarray:
    """Stored array [..., C, H, W] -> normalized float32 images of the same shape.

    Float encodings can hold NaN or infinity, which no image has: InvalidDataError naming the record.
    """
    if encoding != "uint8":
        bad = ~np.isfinite(a)
        if bad.any():
            record = int(np.nonzero(bad.reshape(-1, int(np.prod(a.shape[-3:])) or 1).any(axis=1))[0][0])
            raise InvalidDataError(f"images: record {record} holds NaN or infinity")
    if encoding == "uint8":
        m, s = _stats(mean, std, a.shape[-3])
        x = a.astype(np.float32)
        x /= np.float32(255.0)  # divide (not multiply by 1/255): bit-equal to (x / 255 - mean) / std
        x -= m
        x /= s
        return x
    return a.astype(np.float32)
