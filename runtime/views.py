"""Numpy replay of soft-label views, so a device trains on exactly the pixels the teacher labelled.

A view of record r (docs/format.md, "Views") is, in this order:

1. crop   ``(top, left, height, width)`` in stored-image pixels. Boxes are **integers** (stored as
   float32 holding whole numbers) with ``0 <= top``, ``top + height <= H``, ``height >= 1`` (same for
   left/width). Non-integer boxes are rejected (:class:`~runtime.errors.ViewError`) rather than given a
   second, sub-pixel meaning that torch's crop-then-interpolate cannot express.
2. resize the cropped region to the full stored size ``(H, W)`` bilinearly with ``align_corners=False``
   and no antialiasing, i.e. exactly ``torch.nn.functional.interpolate(x[..., t:t+h, l:l+w], size=(H, W),
   mode="bilinear", align_corners=False, antialias=False)``: output pixel ``i`` samples source coordinate
   ``max((i + 0.5) * h / H - 0.5, 0)`` inside the crop, neighbours clamped to the crop's last row/column.
3. horizontal flip of the resized view when ``flip`` is set.
4. CutMix when ``mix_partner >= 0``: the partner record under the SAME crop, resize and flip replaces
   the pixels of ``mix_box`` ``(top, left, height, width)``, given in output-view pixels (integers,
   height/width may be 0, box inside the image).

``runtime.torch_views.apply_views`` is the torch twin with the same signature; the condenser's
relabeller calls it so teacher and device see identical views (tests/test_runtime.py checks parity).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from formats.formation import resize_weights
from runtime.errors import ViewError

_INT_TOL = 1e-3


def _as_int_boxes(boxes: np.ndarray, what: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rounded = np.rint(boxes)
    bad = np.flatnonzero(~np.isfinite(boxes).all(1) | (np.abs(boxes - rounded) > _INT_TOL).any(1))
    if bad.size:
        raise ViewError(f"{what} box #{bad[0]} {boxes[bad[0]].tolist()} is not a whole-pixel box "
                        "(views use integer boxes, see runtime/views.py)")
    return rounded.astype(np.int64)


def check_boxes(crop: np.ndarray, partner: np.ndarray, mix_box: np.ndarray, n_records: int,
                image_hw: tuple[int, int], where: str = "view") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate view parameters (flattened, one row per view) and return them as int64 arrays."""
    h_img, w_img = image_hw
    c = _as_int_boxes(crop, f"{where}: crop")
    bad = np.flatnonzero((c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 2] < 1) | (c[:, 3] < 1)
                         | (c[:, 0] + c[:, 2] > h_img) | (c[:, 1] + c[:, 3] > w_img))
    if bad.size:
        raise ViewError(f"{where}: crop box #{bad[0]} {c[bad[0]].tolist()} lies outside the "
                        f"{h_img}x{w_img} image or is empty")
    p = np.asarray(partner).reshape(-1).astype(np.int64)
    bad = np.flatnonzero((p < -1) | (p >= n_records))
    if bad.size:
        raise ViewError(f"{where}: mix partner #{bad[0]} = {p[bad[0]]} is outside the {n_records} "
                        "records of this prefix")
    m = _as_int_boxes(mix_box, f"{where}: mix")
    mixed = p >= 0
    bad = np.flatnonzero(mixed & ((m[:, 0] < 0) | (m[:, 1] < 0) | (m[:, 2] < 0) | (m[:, 3] < 0)
                                  | (m[:, 0] + m[:, 2] > h_img) | (m[:, 1] + m[:, 3] > w_img)))
    if bad.size:
        raise ViewError(f"{where}: mix box #{bad[0]} {m[bad[0]].tolist()} lies outside the "
                        f"{h_img}x{w_img} view")
    return c, p, m


def _crop_resize_flip(images: np.ndarray, records: np.ndarray, crop: np.ndarray,
                      flip: np.ndarray) -> np.ndarray:
    _, ch, h_img, w_img = images.shape
    y0, y1, wy0, wy1 = resize_weights(crop[:, 0], crop[:, 2], h_img)        # [m, H]
    x0, x1, wx0, wx1 = resize_weights(crop[:, 1], crop[:, 3], w_img)        # [m, W]
    # gather the four neighbours, then combine columns first and rows last, in torch's order
    b = records[:, None, None, None]
    cc = np.arange(ch)[None, :, None, None]
    r0, r1 = y0[:, None, :, None], y1[:, None, :, None]
    c0, c1 = x0[:, None, None, :], x1[:, None, None, :]
    ax0, ax1 = wx0[:, None, None, :], wx1[:, None, None, :]
    top = images[b, cc, r0, c0] * ax0 + images[b, cc, r0, c1] * ax1
    bottom = images[b, cc, r1, c0] * ax0 + images[b, cc, r1, c1] * ax1
    out = top * wy0[:, None, :, None] + bottom * wy1[:, None, :, None]
    flip = np.asarray(flip, dtype=bool).reshape(-1)
    if flip.any():
        out[flip] = out[flip][..., ::-1]
    return out.astype(np.float32, copy=False)


