"""Relabel: soft-label views from the teacher(s) for the final synthetic images.

A view is an augmentation of one stored image (an integer crop box resized back to full size, an
optional flip, an optional CutMix partner) plus the teacher's output on exactly those pixels. Storing
the parameters with the label lets a device replay the views the teacher saw, with no coupling to a
sampler seed or batch size (SRe2L's FKD labels, SRe2L paper §2 "Relabel", are tied to both).

Nesting: a record's CutMix partner is drawn from IPC blocks up to its own, so every prefix that holds
a record also holds its partner. View 0 of every record is the plain image (its "hard" soft label).

Multi-formation (factor f > 1): the views are taken of the decoded training images (what the student
sees; formats/formation.py order, f*f*C of them per block), partners among the decoded images of blocks up
to the record's own, and the views are returned in the file's layout: f*f*V per stored image
(docs/format.md §6).

Under torchrun every rank draws the same view parameters (cheap, one generator) and labels a contiguous
share of the teacher batches; the targets are gathered on every rank. The batches are the ones a single
process runs, so the labels are bit-identical to a single-process relabel (on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import formats
from condenser.distributed import DistContext, current
from condenser.methods.formation import decode
from condenser.progress import track
from formats import Views
from formats.formation import regroup_views, to_decoded_order
from runtime.torch_views import apply_views


@dataclass(frozen=True)
class RelabelConfig:
    views: int = 10
    crop_scale: tuple[float, float] = (0.5, 1.0)  # fraction of the image area kept by a crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of a crop
    flip: bool = True
    mix_p: float = 0.5  # probability that a view is CutMixed with a partner
    temperature: float = 1.0
    batch_size: int = 256
    seed: int = 0


def _crop_boxes(n: int, h: int, w: int, cfg: RelabelConfig, g: torch.Generator) -> torch.Tensor:
    """Random-resized-crop boxes (top, left, height, width) in whole pixels."""
    area = torch.empty(n).uniform_(*cfg.crop_scale, generator=g) * h * w
    log_r = torch.empty(n).uniform_(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator=g)
    ratio = torch.exp(log_r)
    ch = torch.sqrt(area / ratio).round().clamp(1, h)
    cw = torch.sqrt(area * ratio).round().clamp(1, w)
    top = torch.floor(torch.rand(n, generator=g) * (h - ch + 1)).clamp(max=h - ch)
    left = torch.floor(torch.rand(n, generator=g) * (w - cw + 1)).clamp(max=w - cw)
    return torch.stack([top, left, ch, cw], dim=1)


def _mix_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """CutMix boxes with lam ~ Beta(1, 1) = U(0, 1): side = sqrt(1 - lam) of the image, clipped."""
    cut = torch.sqrt(1.0 - torch.rand(n, generator=g))
    bh, bw = (cut * h).round(), (cut * w).round()
    cy = torch.floor(torch.rand(n, generator=g) * h)
    cx = torch.floor(torch.rand(n, generator=g) * w)
    top = (cy - bh // 2).clamp(0, h)
    left = (cx - bw // 2).clamp(0, w)
    bottom = (cy + bh - bh // 2).clamp(0, h)
    right = (cx + bw - bw // 2).clamp(0, w)
    return torch.stack([top, left, bottom - top, right - left], dim=1)


def sample_view_params(num_records: int, block_records: int, image_hw: tuple[int, int], cfg: RelabelConfig,
                       generator: torch.Generator) -> dict[str, np.ndarray]:
    """View parameters for every record (IPC-major, `block_records` per IPC block: C, or f*f*C decoded
    records), view 0 being the identity view."""
    h, w = image_hw
    v = cfg.views
    n = num_records * v
    crop = _crop_boxes(n, h, w, cfg, generator).view(num_records, v, 4)
    flip = (torch.rand(n, generator=generator) < 0.5).view(num_records, v) if cfg.flip \
        else torch.zeros(num_records, v, dtype=torch.bool)
    # Partner: uniform over the records of blocks 0..own block, excluding the record itself.
    records = torch.arange(num_records).repeat_interleave(v)
    pool = (records // block_records + 1) * block_records  # records [0, pool) are in every prefix with r
    draw = torch.floor(torch.rand(n, generator=generator) * (pool - 1)).long()
    partner = draw + (draw >= records).long()  # skip r itself
    use_mix = (torch.rand(n, generator=generator) < cfg.mix_p) & (pool > 1)
    partner = torch.where(use_mix, partner, torch.full_like(partner, -1)).view(num_records, v)
    box = _mix_boxes(n, h, w, generator).view(num_records, v, 4)
    box = torch.where(partner[..., None] >= 0, box, torch.zeros_like(box))
    lam = 1.0 - box[..., 2] * box[..., 3] / (h * w)
    # The identity view first: the plain image, labelled as is.
    crop[:, 0] = torch.tensor([0.0, 0.0, h, w])
    flip[:, 0] = False
    partner[:, 0] = -1
    box[:, 0] = 0.0
    lam[:, 0] = 1.0
    return {
        "crop": crop.numpy().astype(np.float32),
        "flip": flip.numpy().astype(bool),
        "mix_partner": partner.numpy().astype(np.int32),
        "mix_box": box.numpy().astype(np.float32),
        "mix_lam": lam.numpy().astype(np.float32),
    }


@torch.no_grad()
def teacher_probabilities(teachers: Sequence[nn.Module], x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Ensemble (mean) of the teachers' softmax at `temperature`."""
    probs = [torch.softmax(t.eval()(x).float() / temperature, dim=-1) for t in teachers]
    return torch.stack(probs).mean(0)


