"""Torch twin of runtime/views.py: the reference semantics, written with F.interpolate on each crop.

The condenser's relabeller renders the views it shows the teacher with this function, and the device
replays them with the numpy version; tests/test_runtime.py checks that the two agree within 1e-5.
Public, because the condenser imports it (condenser -> runtime, never a private module). Importing it
imports torch, so `import runtime` never does: only torch users (the condenser, tests) import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from runtime.views import check_boxes


def _np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _crop_resize_flip(img: torch.Tensor, box: np.ndarray, flip: bool) -> torch.Tensor:
    t, left, h, w = (int(v) for v in box)
    out = F.interpolate(img[None, :, t:t + h, left:left + w], size=tuple(img.shape[1:]), mode="bilinear",
                        align_corners=False, antialias=False)[0]
    return out.flip(-1) if flip else out


def apply_views(images: torch.Tensor, records: Any, crop: Any, flip: Any, partner: Any,
                mix_box: Any) -> torch.Tensor:
    """Same contract as ``runtime.views.apply_views``; differentiable in ``images``, stays on its device."""
    if images.ndim != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {tuple(images.shape)}")
    recs = _np(records).astype(np.int64).reshape(-1)
    c, p, mb = check_boxes(_np(crop), _np(partner), _np(mix_box), images.shape[0],
                           tuple(images.shape[2:]))
    flips = _np(flip).astype(bool).reshape(-1)
    views = []
    for j, r in enumerate(recs):
        v = _crop_resize_flip(images[r], c[j], bool(flips[j]))
        if p[j] >= 0:
            other = _crop_resize_flip(images[p[j]], c[j], bool(flips[j]))
            t, left, h, w = (int(x) for x in mb[j])
            v = v.clone()
            v[:, t:t + h, left:left + w] = other[:, t:t + h, left:left + w]
        views.append(v)
    if not views:
        return images.new_zeros((0, *images.shape[1:]))
    return torch.stack(views)


def replay(images: torch.Tensor, views: Any, records: Any, view_index: Any) -> torch.Tensor:
    """Render view ``view_index[j]`` of record ``records[j]`` from a formats ``Views`` object."""
    r = _np(records).astype(np.int64).reshape(-1)
    v = _np(view_index).astype(np.int64).reshape(-1)
    return apply_views(images, r, np.asarray(views.crop)[r, v], np.asarray(views.flip)[r, v],
                       np.asarray(views.mix_partner)[r, v], np.asarray(views.mix_box)[r, v])


__all__ = ["apply_views", "replay"]
