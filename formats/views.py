"""View records: validation and storage of the per-view augmentation parameters.

Floats are stored as float16 when that is lossless for the whole file (whole-pixel boxes are),
else float32; partner indices as int16 when they fit. The layout records the dtype chosen, so this
costs readers nothing and roughly halves the bytes per view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from formats.data import Views
from formats.errors import InvalidDataError

VIEW_ARRAYS = ("crop", "flip", "mix_partner", "mix_box", "mix_lam")
ALLOWED_DTYPES = {
    "crop": ("float16", "float32"),
    "flip": ("uint8",),
    "mix_partner": ("int16", "int32"),
    "mix_box": ("float16", "float32"),
    "mix_lam": ("float16", "float32"),
}
VIEW_SHAPES = {"crop": (4,), "flip": (), "mix_partner": (), "mix_box": (4,), "mix_lam": ()}


def _narrow_float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    h = a.astype(np.float16)
    return h.astype("<f2") if np.array_equal(h.astype(np.float32), a) else a.astype("<f4")


def _narrow_int(a: np.ndarray) -> np.ndarray:
    fits = a.size == 0 or (int(a.min()) >= -32768 and int(a.max()) <= 32767)
    return a.astype("<i2" if fits else "<i4")


def _shape(name: str, a: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != want:
        raise InvalidDataError(f"views.{name} must have shape {list(want)}, got {list(a.shape)}")
    return a


def check_partners(partner: np.ndarray, num_classes: int, first_record: int = 0, factor: int = 1) -> None:
    """-1 or a record whose IPC block is not after the record's own block (so it is in every prefix).

    With multi-formation (factor f > 1) partners are decoded records, f*f*C of them per block
    (docs/format.md §6).
    """
    n, v = partner.shape
    own_block = (first_record + np.arange(n)) // num_classes
    per_block = num_classes * factor * factor
    p = partner.astype(np.int64)
    bad = (p < -1) | ((p >= 0) & (p // per_block > own_block[:, None]))
    if bad.any():
        r, j = (int(t[0]) for t in np.nonzero(bad))
        what = "record" if factor == 1 else "decoded record"
        raise InvalidDataError(
            f"views.mix_partner[{first_record + r}, {j}] = {int(p[r, j])}: a partner must be -1 or a {what} "
            f"in block <= {int(own_block[r])} ({what} // {per_block})")


def check_boxes(crop: np.ndarray, partner: np.ndarray, box: np.ndarray, image_hw: tuple[int, int]) -> None:
    """Crops: whole pixels, height and width >= 1, inside the image. Mix boxes of mixed views: whole
    pixels, height and width >= 0, inside the view. (Whole pixels keep one meaning: torch's crop then
    interpolate.)"""
    h, w = image_hw
    crop = crop.astype(np.float64)
    t, left, ch, cw = (crop[..., i] for i in range(4))
    if ((crop != np.rint(crop)).any() or (ch < 1).any() or (cw < 1).any() or (t < 0).any() or (left < 0).any()
            or (t + ch > h).any() or (left + cw > w).any()):
        raise InvalidDataError(f"views.crop boxes must be whole pixels inside the {h}x{w} image, size >= 1")
    b = box[partner >= 0].astype(np.float64)
    if b.size and ((b != np.rint(b)).any() or (b < 0).any() or (b[:, 0] + b[:, 2] > h).any()
                   or (b[:, 1] + b[:, 3] > w).any()):
        raise InvalidDataError(f"views.mix_box of mixed views must be whole pixels inside the {h}x{w} view")


def encode_views(views: Views, n: int, num_classes: int, image_hw: tuple[int, int],
                 factor: int = 1) -> dict[str, np.ndarray]:
    """Validate writer input and return the stored view-parameter arrays, each [n, V, ...].

    factor f > 1: V = f*f groups of views, one per patch, partners decoded records (docs/format.md §6).
    """
    flip = np.asarray(views.flip)
    if flip.ndim != 2 or flip.shape[0] != n or flip.shape[1] < 1:
        raise InvalidDataError(f"views.flip must have shape [{n}, V] with V >= 1, got {list(flip.shape)}")
    v = flip.shape[1]
    if v % (factor * factor):
        raise InvalidDataError(f"views.flip has {v} views per stored image; formation factor {factor} needs a "
                               f"multiple of {factor * factor} (one group per patch)")
    crop = _shape("crop", views.crop, (n, v, 4)).astype(np.float32)
    box = _shape("mix_box", views.mix_box, (n, v, 4)).astype(np.float32)
    lam = _shape("mix_lam", views.mix_lam, (n, v)).astype(np.float32)
    partner = _shape("mix_partner", views.mix_partner, (n, v))
    if not np.issubdtype(partner.dtype, np.integer):
        raise InvalidDataError(f"views.mix_partner must be integers, got {partner.dtype}")
    for name, a in (("crop", crop), ("mix_box", box), ("mix_lam", lam)):
        if not np.isfinite(a).all():
            raise InvalidDataError(f"views.{name} contains NaN or infinity")
    check_partners(partner, num_classes, factor=factor)
    check_boxes(crop, partner, box, image_hw)
    if ((lam < 0) | (lam > 1)).any():
        raise InvalidDataError("views.mix_lam must lie in [0, 1]")
    return {
        "crop": _narrow_float(crop),
        "flip": np.asarray(flip).astype(bool).astype("<u1"),
        "mix_partner": _narrow_int(partner),
        "mix_box": _narrow_float(box),
        "mix_lam": _narrow_float(lam),
    }


def _first(bad: np.ndarray) -> tuple[int, int]:
    """(record, view) of the first True entry of an [n, V, ...] mask (for messages)."""
    r, j = (int(t[0]) for t in np.nonzero(bad.reshape(*bad.shape[:2], -1).any(axis=2)))
    return r, j


def decode_views(arrays: dict[str, np.ndarray], targets: Any, num_classes: int,
                 image_hw: tuple[int, int], factor: int = 1) -> Views:
    """Stored view arrays [n, V, ...] -> a Views with the API dtypes, after the same checks as the writer's.

    Blocks pass their checksum first, so this only fires on a file written wrong (or crafted), not on
    damage. `targets` is passed through: dense [n, V, K] or formats.targets.CompactTargets.
    """
    flip = arrays["flip"]
    if flip.size and int(flip.max()) > 1:
        raise InvalidDataError("views.flip holds a value other than 0 or 1")
    partner = arrays["mix_partner"].astype(np.int32)
    crop = arrays["crop"].astype(np.float32)
    box = arrays["mix_box"].astype(np.float32)
    lam = arrays["mix_lam"].astype(np.float32)
    for name, a in (("crop", crop), ("mix_box", box), ("mix_lam", lam)):
        if not np.isfinite(a).all():
            r, j = _first(~np.isfinite(a))
            raise InvalidDataError(f"views.{name}[{r}, {j}] holds NaN or infinity")
    if ((lam < 0) | (lam > 1)).any():
        r, j = _first((lam < 0) | (lam > 1))
        raise InvalidDataError(f"views.mix_lam[{r}, {j}] = {float(lam[r, j])} is outside [0, 1]")
    check_partners(partner, num_classes, factor=factor)
    check_boxes(crop, partner, box, image_hw)
    return Views(crop=crop, flip=flip.astype(bool), mix_partner=partner, mix_box=box, mix_lam=lam,
                 targets=targets)