def training_images(images: torch.Tensor, num_classes: int, factor: int) -> torch.Tensor:
    """Stored images [k*C, ...] -> the training images they decode to, in decoded-record order [k*f*f*C, ...]
    (formats/formation.py); f = 1: `images` themselves."""
    if factor == 1:
        return images
    return to_decoded_order(decode(images, factor), num_classes)  # the format's order, on torch tensors


@torch.no_grad()
def relabel(
    images: torch.Tensor,
    teachers: nn.Module | Sequence[nn.Module],
    num_classes: int,
    cfg: RelabelConfig = RelabelConfig(),
    device: torch.device | str = "cpu",
    dist: DistContext | None = None,
    factor: int = 1,
) -> Views:
    """Soft-label views for `images` (normalised, IPC-major [N, C, H, W]); targets are probabilities.

    `factor` > 1: `images` are stored multi-formation images; cfg.views views of each decoded training
    image, returned in the stored layout [N, f*f*cfg.views] (module docstring). `dist` (default:
    `condenser.distributed.current()`) shards the teacher batches over its ranks.
    """
    ctx = dist if dist is not None else current()
    if isinstance(teachers, nn.Module):
        teachers = [teachers]
    teachers = [t.to(device) for t in teachers]
    generator = torch.Generator().manual_seed(cfg.seed)
    src = training_images(images.detach().to(device), num_classes, factor)
    num_records = src.shape[0]
    params = sample_view_params(num_records, num_classes * factor * factor, tuple(images.shape[2:]), cfg,
                                generator)
    targets = _label_views(src, params, teachers, num_classes, cfg, ctx)
    views = Views(targets=targets.view(num_records, cfg.views, num_classes).numpy(), **params)
    return regroup_views(views, num_classes, factor, to_decoded=False)


def _label_views(src: torch.Tensor, params: dict[str, np.ndarray], teachers: Sequence[nn.Module], num_classes: int,
                 cfg: RelabelConfig, ctx: DistContext) -> torch.Tensor:
    """The teachers' probabilities [n * V, K] on every view of `src`, this rank's batches gathered."""
    num_records, v = src.shape[0], cfg.views
    flat = {k: a.reshape(num_records * v, *a.shape[2:]) for k, a in params.items()}
    records = np.repeat(np.arange(num_records), v)
    total = num_records * v
    batches = ctx.shard((total + cfg.batch_size - 1) // cfg.batch_size)  # this rank's contiguous batches
    lo, hi = batches.start * cfg.batch_size, min(batches.stop * cfg.batch_size, total)
    targets = torch.empty(max(hi - lo, 0), num_classes)
    for start in track(range(lo, hi, cfg.batch_size), f"relabel {total} views"):
        sl = slice(start, min(start + cfg.batch_size, hi))
        x = apply_views(src, records[sl], flat["crop"][sl], flat["flip"][sl], flat["mix_partner"][sl],
                        flat["mix_box"][sl])
        targets[start - lo: sl.stop - lo] = teacher_probabilities(teachers, x, cfg.temperature).cpu()
    return ctx.all_gather_rows(targets, "gather of the soft labels")


def label_record(cfg: RelabelConfig, views: Views, num_classes: int, image_hw: tuple[int, int], factor: int,
                 codec: str, topk: int | None) -> dict:
    """What a build's provenance records about its soft labels beside the settings (`relabel`): views per
    decoded and per stored image, and the label bytes per stored image (view parameters + codec arrays, as
    the writer stores them)."""
    nbytes = formats.label_nbytes(views, num_classes, image_hw, codec=codec, topk=topk, label_kind="probs",
                                  temperature=cfg.temperature, factor=factor)
    return {"formation_factor": factor, "views_per_decoded_image": cfg.views,
            "views_per_stored_image": views.num_views, "label_bytes_per_stored_image": nbytes / len(views)}
