"""Differentiable batched augmentation: DSA (per-sample and siamese) and CutMix."""

from condenser.augment.cutmix import CutMixDraw, apply_cutmix, cutmix, draw_cutmix
from condenser.augment.dsa import DSA, GEOMETRIC, OPS, DSAConfig, DSAParams

__all__ = [
    "DSA",
    "GEOMETRIC",
    "OPS",
    "CutMixDraw",
    "DSAConfig",
    "DSAParams",
    "apply_cutmix",
    "cutmix",
    "draw_cutmix",
]
