"""What every training backend offers the training loop: one SGD step on a fixed batch, and logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime.bundle import TrainerBundle


@dataclass(frozen=True)
class ModelSpec:
    """The network both backends build: same architecture, parameter order and optimizer constants."""

    arch: str
    in_shape: tuple[int, int, int]
    num_classes: int
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int | None = None  # the graph's fixed batch size; None = any (torch without a bundle)
    param_names: tuple[str, ...] = ()

    @classmethod
    def from_bundle(cls, bundle: TrainerBundle) -> ModelSpec:
        m = bundle.meta
        return cls(arch=m.arch, in_shape=tuple(m.in_shape), num_classes=m.num_classes,
                   arch_kwargs=dict(m.arch_kwargs), momentum=m.optimizer.momentum,
                   weight_decay=m.optimizer.weight_decay, batch_size=m.batch_size,
                   param_names=tuple(m.param_names))


class Trainer(Protocol):
    """A model plus its optimizer state; state lives in the backend, numpy goes in and out."""

    backend: str
    spec: ModelSpec

    def step(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
        """One SGD step on a batch; rows with weight 0 are padding. Returns the weighted mean loss."""
        ...

    def get_params(self) -> list[np.ndarray]:
        ...

    def set_params(self, params: list[np.ndarray]) -> None:
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits for any number of rows of normalized float32 images."""
        ...


__all__ = ["ModelSpec", "Trainer"]
