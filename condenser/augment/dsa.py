"""DSA: differentiable siamese augmentation (Zhao & Bilen 2021), batched, in pure torch.

Policy for a strategy string such as "color_crop_cutout_flip_scale_rotate" (the IDC/MDC
reading of DSA, MDC paper Appendix B.1 "Augmentation"):

1. color   (if listed): brightness, then saturation, then contrast, always applied;
2. flip    (if listed and the dataset allows it): horizontal flip with probability 0.5;
3. one geometric op drawn uniformly among those listed of {crop, scale, rotate}, resampled
   once with affine_grid/grid_sample (bilinear, zero padding, align_corners=False);
4. cutout  (if listed): one zeroed square of side `cutout * size`, always applied.

Zero is the dataset mean: images are normalised. Per-sample mode (`__call__`) draws every
parameter, including which geometric op, independently for each image (DSA/IDC pick the op
once per call; the per-image distribution is the same). `siamese` draws once and applies that
draw to every image of every batch (DSA's shared seed, IDC's batch=True).
Constants are DSA's: scale 1.2, rotate ±15°, crop pad 12.5 % (integer shifts), cutout 0.5,
brightness ±0.5, saturation ×[0, 2), contrast ×[0.5, 1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from condenser.augment._rng import integers, uniform
from condenser.errors import UnknownNameError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
GEOMETRIC = ("crop", "scale", "rotate")


@dataclass
class DSAConfig:
    """Which ops (underscore-joined) and their strengths; defaults are DSA's."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    scale: float = 1.2  # each axis scaled by a factor in [1/scale, scale]
    rotate: float = 15.0  # degrees, uniform in [-rotate, rotate]
    crop_pad: float = 0.125  # integer shift up to round(pad * size) pixels per axis
    cutout: float = 0.5  # side of the erased square, fraction of the image side
    brightness: float = 1.0  # additive shift uniform in [-b/2, b/2)
    saturation: float = 2.0  # factor uniform in [0, s)
    contrast: float = 0.5  # factor uniform in [c, c + 1)
    flip_p: float = 0.5

    def ops(self) -> tuple[str, ...]:
        """The listed ops, validated; "" or "none" means no augmentation."""
        names = [] if self.strategy.lower() in ("", "none") else self.strategy.split("_")
        for name in names:
            if name not in OPS:
                raise UnknownNameError(
                    f"unknown augmentation {name!r} in strategy {self.strategy!r}; known: {', '.join(OPS)}"
                )
        return tuple(names)


@dataclass(frozen=True)
class DSAParams:
    """One draw. Leading dim n is the batch size, or 1 for a draw shared by every image."""

    brightness: torch.Tensor | None = None  # [n] additive shift
    saturation: torch.Tensor | None = None  # [n] factor
    contrast: torch.Tensor | None = None  # [n] factor
    flip: torch.Tensor | None = None  # [n] bool
    theta: torch.Tensor | None = None  # [n, 2, 3] affine map, output -> input, normalised coords
    geometric: torch.Tensor | None = None  # [n] index into DSA.geometric_ops (for inspection)
    cutout: torch.Tensor | None = None  # [n, 4] int64 (top, left, bottom, right), may exceed the image


