"""Recover-time augmentation: random resized crop, flip and a circular jitter, differentiable and batched.

SRe2L's "multi-crop optimisation": each step sees a random region of the images resized to full size,
so the teacher is matched on views like the ones it was trained on and only the cropped pixels move.
The reference draws one box and one flip for the whole batch (docs/methods.md); `per_image` draws one per
image. Crop and flip are one affine resampling (`grid_sample`), so both modes cost one batched op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RecoverAugConfig:
    crop_scale: tuple[float, float] = (0.08, 1.0)  # fraction of the image area (torchvision RRC default)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    per_image: bool = False  # one box/flip per image instead of one per batch (reference: per batch)
    flip: bool = True
    jitter: int = 4  # max circular shift in pixels per axis (SRe2L Tiny: 4, ImageNet: 32)


def crop_theta(n: int, cfg: RecoverAugConfig, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] affine maps from output to input coordinates (align_corners=False, [-1, 1] units)."""
    area = torch.empty(n).uniform_(*cfg.crop_scale, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator=generator)
    ratio = log_r.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the width / height
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * (1 - w) + w / 2) * 2 - 1
    cy = (torch.rand(n, generator=generator) * (1 - h) + h / 2) * 2 - 1
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def recover_augment(x: torch.Tensor, cfg: RecoverAugConfig, generator: torch.Generator,
                    allow_flip: bool = True) -> torch.Tensor:
    """x [N, C, H, W] -> one random view of every image (shared or per-image draw)."""
    n = x.shape[0]
    draws = n if cfg.per_image else 1
    theta = crop_theta(draws, cfg, cfg.flip and allow_flip, generator).to(x.device, x.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3) if draws == 1 else theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.jitter > 0:
        dy, dx = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=generator).tolist()
        out = torch.roll(out, shifts=(dy, dx), dims=(2, 3))
    return out
