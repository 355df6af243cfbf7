"""Multi-formation for the decoupled methods (condense.factor f > 1): teacher-ranked real crops stitched f x f.

RDED's construction (Sun et al., "On the Diversity and Realism of Distilled Dataset", CVPR 2024, §3.2-3.3):
instead of recovering images from noise, every stored image is a mosaic of f x f real patches. Per class,
`candidates` random real images each give `crops` random square crops; a crop is scored by the teacher
pool's loss on its true class (-log of the pool's mean probability, the ensemble that also labels the
views) on the training image it becomes, i.e. after the format's round trip (area-downsampled to one patch,
decoded back to full size, docs/format.md §4.1). Each candidate keeps its best crop, the `ipc * f*f` best
candidates of the class are kept, and consecutive groups of f*f (best first) are stitched into one stored
image (condenser.methods.formation.encode). The nested order is then herding over stored images
(`herd_stored`): a stored image's feature is the mean of the first teacher's features over its f*f
decoded images, so the IPC-1 prefix holds the most typical stored image and each later one corrects what
the prefix misses (condenser/statmatch/order.py applies the same rule to recovered images).

Deviations from RDED, stated: the candidate count, crops per candidate and crop scale are module defaults
(`FormationConfig`), not settings of the tree; crops are square; no recovery step follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from condenser.data import ImageDataset
from condenser.errors import CondenserError
from condenser.methods.formation import check_factor, decode, encode, upsample
from condenser.methods.selection import embed
from condenser.relabel import teacher_probabilities
from condenser.statmatch.order import herd_by_features


class FormationError(CondenserError, ValueError):
    """Formed images cannot be built as asked (too few real images in a class, a bad crop scale)."""


@dataclass(frozen=True)
class FormationConfig:
    factor: int  # f: f x f patches per stored image
    candidates: int = 300  # real images drawn per class (RDED's default candidate pool per class)
    crops: int = 5  # random crops per candidate; its best one represents it (RDED: 5)
    scale: tuple[float, float] = (0.5, 1.0)  # crop area as a fraction of the image, drawn uniformly
    batch_size: int = 500  # crops per teacher forward pass
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise FormationError(f"formation crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if self.factor < 2 or self.candidates < 1 or self.crops < 1 or self.batch_size < 1:
            raise FormationError(f"formation needs factor >= 2 and candidates, crops, batch_size >= 1, got {self}")


@dataclass
class FormedClass:
    """The chosen crops of one class, best first: full-size crops, their real images and boxes, their losses."""

    crops: torch.Tensor  # [n, ch, H, W] normalised, each crop resized to the full image size
    sources: torch.Tensor  # [n] dataset indices
    boxes: torch.Tensor  # [n, 3] (top, left, side) in pixels of the source image
    losses: torch.Tensor  # [n] the pool's loss on the true class (ascending)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator
               ) -> torch.Tensor:
    """[n, 3] random square boxes (top, left, side): area fraction uniform in `scale` of the smaller side's square."""
    short = min(height, width)
    frac = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator)
    side = (frac.sqrt() * short).round().clamp(1, short).long()
    top = (torch.rand(n, generator=generator) * (height - side + 1)).floor().long()
    left = (torch.rand(n, generator=generator) * (width - side + 1)).floor().long()
    return torch.stack([top, left, side], 1)


