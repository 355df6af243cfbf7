"""A short measurement of this device: seconds per training step and the trainer's resident memory.

Budgets in seconds or megabytes need both; measuring a few steps of the real trainer on a synthetic
batch of the file's shape is cheaper and more honest than a table of device speeds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.backends.base import Trainer
from runtime.views import apply_views


@dataclass(frozen=True)
class Calibration:
    step_seconds: float  # median wall time of one step: batch preparation (view replay) + trainer step
    trainer_bytes: int  # peak resident memory the trainer added: graphs, sessions, state, activations


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc, else psutil, else 0)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported platform
        return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset (VmHWM), or 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def synthetic_batch(batch_size: int, image_shape: tuple[int, int, int], num_classes: int, views: bool,
                    rng: np.random.Generator) -> Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A batch factory of the file's shape; with views it replays random crops/flips/mixes like training."""
    c, h, w = image_shape
    images = rng.standard_normal((batch_size, c, h, w)).astype(np.float32)
    targets = np.full((batch_size, num_classes), 1.0 / num_classes, dtype=np.float32)
    weights = np.ones(batch_size, dtype=np.float32)
    hh = rng.integers(max(1, h // 2), h + 1, batch_size)
    ww = rng.integers(max(1, w // 2), w + 1, batch_size)
    crop = np.stack([rng.integers(0, h - hh + 1), rng.integers(0, w - ww + 1), hh, ww], 1).astype(np.float32)
    flip = rng.random(batch_size) < 0.5
    partner = np.where(rng.random(batch_size) < 0.5, rng.permutation(batch_size), -1)
    box = np.tile(np.array([0, 0, h // 2, w // 2], np.float32), (batch_size, 1))
    records = np.arange(batch_size)

    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = apply_views(images, records, crop, flip, partner, box) if views else images
        return x, targets, weights

    return make


def calibrate(make_trainer: Callable[[], Trainer], batch_size: int, image_shape: tuple[int, int, int],
              num_classes: int, views: bool, steps: int = 3, seed: int = 0) -> Calibration:
    """Build the trainer, run one warm-up step and `steps` timed steps; return the median step time and
    the growth of peak RSS (VmHWM, reset first; current RSS where that is unavailable). Exact in a fresh
    process, the usual case on a device; memory freed earlier in the process and reused undercounts."""
    rng = np.random.default_rng(seed)
    make = synthetic_batch(batch_size, image_shape, num_classes, views, rng)
    before = rss_bytes()
    peak_ok = _reset_peak()
    trainer = make_trainer()
    trainer.step(0.0, *make())  # warm-up: lazy allocations, graph optimisation
    times = []
    for _ in range(max(1, steps)):
        t0 = time.perf_counter()
        trainer.step(0.0, *make())
        times.append(time.perf_counter() - t0)
    after = peak_rss_bytes() if peak_ok else 0
    used = max(0, (after or rss_bytes()) - before)
    del trainer
    return Calibration(step_seconds=float(np.median(times)), trainer_bytes=int(used))


__all__ = ["Calibration", "calibrate", "rss_bytes", "synthetic_batch"]