class DSA:
    """Batched differentiable augmentation with per-sample and siamese draws (see module doc)."""

    def __init__(self, cfg: DSAConfig | None = None, allow_flip: bool = True) -> None:
        self.cfg = cfg if cfg is not None else DSAConfig()
        ops = self.cfg.ops()
        self.allow_flip = allow_flip
        self.color = "color" in ops
        self.flip = "flip" in ops and allow_flip
        self.cutout = "cutout" in ops
        self.geometric_ops = tuple(op for op in GEOMETRIC if op in ops)

    def __repr__(self) -> str:
        return f"DSA(strategy={self.cfg.strategy!r}, allow_flip={self.allow_flip})"

    # --- drawing ---------------------------------------------------------------------------
    def draw(
        self,
        n: int,
        image_hw: tuple[int, int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> DSAParams:
        """Parameters for n images of size (H, W); the draw order is fixed, so seeds reproduce."""
        cfg, dev = self.cfg, torch.device(device or "cpu")
        h, w = int(image_hw[0]), int(image_hw[1])
        out: dict[str, torch.Tensor] = {}
        if self.color:
            out["brightness"] = (uniform(n, generator, dev) - 0.5) * cfg.brightness
            out["saturation"] = uniform(n, generator, dev) * cfg.saturation
            out["contrast"] = uniform(n, generator, dev) + cfg.contrast
        if self.flip:
            out["flip"] = uniform(n, generator, dev) < cfg.flip_p
        if self.geometric_ops:
            thetas = [self._theta(op, n, h, w, generator, dev) for op in self.geometric_ops]
            choice = integers(0, len(thetas), n, generator, dev)
            stacked = torch.stack(thetas)  # [k, n, 2, 3]
            out["theta"] = stacked[choice, torch.arange(n, device=dev)]
            out["geometric"] = choice
        if self.cutout:
            ch, cw = int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)
            cy = integers(0, h + (1 - ch % 2), n, generator, dev)
            cx = integers(0, w + (1 - cw % 2), n, generator, dev)
            top, left = cy - ch // 2, cx - cw // 2
            out["cutout"] = torch.stack([top, left, top + ch, left + cw], dim=1)
        return DSAParams(**out)

    def _theta(
        self, op: str, n: int, h: int, w: int, generator: torch.Generator | None, dev: torch.device
    ) -> torch.Tensor:
        cfg = self.cfg
        zero, one = torch.zeros(n, device=dev), torch.ones(n, device=dev)
        if op == "crop":  # integer pixel shifts: grid points land exactly on pixel centres
            sy, sx = int(h * cfg.crop_pad + 0.5), int(w * cfg.crop_pad + 0.5)
            ty = integers(-sy, sy + 1, n, generator, dev).float() * (2.0 / h)
            tx = integers(-sx, sx + 1, n, generator, dev).float() * (2.0 / w)
            rows = [[one, zero, tx], [zero, one, ty]]
        elif op == "scale":
            lo, hi = 1.0 / cfg.scale, cfg.scale
            ax = uniform(n, generator, dev) * (hi - lo) + lo
            ay = uniform(n, generator, dev) * (hi - lo) + lo
            rows = [[ax, zero, zero], [zero, ay, zero]]
        else:  # rotate, in pixel space (aspect-corrected for non-square images)
            angle = (uniform(n, generator, dev) - 0.5) * 2 * cfg.rotate * math.pi / 180
            cos, sin = torch.cos(angle), torch.sin(angle)
            rows = [[cos, -sin * (h / w), zero], [sin * (w / h), cos, zero]]
        return torch.stack([torch.stack(r, dim=1) for r in rows], dim=1)  # [n, 2, 3]

    # --- applying ---------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """Apply a draw to x [B, C, H, W] (float); differentiable w.r.t. x."""
        b = x.shape[0]
        dev = x.device
        if params.brightness is not None:
            x = x + _col(params.brightness, dev, x.dtype)
        if params.saturation is not None:
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * _col(params.saturation, dev, x.dtype) + m
        if params.contrast is not None:
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * _col(params.contrast, dev, x.dtype) + m
        if params.flip is not None:
            x = torch.where(_col(params.flip, dev, torch.bool), x.flip(3), x)
        if params.theta is not None:
            theta = params.theta.to(device=dev, dtype=x.dtype).expand(b, 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if params.cutout is not None:
            box = params.cutout.to(dev)
            ys = torch.arange(x.shape[2], device=dev)
            xs = torch.arange(x.shape[3], device=dev)
            in_y = (ys >= box[:, 0:1]) & (ys < box[:, 2:3])  # [n, H]
            in_x = (xs >= box[:, 1:2]) & (xs < box[:, 3:4])  # [n, W]
            keep = ~(in_y[:, None, :, None] & in_x[:, None, None, :])
            x = x * keep.to(x.dtype)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample random draw (network training, evaluation)."""
        return self.apply(x, self.draw(x.shape[0], x.shape[-2:], generator, x.device))

    def siamese(
        self, *batches: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """ONE draw applied to every image of every batch (real and synthetic alike, for matching)."""
        if not batches:
            return ()
        hw = tuple(batches[0].shape[-2:])
        for b in batches:
            if tuple(b.shape[-2:]) != hw:
                raise ValueError(f"siamese batches must share image size; got {hw} and {tuple(b.shape[-2:])}")
        params = self.draw(1, hw, generator, batches[0].device)
        return tuple(self.apply(b, params) for b in batches)


def _col(v: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return v.to(device=device, dtype=dtype).view(-1, 1, 1, 1)
