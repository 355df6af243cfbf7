"""CutMix (Yun et al. 2019) on a batch with soft targets, as IDC/MDC use it (β = 1, p = 0.5).

With probability p, one box and one partner permutation are drawn for the whole batch: each
image's box region is replaced by the same region of its partner, and its target becomes
lam * own + (1 - lam) * partner's, where lam = 1 - box area / image area (the area actually
pasted, after clipping the box to the image). The box side is sqrt(1 - λ) of the image side
with λ ~ Beta(β, β) and a uniformly drawn centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from condenser.augment._rng import integers, permutation, uniform


@dataclass(frozen=True)
class CutMixDraw:
    """One CutMix draw for a batch; `box` uses the .mdc Views convention (top, left, height, width)."""

    perm: torch.Tensor  # int64 [B]: partner of each image
    box: tuple[int, int, int, int]
    lam: float  # weight of each image's own content and target


def draw_cutmix(
    batch_size: int,
    image_hw: tuple[int, int],
    beta: float = 1.0,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> CutMixDraw | None:
    """A draw, or None when this batch is not mixed (probability 1 - p).

    Every call consumes the same random numbers whatever the outcome, so a seeded run's later
    draws do not depend on p.
    """
    if beta <= 0:
        raise ValueError(f"cutmix beta must be > 0, got {beta}")
    dev = torch.device(device or "cpu")
    h, w = int(image_hw[0]), int(image_hw[1])
    u = float(uniform(1, generator, torch.device("cpu"))[0])
    seed = int(integers(0, 2**62, 1, generator, torch.device("cpu"))[0])
    cy = int(integers(0, h, 1, generator, torch.device("cpu"))[0])
    cx = int(integers(0, w, 1, generator, torch.device("cpu"))[0])
    perm = permutation(batch_size, generator, dev)
    if u >= p:
        return None
    lam0 = float(np.random.default_rng(seed).beta(beta, beta))  # torch's Beta takes no generator
    cut = math.sqrt(1.0 - lam0)
    ch, cw = int(h * cut), int(w * cut)
    top, bottom = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    left, right = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    box = (top, left, bottom - top, right - left)
    lam = 1.0 - box[2] * box[3] / (h * w)
    return CutMixDraw(perm=perm, box=box, lam=lam)


def apply_cutmix(
    x: torch.Tensor, targets: torch.Tensor, draw: CutMixDraw | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a draw to x [B, C, H, W] and targets [B, K]; differentiable w.r.t. both."""
    if targets.dim() != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(f"cutmix targets must be [B, K] probability rows, got {tuple(targets.shape)}")
    if draw is None:
        return x, targets
    top, left, bh, bw = draw.box
    perm = draw.perm.to(x.device)
    mask = torch.zeros(x.shape[-2:], dtype=torch.bool, device=x.device)
    mask[top : top + bh, left : left + bw] = True
    mixed = torch.where(mask, x[perm], x)
    mixed_targets = draw.lam * targets + (1.0 - draw.lam) * targets[perm.to(targets.device)]
    return mixed, mixed_targets


def cutmix(
    x: torch.Tensor,
    targets: torch.Tensor,
    beta: float = 1.0,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed (x, targets); the inputs unchanged when the batch is not mixed."""
    draw = draw_cutmix(x.shape[0], tuple(x.shape[-2:]), beta, p, generator, x.device)
    return apply_cutmix(x, targets, draw)
