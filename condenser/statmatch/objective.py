"""The one statistics-matching loss behind sre2l, gvbsm and teddy.

    loss = ce_weight * CE(mean logits of the chosen teachers, y)
         + bn_weight * mean_t Σ_l w_l (||μ_l - RM_l|| + ||σ²_l - RV_l||)          (BN layers)
         + conv_weight * mean_t Σ_l w_l (channel + patch distances of conv inputs)  (G-VBSM, cached targets)

w_1 = first_multiplier (the reference's ×10 on the first layer), 1 elsewhere. SRe2L is one teacher with
conv_weight = 0 and ema = 0; G-VBSM adds conv statistics, the SDS-form EMA, random conv drop and one
backbone per step; Teddy averages over a random subset of a weak-teacher pool (ensemble CE on the mean
logits, BN distances averaged over teachers: Teddy paper §3.3). Every term is a sum over the G independent
statistics groups of the batch, so each group's gradient is what it would be alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from condenser.methods.base import MethodConfigError
from condenser.statmatch.hooks import (
    StatRecorder,
    bn_layer_targets,
    conv_layer_names,
    conv_layer_targets,
)
from condenser.statmatch.pool import TeacherPool


class NoStatisticsError(MethodConfigError):
    """A teacher offers nothing to match (no BN layers and no conv statistics)."""


@dataclass(frozen=True)
class MatchConfig:
    ce_weight: float = 1.0
    bn_weight: float = 1.0  # α_BN (SRe2L Tiny 1.0, ImageNet 0.01; G-VBSM 0.01)
    conv_weight: float = 0.0  # λ_Conv (G-VBSM 0.01); 0 = BN statistics only
    first_multiplier: float = 10.0
    ema: float = 0.0  # SDS-form EMA α (G-VBSM 0.8 on small datasets); 0 = plain distances
    conv_drop: float = 0.0  # β_dr: probability that a conv layer is skipped in a forward
    patch: int = 4  # N_p for the patch statistics
    dd_weight: float = 0.0  # data densification (G-VBSM 1.0); 0 = off
    dd_tau: float = 4.0
    dd_size: int = 32
    dd_normalize: bool = False


def grouped_ce(logits: torch.Tensor, labels: torch.Tensor, groups: int, weights: torch.Tensor | None
               ) -> torch.Tensor:
    """Σ over groups of the (weighted) mean cross-entropy of the group."""
    per = F.cross_entropy(logits.float(), labels, reduction="none").view(groups, -1)
    if weights is None:
        return per.mean(1).sum()
    w = weights.reshape(groups, -1).to(per.dtype)
    return ((per * w).sum(1) / w.sum(1).clamp_min(1e-12)).sum()


class StatMatchObjective:
    """Hooks on every pool member; `__call__` runs the step's chosen teachers on an augmented batch."""

    def __init__(self, pool: TeacherPool, cfg: MatchConfig, conv_stats: list[dict | None] | None = None) -> None:
        self.pool = pool
        self.cfg = cfg
        conv_stats = conv_stats or [None] * len(pool)
        self.recorders: list[StatRecorder] = []
        for member, stats in zip(pool.members, conv_stats, strict=True):
            model = member.model
            device = next(model.parameters()).device
            layers = bn_layer_targets(model, cfg.first_multiplier) if cfg.bn_weight > 0 else []
            if cfg.conv_weight > 0 and stats is not None:
                layers += conv_layer_targets(stats, conv_layer_names(model), cfg.first_multiplier, device)
            if not layers and (cfg.bn_weight > 0 or cfg.conv_weight > 0):
                raise NoStatisticsError(
                    f"teacher {member.arch!r} ({member.path}) has no BN layers and no conv statistics to match; "
                    "train it with norm='batch' or enable conv matching (conv_weight > 0)")
            self.recorders.append(StatRecorder(model, layers, cfg.ema, cfg.patch))

    def reset(self) -> None:
        """Forget the EMA state (a new, independent recover batch starts)."""
        for r in self.recorders:
            r.reset_ema()

    def close(self) -> None:
        for r in self.recorders:
            r.close()

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, step: int, generator: torch.Generator,
                 groups: int = 1, weights: torch.Tensor | None = None, tag: str = "full",
                 chosen: list[int] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the augmented batch x [G*B, ...] with labels [G*B]; parts are detached (no host sync)."""
        cfg = self.cfg
        chosen = chosen if chosen is not None else self.pool.sample(step, generator)
        logits, bn, conv = [], [], []
        for i in chosen:
            rec = self.recorders[i]
            convs = rec.conv_indices
            skip: frozenset[int] = frozenset()
            if cfg.conv_drop > 0 and convs:
                drop = torch.rand(len(convs), generator=generator) < cfg.conv_drop
                skip = frozenset(j for j, d in zip(convs, drop.tolist(), strict=True) if d)
            with rec.recording(groups, weights, tag, skip) as losses:
                logits.append(self.pool.members[i].model(x).float())
            zero = x.new_zeros(())
            bn.append(torch.stack(losses["bn"]).sum() if losses["bn"] else zero)
            conv.append(torch.stack(losses["conv"]).sum() if losses["conv"] else zero)
        ce = grouped_ce(torch.stack(logits).mean(0), labels, groups, weights)
        bn_t, conv_t = torch.stack(bn).mean(), torch.stack(conv).mean()
        loss = cfg.ce_weight * ce + cfg.bn_weight * bn_t + cfg.conv_weight * conv_t
        return loss, {"ce": ce.detach(), "bn": bn_t.detach(), "conv": conv_t.detach()}
