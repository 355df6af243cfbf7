"""Budgets: which IPC prefix a device loads, given an integer size, seconds of training, or memory.

Formulas (n_k = k * f*f * num_classes training records in the IPC-k prefix, f = the formation factor,
B = batch size, E = epochs, V = views per stored image, so V / (f*f) per training record):

    seconds(k) = E * ceil(n_k / B) * step_seconds
    bytes(k)   = n_k * record_bytes + [f > 1] k * num_classes * C*H*W*4 (the stored images, kept)
                 + 2 * k * block_bytes + trainer_bytes
    record_bytes = C*H*W*4 (float32 image) + 8 (int64 label)
                   + V/(f*f) * (16 crop + 1 flip + 4 partner + 16 mix box + 4 mix lam + 4*K targets)

step_seconds (median of a few steps of the chosen trainer on a synthetic batch of the file's shape,
view replay included) and trainer_bytes (resident memory the trainer adds: sessions, state,
activations) come from a calibration on this device, unless the Budget fixes them. block_bytes is
the stored size of one IPC block (its stride); the reader holds two copies of the stored prefix (the
read buffer and the per-array copies) while it decodes, hence the 2. Everything
else comes from the header: no block is read to choose the size. The chosen k is the largest that
fits (and that the file holds); if even IPC-1 does not fit, BudgetError says what IPC-1 needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.calibrate import Calibration
from runtime.config import steps_per_epoch
from runtime.errors import BudgetError

MB = 1 << 20
VIEW_PARAM_BYTES = 16 + 1 + 4 + 16 + 4  # crop, flip, partner, mix box, mix lam (decoded dtypes)


def _positive(name: str, v: Any) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise BudgetError(f"Budget({name}={v!r}): must be a positive finite number")


@dataclass(frozen=True)
class Budget:
    """A device budget: training time in seconds and/or memory in MiB (both: the prefix must fit both).

    step_seconds / trainer_mb fix the device measurements instead of calibrating (known hardware, tests).
    """

    seconds: float | None = None
    memory_mb: float | None = None
    step_seconds: float | None = None
    trainer_mb: float | None = None

    def __post_init__(self) -> None:
        if self.seconds is None and self.memory_mb is None:
            raise BudgetError("Budget() needs seconds=... or memory_mb=...")
        for name in ("seconds", "memory_mb", "step_seconds"):
            _positive(name, getattr(self, name))
        if self.trainer_mb is not None:
            tm = self.trainer_mb
            if isinstance(tm, bool) or not isinstance(tm, (int, float)) or not math.isfinite(tm) or tm < 0:
                raise BudgetError(f"Budget(trainer_mb={tm!r}): must be a non-negative finite number")

    def __repr__(self) -> str:
        set_ = ", ".join(f"{k}={v:g}" for k, v in vars(self).items() if v is not None)
        return f"Budget({set_})"

    @property
    def needs_calibration(self) -> bool:
        return (self.seconds is not None and self.step_seconds is None) or (
            self.memory_mb is not None and self.trainer_mb is None)


@dataclass(frozen=True)
class FileFacts:
    """What the budget formulas need, all read from the header."""

    ipc_max: int
    blocks_present: int  # complete blocks in the file (a cut file holds fewer than ipc_max)
    num_classes: int
    image_shape: tuple[int, int, int]
    num_views: int  # per stored image (the header's views.count)
    block_bytes: int
    formation_factor: int = 1  # each stored image decodes to f*f training records (docs/format.md §4.1)

    @property
    def per_stored(self) -> int:
        """Training records per stored image: f*f."""
        return self.formation_factor ** 2

    def records(self, k: int) -> int:
        """Training records of the IPC-k prefix: what training iterates over."""
        return k * self.num_classes * self.per_stored

    @property
    def record_bytes(self) -> int:
        c, h, w = self.image_shape
        views = self.num_views // self.per_stored
        return c * h * w * 4 + 8 + views * (VIEW_PARAM_BYTES + 4 * self.num_classes)

    def prefix_bytes(self, k: int) -> int:
        c, h, w = self.image_shape
        stored = k * self.num_classes * c * h * w * 4 if self.formation_factor > 1 else 0
        return self.records(k) * self.record_bytes + stored + 2 * k * self.block_bytes


def check_int_budget(budget: Any, ipc_max: int | None = None) -> int:
    """An integer budget is a prefix size 1..ipc_max; numpy integers count as integers, bools do not.

    Raises runtime.BudgetError, which is also a formats.BudgetError: either package's except clause
    catches every bad budget (a cut file's missing blocks stay the reader's TruncatedError).
    """
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, np.integer)):
        raise BudgetError(f"budget must be an int (IPC), runtime.Budget(seconds=...|memory_mb=...) or None, "
                          f"got {budget!r}")
    k = int(budget)
    if ipc_max is not None and not 1 <= k <= ipc_max:
        raise BudgetError(f"IPC budget {k} is outside 1..{ipc_max} (the file's ipc_max)")
    return k


def choose_ipc(budget: Budget, facts: FileFacts, epochs: int, batch_size: int,
               calibration: Calibration | None = None) -> tuple[int, dict[str, Any]]:
    """Largest k in 1..blocks_present whose estimated training time and memory fit the budget."""
    step_s = budget.step_seconds if budget.step_seconds is not None else (
        calibration.step_seconds if calibration else None)
    trainer_b = int(budget.trainer_mb * MB) if budget.trainer_mb is not None else (
        calibration.trainer_bytes if calibration else None)
    if budget.seconds is not None and step_s is None:
        raise BudgetError("a seconds budget needs a calibration or Budget(step_seconds=...)")
    if budget.memory_mb is not None and trainer_b is None:
        raise BudgetError("a memory budget needs a calibration or Budget(trainer_mb=...)")
    rows = []
    best = 0
    for k in range(1, facts.blocks_present + 1):
        n = facts.records(k)
        row: dict[str, Any] = {"ipc": k, "records": n}
        fits = True
        if budget.seconds is not None:
            steps = epochs * steps_per_epoch(n, batch_size)
            row["steps"] = steps
            row["seconds"] = steps * step_s
            fits &= row["seconds"] <= budget.seconds
        if budget.memory_mb is not None:
            row["bytes"] = facts.prefix_bytes(k) + trainer_b
            fits &= row["bytes"] <= budget.memory_mb * MB
        rows.append(row)
        if fits:
            best = k
    report = {"budget": {k: v for k, v in vars(budget).items() if v is not None}, "epochs": epochs,
              "batch_size": batch_size, "step_seconds": step_s, "trainer_bytes": trainer_b,
              "record_bytes": facts.record_bytes, "block_bytes": facts.block_bytes, "per_ipc": rows}
    if best == 0:
        need = rows[0] if rows else {}
        parts = []
        if budget.seconds is not None and "seconds" in need:
            parts.append(f"{need['seconds']:.3g} s of training ({need['steps']} steps x {step_s:.3g} s)")
        if budget.memory_mb is not None and "bytes" in need:
            parts.append(f"{need['bytes'] / MB:.3g} MiB")
        needs = " and ".join(parts or ["a complete block"])
        raise BudgetError(f"no prefix fits {budget}: IPC-1 needs {needs}")
    report["ipc"] = best
    return best, report


__all__ = ["Budget", "FileFacts", "MB", "check_int_budget", "choose_ipc"]
