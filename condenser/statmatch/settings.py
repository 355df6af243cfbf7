"""Settings of the decoupled methods, and the presets that make sre2l, gvbsm and teddy of one engine.

One dataclass covers all three: SRe2L is the base (one BN teacher, BN statistics + CE); G-VBSM switches on
several backbones, conv statistics, the SDS EMA, conv drop and optionally data densification; Teddy
swaps the single teacher for a pool of weak teachers (early checkpoints or pruned copies) of which a
random subset is matched each step. `settings_for(method, **overrides)` applies a preset, then overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from condenser.methods.base import MethodConfigError
from condenser.registry import Registry
from condenser.statmatch.augment import RecoverAugConfig
from condenser.statmatch.objective import MatchConfig
from condenser.statmatch.recover import RecoverConfig

GVBSM_BACKBONES = ("convnet", "resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0")


@dataclass(frozen=True)
class DecoupledSettings:
    # --- teachers ---------------------------------------------------------------------------------
    pool: str = "single"  # single | backbones | prior | post  (condenser.statmatch.teachers.POOL_BUILDERS)
    teacher_arch: str = "convnet"
    teacher_kwargs: dict = field(default_factory=lambda: {"norm": "batch"})  # BN matching needs BN layers
    teacher_epochs: int | None = None  # None: the profile's teacher budget
    teacher_max_train: int | None = None  # cap on real training images per teacher ("small scale")
    backbones: tuple[str, ...] = GVBSM_BACKBONES
    backbone_kwargs: dict = field(default_factory=lambda: {"mobilenet_v2": {"width_mult": 0.5}})
    stages: tuple[int, ...] | None = None  # prior pool: checkpoint epochs (None: every epoch of the run)
    prune_amounts: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)  # post pool: fraction of conv filters removed
    prune_finetune_epochs: int = 0  # Teddy: 0-2
    recalibrate_images: int = 2048  # real images to re-estimate BN statistics (post pool; backbones if enabled)
    recalibrate_backbones: bool = True  # short-trained backbones' running statistics are stale targets
    sampling: str = "all"  # all | one | round-robin | subset  (teachers matched per step)
    k: int = 1  # subset size (Teddy K)
    stat_images: int = 10000  # real images for the cached conv statistics
    # --- loss (MatchConfig) -------------------------------------------------------------------------
    ce_weight: float = 1.0
    bn_weight: float = 1.0
    conv_weight: float = 0.0
    first_multiplier: float = 10.0
    ema: float = 0.0
    conv_drop: float = 0.0
    patch: int = 4
    dd_weight: float = 0.0
    dd_tau: float = 4.0
    dd_normalize: bool = False
    # --- optimisation (RecoverConfig) ---------------------------------------------------------------
    iterations: int | None = None  # None: from the profile (smoke 20, cpu 500, paper 1000)
    lr: float = 0.1
    weight_decay: float = 0.0
    batch_images: int = 500
    init: str = "noise"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_per_image: bool = False
    flip: bool = True
    jitter: int = 4
    # --- nesting ----------------------------------------------------------------------------------
    order: str = "herding"  # herding | none
    herding_real: int = 256  # real images per class for the herding target
    schedule: str = "per-ipc"  # per-ipc (the papers) | joint (one batch, multisize subset loss; small sets)
    joint_max_images: int = 2000
    joint_lr: float = 0.01  # MaskedSGD lr (normalised units) of the joint schedule

    def __post_init__(self) -> None:
        if self.order not in ("herding", "none"):
            raise MethodConfigError(f"unknown order {self.order!r}; known: herding, none")
        if self.schedule not in ("per-ipc", "joint"):
            raise MethodConfigError(f"unknown schedule {self.schedule!r}; known: per-ipc, joint")

    def match_config(self) -> MatchConfig:
        return MatchConfig(ce_weight=self.ce_weight, bn_weight=self.bn_weight, conv_weight=self.conv_weight,
                           first_multiplier=self.first_multiplier, ema=self.ema, conv_drop=self.conv_drop,
                           patch=self.patch, dd_weight=self.dd_weight, dd_tau=self.dd_tau,
                           dd_normalize=self.dd_normalize)

    def aug_config(self) -> RecoverAugConfig:
        return RecoverAugConfig(crop_scale=tuple(self.crop_scale), per_image=self.crop_per_image, flip=self.flip,
                                jitter=self.jitter)

    def recover_config(self, iterations: int, seed: int) -> RecoverConfig:
        return RecoverConfig(iterations=iterations, lr=self.lr, weight_decay=self.weight_decay,
                             batch_images=self.batch_images, init=self.init, aug=self.aug_config(),
                             match=self.match_config(), seed=seed)


PRESETS: Registry[dict[str, Any]] = Registry("decoupled method")
PRESETS.add("sre2l", {})
PRESETS.add("gvbsm", {"pool": "backbones", "sampling": "one", "bn_weight": 0.01, "conv_weight": 0.01, "ema": 0.8,
                      "conv_drop": 0.4, "lr": 0.05, "teacher_max_train": 5000})
PRESETS.add("teddy", {"pool": "prior", "sampling": "subset", "k": 3, "weight_decay": 1e-4})

# Recover iterations per profile when the settings leave them open (SRe2L Tiny: 1000; cpu/smoke: budgets).
PROFILE_ITERATIONS = {"smoke": 20, "cpu": 500, "paper": 1000}


def settings_for(method: str, **overrides: Any) -> DecoupledSettings:
    """The preset of `method` with `overrides` applied; unknown keys raise MethodConfigError."""
    preset = dict(PRESETS.get(method))
    known = {f.name for f in fields(DecoupledSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MethodConfigError(f"method {method!r}: unknown settings {unknown}; known: {sorted(known)}")
    for key, value in overrides.items():  # JSON gives lists; the dataclass wants tuples
        if isinstance(value, list):
            overrides[key] = tuple(value)
    return replace(DecoupledSettings(), **{**preset, **overrides})