def cut(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """images [n, ch, H, W], boxes [n, 3] -> the boxes' contents resized (bilinear) to H x W."""
    out_hw = tuple(images.shape[-2:])
    parts = [F.interpolate(img[None, :, top:top + s, left:left + s], size=out_hw, mode="bilinear",
                           align_corners=False)
             for img, (top, left, s) in zip(images, boxes.tolist(), strict=True)]
    return torch.cat(parts)


def round_trip(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The training image a full-size image becomes as one patch of a stored image: area-downsampled by `factor`
    (as `encode` does) and decoded back (the format's resize, docs/format.md §4.1)."""
    h, w = images.shape[-2] // factor, images.shape[-1] // factor
    return upsample(F.interpolate(images, size=(h, w), mode="area"), tuple(images.shape[-2:]))


@torch.no_grad()
def true_class_loss(models: Sequence[nn.Module], images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 500) -> torch.Tensor:
    """[n] -log p(true class) under the mean probability of `models` (the pool's labelling ensemble), on CPU."""
    device = next(models[0].parameters()).device
    out = []
    for s in range(0, images.shape[0], batch_size):
        probs = teacher_probabilities(models, images[s:s + batch_size].to(device), 1.0)
        picked = probs.gather(1, labels[s:s + batch_size].to(device)[:, None])[:, 0]
        out.append(-picked.clamp_min(1e-12).log().cpu())
    return torch.cat(out)


def rank_class(models: Sequence[nn.Module], train: ImageDataset, c: int, needed: int, cfg: FormationConfig,
               generator: torch.Generator) -> FormedClass:
    """The `needed` best crops of class `c`: one best crop per candidate image, then the best candidates."""
    available = int(train.class_indices(c).numel())
    if available < needed:
        raise FormationError(f"class {c} of {train.spec.name!r} has {available} real images; forming {needed} "
                             f"patches needs at least that many")
    idx = train.sample_class(c, min(available, max(cfg.candidates, needed)), generator=generator)
    real = train.normalized(idx)
    _, height, width = train.spec.image_shape
    boxes = crop_boxes(idx.numel() * cfg.crops, height, width, cfg.scale, generator)
    crops = cut(real.repeat_interleave(cfg.crops, 0), boxes)
    labels = torch.full((crops.shape[0],), c, dtype=torch.int64)
    losses = true_class_loss(models, round_trip(crops, cfg.factor), labels, cfg.batch_size).view(-1, cfg.crops)
    best_loss, best_crop = losses.min(1)  # per candidate
    keep = best_loss.argsort(stable=True)[:needed]  # best candidates first
    flat = keep * cfg.crops + best_crop[keep]
    return FormedClass(crops[flat], idx[keep], boxes[flat], best_loss[keep])


def stitch(classes: Sequence[FormedClass], ipc: int, factor: int) -> torch.Tensor:
    """Per-class crops (best first) -> IPC-major stored images [ipc*C, ch, H, W]: stored image i of class c holds
    that class's crops i*f*f .. i*f*f+f*f-1 as its row-major patches."""
    ff = factor * factor
    grouped = torch.stack([k.crops.view(ipc, ff, *k.crops.shape[1:]) for k in classes], 1)  # [ipc, C, ff, ...]
    return encode(grouped, factor).reshape(ipc * len(classes), *grouped.shape[3:])


@torch.no_grad()
def herd_stored(images: torch.Tensor, model: nn.Module, train: ImageDataset, factor: int, real_per_class: int = 256,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Herding order of stored images (IPC-major [N*C, ...]) on the mean feature of their decoded images;
    returns (reordered images, order [C, N])."""
    decoded = decode(images, factor)  # [N*C, f*f, ch, H, W]
    feats = embed(model, decoded.flatten(0, 1)).view(images.shape[0], factor * factor, -1).mean(1)
    return herd_by_features(images, feats, model, train, real_per_class, seed)


def _reorder_rows(per_class: torch.Tensor, order: torch.Tensor, ff: int) -> torch.Tensor:
    """Per-class rows [C, N*ff, ...] (groups of ff per stored image) in the stored images' new `order` [C, N]."""
    c, n = order.shape
    grouped = per_class.view(c, n, ff, *per_class.shape[2:])
    return grouped[torch.arange(c)[:, None], order].reshape(per_class.shape)


def formed_images(models: Sequence[nn.Module], order_model: nn.Module | None, train: ImageDataset, ipc: int,
                  cfg: FormationConfig, herding_real: int = 256) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(stored images [ipc*C, ...] IPC-major, labels, provenance) built from teacher-ranked real crops;
    `order_model` None keeps the ranking order (best-ranked stored image first), else herding on its features."""
    check_factor(cfg.factor, *train.spec.image_shape[1:])
    generator = torch.Generator().manual_seed(cfg.seed)
    needed = ipc * cfg.factor * cfg.factor
    classes = [rank_class(models, train, c, needed, cfg, generator) for c in range(train.spec.num_classes)]
    images = stitch(classes, ipc, cfg.factor)
    sources = torch.stack([k.sources for k in classes])
    boxes = torch.stack([k.boxes for k in classes])
    losses = torch.stack([k.losses for k in classes])
    record: dict = {"construction": "teacher-ranked real crops stitched f x f (RDED)", **asdict(cfg)}
    if order_model is not None:
        images, order = herd_stored(images, order_model, train, cfg.factor, herding_real, cfg.seed)
        ff = cfg.factor * cfg.factor
        sources, boxes, losses = (_reorder_rows(a, order, ff) for a in (sources, boxes, losses))
        record["herding_order"] = order.tolist()
    # stored image i of class c holds the patches sources[c][i*f*f : (i+1)*f*f], cut at boxes[c][...]
    record.update(sources=sources.tolist(), boxes=boxes.tolist(),
                  mean_loss=round(float(losses.mean()), 6), max_loss=round(float(losses.max()), 6))
    labels = torch.arange(train.spec.num_classes).repeat(ipc)
    return images, labels, record


__all__ = ["FormationConfig", "FormationError", "FormedClass", "crop_boxes", "cut", "formed_images", "herd_stored",
           "rank_class", "round_trip", "stitch", "true_class_loss"]
