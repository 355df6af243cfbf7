"""Per-channel and per-patch statistics of a batch of feature maps, grouped and optionally weighted.

A recover batch holds G independent statistics batches (one per IPC index, all classes each), laid out
group-major: sample g*B + b. Each group gets its own mean and biased variance over (samples, H, W), so
several IPC indices share one forward pass without their statistics mixing. Per-sample weights give the
statistics of a prefix subset of a joint batch (the multisize subset term) from the same forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _norm_weights(weights: torch.Tensor | None, groups: int, per_group: int, like: torch.Tensor) -> torch.Tensor:
    """[G, B] weights summing to 1 per group (uniform when None)."""
    if weights is None:
        return like.new_full((groups, per_group), 1.0 / per_group)
    w = weights.reshape(groups, per_group).to(like.dtype)
    return w / w.sum(1, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny)


def channel_stats(x: torch.Tensor, groups: int = 1, weights: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [G*B, C, H, W] (or [G*B, C]) -> mean, biased variance, each [G, C], over (B, H, W) per group."""
    n, c = x.shape[:2]
    xg = x.float().reshape(groups, n // groups, c, -1)  # [G, B, C, HW]
    w = _norm_weights(weights, groups, n // groups, xg)[..., None]  # [G, B, 1]
    mean = (w * xg.mean(3)).sum(1)  # [G, C]
    var = (w * (xg - mean[:, None, :, None]).pow(2).mean(3)).sum(1)
    return mean, var


def patch_stats(x: torch.Tensor, patch: int, groups: int = 1, weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per patch location over (samples, channels, patch pixels): [G, gh*gw].

    Maps whose side is not a multiple of `patch` are resized bilinearly up to the next multiple first
    (G-VBSM's construction), so every location covers the same number of pixels.
    """
    n, c, h, w_ = x.shape
    gh, gw = -(-h // patch), -(-w_ // patch)
    if (gh * patch, gw * patch) != (h, w_):
        x = F.interpolate(x, size=(gh * patch, gw * patch), mode="bilinear", align_corners=False)
    b = n // groups
    tiles = x.float().reshape(groups, b, c, gh, patch, gw, patch).permute(0, 1, 3, 5, 2, 4, 6)
    tiles = tiles.reshape(groups, b, gh * gw, c * patch * patch)  # [G, B, L, P]
    wt = _norm_weights(weights, groups, b, tiles)[..., None]  # [G, B, 1]
    mean = (wt * tiles.mean(3)).sum(1)  # [G, L]
    var = (wt * (tiles - mean[:, None, :, None]).pow(2).mean(3)).sum(1)
    return mean, var
