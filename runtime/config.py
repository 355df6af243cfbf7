"""Training settings of the device runtime and the learning-rate schedules they name."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from runtime.errors import ConfigError

Schedule = Literal["multistep", "cosine", "constant"]
LabelMode = Literal["auto", "soft", "hard"]
Backend = Literal["onnx", "torch"]
Init = Literal["seed", "bundle"]

SCHEDULES: tuple[str, ...] = ("multistep", "cosine", "constant")
LABEL_MODES: tuple[str, ...] = ("auto", "soft", "hard")
BACKENDS: tuple[str, ...] = ("onnx", "torch")
INITS: tuple[str, ...] = ("seed", "bundle")

# IDC/MDC evaluation code: decay by 0.2 at 2/3 and 5/6 of the epochs.
MULTISTEP_MILESTONES: tuple[float, ...] = (2 / 3, 5 / 6)
MULTISTEP_GAMMA = 0.2
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class TrainConfig:
    """How `runtime.train` trains; defaults follow the pinned evaluation protocol (docs/DESIGN).

    batch_size None means the trainer bundle's fixed batch size (64 when there is no bundle).
    momentum/weight_decay None mean the trainer's (0.9 / 5e-4 without a bundle); the onnx graph bakes
    them in, so an explicit value that differs from the bundle's is an error.
    init "seed" draws fresh parameters from `seed` (PyTorch's default layer rules); "bundle" starts
    from the bundle's stored initial parameters (bit-identical start for both backends).
    labels "auto" is "soft" when the data has soft-label views, else "hard".
    """

    epochs: int = 300
    batch_size: int | None = None
    lr: float = 0.01
    schedule: Schedule = "multistep"
    seed: int = 0
    labels: LabelMode = "auto"
    momentum: float | None = None
    weight_decay: float | None = None
    init: Init = "seed"
    threads: int | None = None  # intra-op threads of the backend; None = library default

    def validate(self) -> TrainConfig:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer or None, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES),
                                     ("labels", self.labels, LABEL_MODES), ("init", self.init, INITS)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(allowed)}")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a non-negative number or None, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads!r}")
        return self

    def with_(self, **changes: object) -> TrainConfig:
        return replace(self, **changes).validate()  # type: ignore[arg-type]


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """ceil(n / batch): the last, partial batch is padded and masked with zero per-sample weights."""
    return -(-int(n_samples) // int(batch_size))


def multistep_milestones(epochs: int, fractions: tuple[float, ...] = MULTISTEP_MILESTONES) -> tuple[int, ...]:
    """The epochs at which a multistep schedule decays: round(f * E), at least 1, each once.

    The one milestone rule of server evaluation (condenser/evaluate/protocol.py) and the device runtime,
    so both train a prefix on the same schedule (E = 100: decays at epochs 67 and 83).
    """
    return tuple(sorted({max(1, round(f * epochs)) for f in fractions}))


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch_: int) -> float:
    """The learning rate of global step `step` (0-based).

    multistep: lr * 0.2 ** (number of `multistep_milestones(E)` reached by the current epoch);
    cosine: lr * (1 + cos(pi * step / total_steps)) / 2, per step; constant: lr.
    """
    if cfg.schedule == "constant":
        return float(cfg.lr)
    if cfg.schedule == "cosine":
        total = cfg.epochs * steps_per_epoch_
        return float(cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total)))
    epoch = step // steps_per_epoch_
    passed = sum(epoch >= m for m in multistep_milestones(cfg.epochs))
    return float(cfg.lr * MULTISTEP_GAMMA**passed)


__all__ = ["BACKENDS", "DEFAULT_BATCH_SIZE", "LABEL_MODES", "SCHEDULES", "Backend", "LabelMode", "Schedule",
           "TrainConfig", "learning_rate", "multistep_milestones", "steps_per_epoch"]
