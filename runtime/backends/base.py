"""What every training backend offers the training loop: one optimizer step on a fixed batch, logits, state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime.bundle import DropoutSpec, LossConfig, OptimizerConfig, SGDConfig, TrainerBundle
from runtime.errors import TrainerError


@dataclass(frozen=True)
class ModelSpec:
    """The network both backends build: architecture, parameter and buffer order, optimizer, loss, dropout.

    `dropout` lists the nn.Dropout modules that train with runtime-drawn noise (`dropout_noise`); None (no
    bundle) means every nn.Dropout of the torch model, an empty tuple none (a bundle exported with
    dropout off, where nn.Dropout is the identity).
    """

    arch: str
    in_shape: tuple[int, int, int]
    num_classes: int
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=SGDConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int | None = None  # the graph's fixed batch size; None = any (torch without a bundle)
    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    dropout: tuple[DropoutSpec, ...] | None = None

    @classmethod
    def from_bundle(cls, bundle: TrainerBundle) -> ModelSpec:
        m = bundle.meta
        return cls(arch=m.arch, in_shape=tuple(m.in_shape), num_classes=m.num_classes,
                   arch_kwargs=dict(m.arch_kwargs), optimizer=m.optimizer, loss=m.loss, batch_size=m.batch_size,
                   param_names=tuple(m.param_names), buffer_names=tuple(m.buffer_names), dropout=tuple(m.dropout))


def dropout_noise(seed: int, step: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) float32 noise of dropout module `index` (bundle order) at global step `step`.

    Each (seed, step, module) has its own PCG64 stream, so the noise needs no state of its own (a resumed
    run draws the same) and both backends draw the same values for the full, padded batch.
    """
    rng = np.random.default_rng([int(seed) % (1 << 64), int(step), int(index)])
    return rng.random(shape, dtype=np.float32)


class Trainer(Protocol):
    """A model plus its optimizer state and state buffers; state lives in the backend, numpy goes in and out."""

    backend: str
    spec: ModelSpec

    def step(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray, step: int = 0) -> float:
        """One optimizer step on a batch; rows with weight 0 are padding; `step` is the 0-based global step
        (AdamW's bias correction, dropout noise). Returns the weighted mean loss."""
        ...

    def get_params(self) -> list[np.ndarray]:
        ...

    def set_params(self, params: list[np.ndarray]) -> None:
        ...

    def get_buffers(self) -> list[np.ndarray]:
        """State buffers (BatchNorm running statistics) in `spec.buffer_names` order."""
        ...

    def set_buffers(self, buffers: list[np.ndarray]) -> None:
        ...

    def get_slots(self) -> list[list[np.ndarray]]:
        """Optimizer state, one list of per-parameter arrays per slot of `spec.optimizer.slots` (zeros
        before the first step)."""
        ...

    def set_slots(self, slots: list[list[np.ndarray]]) -> None:
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits for any number of rows of normalized float32 images (eval mode)."""
        ...


def check_arrays(arrays: list[np.ndarray], names: tuple[str, ...] | list[str], shapes: list[tuple[int, ...]],
                 what: str) -> list[np.ndarray]:
    """Contiguous float32 copies of `arrays`, which must match `shapes` one for one (TrainerError if not)."""
    if len(arrays) != len(shapes):
        raise TrainerError(f"expected {len(shapes)} {what} arrays, got {len(arrays)}")
    for name, shape, a in zip(names, shapes, arrays, strict=True):
        if tuple(a.shape) != tuple(shape):
            raise TrainerError(f"{what} {name!r} has shape {a.shape}, the trainer expects {shape}")
    return [np.ascontiguousarray(a, dtype=np.float32).copy() for a in arrays]


__all__ = ["ModelSpec", "Trainer", "check_arrays", "dropout_noise"]