def apply_views(images: np.ndarray, records: Any, crop: Any, flip: Any, partner: Any,
                mix_box: Any) -> np.ndarray:
    """Render one view per row: ``records[j]`` under ``crop[j]``, ``flip[j]``, ``partner[j]``, ``mix_box[j]``.

    images: float32 [n, C, H, W]; records: int [m]; crop, mix_box: [m, 4]; flip: bool [m];
    partner: int [m] (-1 = no mix). Returns float32 [m, C, H, W].
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ViewError(f"images must be [n, C, H, W], got shape {images.shape}")
    records = np.asarray(records, dtype=np.int64).reshape(-1)
    n = images.shape[0]
    if records.size and (records.min() < 0 or records.max() >= n):
        raise ViewError(f"record index outside the {n} images of this prefix")
    c, p, mb = check_boxes(crop, partner, mix_box, n, images.shape[2:])
    if not (c.shape[0] == p.shape[0] == mb.shape[0] == records.shape[0]):
        raise ViewError("records, crop, flip, partner and mix_box must have one row per view")
    flip = np.asarray(flip, dtype=bool).reshape(-1)
    out = _crop_resize_flip(images, records, c, flip)
    mixed = np.flatnonzero(p >= 0)
    if mixed.size:
        other = _crop_resize_flip(images, p[mixed], c[mixed], flip[mixed])
        h_img, w_img = images.shape[2:]
        box = mb[mixed]
        rows = np.arange(h_img)[None, :]
        cols = np.arange(w_img)[None, :]
        in_r = (rows >= box[:, 0:1]) & (rows < box[:, 0:1] + box[:, 2:3])           # [k, H]
        in_c = (cols >= box[:, 1:2]) & (cols < box[:, 1:2] + box[:, 3:4])           # [k, W]
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]                         # [k, 1, H, W]
        out[mixed] = np.where(mask, other, out[mixed])
    return out


def replay(images: np.ndarray, views: Any, records: Any, view_index: Any) -> np.ndarray:
    """Render view ``view_index[j]`` of record ``records[j]`` from a formats ``Views`` object."""
    r = np.asarray(records, dtype=np.int64).reshape(-1)
    v = np.asarray(view_index, dtype=np.int64).reshape(-1)
    return apply_views(images, r, views.crop[r, v], views.flip[r, v], views.mix_partner[r, v],
                       views.mix_box[r, v])


def check_views(views: Any, n_records: int, image_hw: tuple[int, int]) -> None:
    """Validate every view of a prefix once at load, so training never meets a malformed box."""
    crop = np.asarray(views.crop)
    if crop.ndim != 3 or crop.shape[0] != n_records or crop.shape[2] != 4:
        raise ViewError(f"views.crop has shape {crop.shape}, expected [{n_records}, V, 4]")
    nv = crop.shape[1]
    for name in ("flip", "mix_partner", "mix_lam"):
        shape = np.shape(getattr(views, name))
        if tuple(shape) != (n_records, nv):
            raise ViewError(f"views.{name} has shape {shape}, expected ({n_records}, {nv})")
    if tuple(np.shape(views.mix_box)) != (n_records, nv, 4):
        raise ViewError(f"views.mix_box has shape {np.shape(views.mix_box)}, expected ({n_records}, {nv}, 4)")
    if np.ndim(views.targets) != 3 or np.shape(views.targets)[:2] != (n_records, nv):
        raise ViewError(f"views.targets has shape {np.shape(views.targets)}, expected ({n_records}, {nv}, K)")
    check_boxes(crop.reshape(-1, 4), np.asarray(views.mix_partner).reshape(-1),
                np.asarray(views.mix_box).reshape(-1, 4), n_records, image_hw, where="views")


__all__ = ["apply_views", "check_boxes", "check_views", "replay"]
