"""Nested order for independently recovered images: herding on teacher features.

Recovered images are exchangeable within a class (each IPC index is its own batch), so the order is free
to choose. Herding picks, greedily, the image whose addition brings the prefix's mean feature closest to
the class mean of *real* features, so the IPC-1 prefix holds the most typical image and each later image
corrects what the prefix misses. Batched over classes: one step per prefix size.
"""

from __future__ import annotations

import torch
from torch import nn

from condenser.data import ImageDataset
from condenser.methods.selection import embed, herding_order


@torch.no_grad()
def real_class_means(model: nn.Module, train: ImageDataset, per_class: int, seed: int = 0) -> torch.Tensor:
    """[C, D] mean embedding of up to `per_class` random real images of each class."""
    g = torch.Generator().manual_seed(seed)
    c = train.spec.num_classes
    idx = torch.cat([train.sample_class(k, min(per_class, len(train.class_indices(k))), generator=g)
                     for k in range(c)])
    feats = embed(model, train.normalized(idx))
    labels = train.labels[idx].to(feats.device)
    sums = torch.zeros(c, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=c).clamp_min(1).to(feats.dtype)
    return sums / counts[:, None]


def apply_order(images: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """IPC-major images [N*C, ...] -> the same images with image i of class c := old image order[c, i]."""
    c, n = order.shape
    x = images.view(n, c, *images.shape[1:])
    return x[order.t().cpu(), torch.arange(c)].reshape(images.shape)


def herd(images: torch.Tensor, model: nn.Module, train: ImageDataset, real_per_class: int = 256, seed: int = 0
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder IPC-major `images` by herding on `model`'s features; returns (images, order [C, N])."""
    return herd_by_features(images, embed(model, images), model, train, real_per_class, seed)


def herd_by_features(images: torch.Tensor, feats: torch.Tensor, model: nn.Module, train: ImageDataset,
                     real_per_class: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder IPC-major `images` by herding their features `feats` [N*C, D] towards the real class means of
    `model`; returns (images, order [C, N])."""
    c = train.spec.num_classes
    n = images.shape[0] // c
    feats = feats.view(n, c, -1).transpose(0, 1)  # [C, N, D]
    order = herding_order(feats, real_class_means(model, train, real_per_class, seed).to(feats.device))
    return apply_order(images, order), order.cpu()
