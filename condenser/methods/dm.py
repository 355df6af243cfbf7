"""`dm`: distribution matching (Zhao & Bilen, 2023): match mean embeddings under random networks.

Per class, loss = ||mean embed(real) - mean embed(syn)||^2 with a freshly initialised network for
every inner step (no network training, no second-order terms): cheap, and strong on CPU. The
real side needs no gradient. Classes are batched in one forward (instance norm has no cross-sample
coupling). lr_img is in normalised units (the DM code's lr 1.0 with momentum 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from condenser.augment import DSA, DSAConfig
from condenser.methods.base import (
    METHODS,
    Generators,
    StepContext,
    as_class_batch,
    siamese_per_class,
    weighted_class_mean,
)
from condenser.methods.gm import make_settings
from condenser.models import Classifier


@dataclass(frozen=True)
class DMSettings:
    lr: float = 1.0  # image lr in normalised units
    matching_strategy: str = "color_crop_cutout_flip_scale_rotate"
    fresh_net_every_step: bool = True  # DM draws a new random network per iteration


@METHODS.register("dm")
class DistributionMatching:
    name = "dm"
    Settings = DMSettings
    lr_in_pixel_units = False
    autocast_matching = True
    class_separable = True

    def __init__(self, allow_flip: bool = True, **settings: Any) -> None:
        self.settings: DMSettings = make_settings(DMSettings, settings, self.name)
        strategy = self.settings.matching_strategy
        if not allow_flip:
            strategy = "_".join(p for p in strategy.split("_") if p != "flip")
        self._match_aug = DSA(DSAConfig(strategy=strategy), allow_flip=allow_flip)

    def default_lr_img(self, ipc: int, resolution: int) -> float:
        return self.settings.lr

    def prepare_model(self, model: nn.Module, ctx: StepContext) -> None:
        ctx.reinit(model)
        model.train()
        model.requires_grad_(False)  # only the images need gradients

    def train_model_step(self, model: nn.Module, ctx: StepContext) -> None:
        if self.settings.fresh_net_every_step:
            ctx.reinit(model)

    def siamese(self, real: torch.Tensor, syn: torch.Tensor, generator: Generators
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return siamese_per_class(self._match_aug, real, syn, generator)

    def _embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        k, m = x.shape[:2]
        return model.embed(x.reshape(k * m, *x.shape[2:])).float().view(k, m, -1)

    def target(self, model: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._embed(model, real).mean(1)

    def match(self, model: nn.Module, syn: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
        return ((target - weighted_class_mean(self._embed(model, syn), weights)) ** 2).sum()

    def real_feature_mean(self, model: nn.Module, target: torch.Tensor) -> torch.Tensor | None:
        """The target is the mean of flatten(features(real)) when `embed` is the default flatten."""
        return target if type(model).embed is Classifier.embed else None

    def match_terms(self, model: nn.Module, syn: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
                    weights: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Several weighted terms from ONE forward of the synthetic batch (base + subset share it)."""
        emb = self._embed(model, syn)
        return [((target - weighted_class_mean(emb, w)) ** 2).sum() for w in weights]

    def loss(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor,
             label: int | torch.Tensor) -> torch.Tensor:
        syn, real, labels = as_class_batch(syn, real, label)
        return self.match(model, syn, self.target(model, real, labels), labels)
