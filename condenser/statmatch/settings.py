"""Settings of the decoupled methods, and the presets that make sre2l, gvbsm and teddy of one engine.

One dataclass covers all three: SRe2L is the base (one BN teacher, BN statistics + CE); G-VBSM switches on
several backbones, conv statistics, the SDS EMA, conv drop and optionally data densification; Teddy
swaps the single teacher for a pool of weak teachers (early checkpoints or pruned copies) of which a
random subset is matched each step. The recover loop's settings are its own RecoverConfig (`recover`),
which nests the loss (MatchConfig, `recover.match`) and the augmentation (RecoverAugConfig, `recover.aug`).
Each preset is a section of the settings tree (`method.sre2l`, `method.gvbsm`, `method.teddy`;
docs/config.md): the defaults below with the preset's changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from condenser.config.schema import updated
from condenser.methods.base import MethodConfigError
from condenser.registry import Registry
from condenser.statmatch.recover import RecoverConfig

GVBSM_BACKBONES = ("convnet", "resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0")


@dataclass(frozen=True)
class DecoupledSettings:
    # --- teachers ---------------------------------------------------------------------------------
    pool: str = "single"  # single | backbones | prior | post  (condenser.statmatch.teachers.POOL_BUILDERS)
    teacher_arch: str = "convnet"
    teacher_kwargs: dict = field(default_factory=lambda: {"norm": "batch"})  # BN matching needs BN layers
    teacher_epochs: int | None = None  # None: the tree's teacher.epochs
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
    # --- the recover loop: optimisation, loss (recover.match), augmentation (recover.aug) -----------
    recover: RecoverConfig = field(default_factory=RecoverConfig)  # its seed is the build's --seed
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

    def recover_config(self, seed: int) -> RecoverConfig:
        """The recover loop's settings for a build with `seed`."""
        return replace(self.recover, seed=seed)


PRESETS: Registry[dict[str, Any]] = Registry("decoupled method")
PRESETS.add("sre2l", {})
PRESETS.add("gvbsm", {"pool": "backbones", "sampling": "one", "teacher_max_train": 5000,
                      "recover": {"lr": 0.05, "match": {"bn_weight": 0.01, "conv_weight": 0.01, "ema": 0.8,
                                                        "conv_drop": 0.4}}})
PRESETS.add("teddy", {"pool": "prior", "sampling": "subset", "k": 3, "recover": {"weight_decay": 1e-4}})


def preset(method: str) -> DecoupledSettings:
    """The settings of `method` (sre2l, gvbsm, teddy): the defaults with the preset's changes."""
    return updated(DecoupledSettings(), PRESETS.get(method), f"the {method} preset", f"method.{method}")


def settings_for(method: str, **overrides: Any) -> DecoupledSettings:
    """The preset of `method` with `overrides` (nested like the tree: `recover={"iterations": 50}`) applied;
    an unknown key or a wrong value raises condenser.config.ConfigError."""
    return updated(preset(method), overrides, "settings_for", f"method.{method}")
