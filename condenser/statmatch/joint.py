"""The statistics-matching loss as a base method of the condense loop: the joint schedule.

Where the whole synthetic set fits in one batch (small datasets), all images are optimised together by
condenser.condense, so the multisize wrapper can add its subset loss: the same objective evaluated on the
MLS prefix, whose BN/conv statistics are the prefix-weighted statistics of the same forward pass. MLS
distances use the first teacher's features (the condense network is loaded with its weights), and frozen
prefixes are honoured by MaskedSGD. Teachers are given as teacher.safetensors paths (JSON-able settings,
so the run directory's hash covers them); the real batch is not used by the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from condenser.methods import METHODS, MethodConfigError, StepContext
from condenser.methods.gm import make_settings
from condenser.statmatch.augment import RecoverAugConfig, recover_augment
from condenser.statmatch.cache import load_conv_stats
from condenser.statmatch.dd import class_densification, dd_features
from condenser.statmatch.objective import MatchConfig, StatMatchObjective
from condenser.statmatch.pool import TeacherPool
from condenser.statmatch.teachers import load_member

METHOD_NAME = "statmatch"


@dataclass(frozen=True)
class JointSettings:
    members: tuple[str, ...] = ()  # teacher.safetensors paths; members[0] must be a convnet (MLS features)
    conv_stats: tuple[str | None, ...] = ()  # cached conv statistics per member (None: BN only)
    sampling: str = "all"
    k: int = 1
    match: dict = field(default_factory=dict)  # MatchConfig fields
    aug: dict = field(default_factory=dict)  # RecoverAugConfig fields
    lr: float = 0.01  # MaskedSGD lr in normalised units
    pool_hash: str = ""  # identity of the teachers' weights, so a retrained pool never resumes a stale run


@METHODS.register(METHOD_NAME)
class JointStatMatch:
    name = METHOD_NAME
    Settings = JointSettings
    lr_in_pixel_units = False
    autocast_matching = False  # statistics distances stay in float32
    class_separable = False  # BN statistics of one batch of all classes: not shardable by class

    def __init__(self, allow_flip: bool = True, **settings: Any) -> None:
        self.settings: JointSettings = make_settings(JointSettings, settings, self.name)
        if not self.settings.members:
            raise MethodConfigError(f"{self.name}: no teachers given (settings 'members')")
        self.allow_flip = allow_flip
        self.match_cfg = MatchConfig(**self.settings.match)
        aug = dict(self.settings.aug)
        if "crop_scale" in aug:
            aug["crop_scale"] = tuple(aug["crop_scale"])
        self.aug_cfg = RecoverAugConfig(**aug)
        self._objective: StatMatchObjective | None = None
        self._generator: torch.Generator | None = None
        self._chosen: list[int] | None = None
        self._step = 0

    def default_lr_img(self, ipc: int, resolution: int) -> float:
        return self.settings.lr

    def _build(self, device: torch.device) -> StatMatchObjective:
        s = self.settings
        members = [load_member(p, str(device)) for p in s.members]
        stats = [load_conv_stats(p) if p else None for p in s.conv_stats] if s.conv_stats else None
        return StatMatchObjective(TeacherPool(members, s.sampling, s.k), self.match_cfg, stats)

    def prepare_model(self, model: nn.Module, ctx: StepContext) -> None:
        """Load the first teacher into the condense network (its features drive the MLS selection)."""
        if self._objective is None:
            self._objective = self._build(next(model.parameters()).device)
        try:
            model.load_state_dict(self._objective.pool.members[0].model.state_dict())
        except RuntimeError as exc:
            raise MethodConfigError(f"{self.name}: the condense network does not match the first teacher: {exc}"
                                    ) from None
        model.eval().requires_grad_(False)
        self._generator = ctx.generator

    def train_model_step(self, model: nn.Module, ctx: StepContext) -> None:
        """Teachers are frozen: nothing to train."""

    def siamese(self, real: torch.Tensor, syn: torch.Tensor, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        k, m = syn.shape[:2]
        g = generator if generator is not None else torch.Generator()
        view = recover_augment(syn.reshape(k * m, *syn.shape[2:]), self.aug_cfg, g, self.allow_flip)
        return real, view.view_as(syn)

    def target(self, model: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> None:
        return None  # targets are the teachers' statistics, not the real batch

    def match(self, model: nn.Module, syn: torch.Tensor, target: Any, labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
        if self._objective is None or self._generator is None:
            raise MethodConfigError(f"{self.name}: match called before prepare_model")
        k, m = syn.shape[:2]
        x = syn.reshape(k * m, *syn.shape[2:])
        y = labels.repeat_interleave(m)
        if weights is None:  # the full-set term opens a step: draw its teachers, reused by the subset term
            self._chosen = self._objective.pool.sample(self._step, self._generator)
            self._step += 1
        w = None if weights is None else weights.reshape(-1)
        loss, _ = self._objective(x, y, self._step, self._generator, groups=1, weights=w,
                                  tag="full" if weights is None else "subset", chosen=self._chosen)
        if weights is None and self.match_cfg.dd_weight > 0:
            feats = dd_features(x, self.match_cfg.dd_size).view(k, m, -1)
            loss = loss + self.match_cfg.dd_weight * class_densification(feats, self.match_cfg.dd_tau,
                                                                         self.match_cfg.dd_normalize)
        return loss

    def loss(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor, label: int | torch.Tensor
             ) -> torch.Tensor:
        from condenser.methods.base import as_class_batch

        syn, real, labels = as_class_batch(syn, real, label)
        return self.match(model, syn, None, labels)

