"""The multisize paper's baselines (MDC paper §3.2), as per-size training sets comparable with MDC.

- A: a separate condensation per size n = 1..N (ℂ_n^{[n]}); the reference for each size, not nested,
  N(N+1)/2 images per class stored.
- B: N single-image condensations, run k initialised from real image k (ℂ_n^{n}); size n is the
  union of runs 0..n-1 (nested, N images per class).
- C: one condensation to N without the subset loss (ℂ_1^{[N]}); size n is the prefix (nested).
- mdc: the same single run with the multisize subset loss; size n is the prefix.

All use the base method of the given config (gm = IDC in the paper) and the same loop budgets;
every run is resumable in its own subdirectory of `run_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from condenser.condense import CondenseConfig, CondenseResult, condense
from condenser.data import ImageDataset
from condenser.errors import CondenserError
from condenser.methods.selection import FeatureSource
from condenser.registry import Registry


@dataclass
class SizedSets:
    """Stored synthetic images for every size 1..ipc_max, in record order r = i*C + c per size."""

    name: str  # A | B | C | mdc
    ipc_max: int
    num_classes: int
    factor: int
    nested: bool  # True: size n is the first n*C records of size ipc_max
    sets: dict[int, torch.Tensor]  # n -> images [n*C, ch, H, W] (normalised float32, CPU)
    runs: list[CondenseResult]

    def get(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored images and labels of size n (f*f patches each when factor > 1: condenser.methods.formation)."""
        if n not in self.sets:
            raise CondenserError(f"baseline {self.name}: no set of size {n}; sizes 1..{self.ipc_max}")
        images = self.sets[n]
        return images, torch.arange(self.num_classes).repeat(n)

    @property
    def images_per_class_stored(self) -> int:
        return sum(self.sets) if not self.nested else self.ipc_max

    def provenance(self) -> dict:
        return {
            "baseline": self.name, "nested": self.nested, "ipc_max": self.ipc_max,
            "runs": [r.provenance() for r in self.runs],
            "elapsed_s": sum(r.timings.get("elapsed_s", 0.0) for r in self.runs),
        }


def planned_runs(name: str, cfg: CondenseConfig) -> list[tuple[str, CondenseConfig]]:
    """The independent condensation runs of a baseline, as (run subdirectory, config) pairs."""
    if name == "A":
        return [(f"A-ipc{n}", cfg.with_subset(False, ipc=n)) for n in range(1, cfg.ipc + 1)]
    if name == "B":
        return [(f"B-run{k}", cfg.with_subset(False, ipc=1, init_offset=cfg.init_offset + k)) for k in range(cfg.ipc)]
    if name == "C":
        return [("C", cfg.with_subset(False))]
    if name == "mdc":
        return [("mdc", cfg.with_subset(True))]
    raise CondenserError(f"unknown baseline {name!r}; known: A, B, C, mdc")


def _subdir(run_dir: str | Path | None, name: str) -> Path | None:
    return Path(run_dir) / name if run_dir is not None else None


def prefix_sets(result: CondenseResult, name: str) -> SizedSets:
    """Sizes 1..N of one nested run as prefixes (Baseline C and MDC)."""
    c = result.num_classes
    sets = {n: result.images[: n * c] for n in range(1, result.ipc + 1)}
    return SizedSets(name, result.ipc, c, result.factor, True, sets, [result])


def baseline_a(cfg: CondenseConfig, train_set: ImageDataset, run_dir: str | Path | None = None,
               progress: bool = True, features: FeatureSource | None = None) -> SizedSets:
    """A: condense each size n = 1..N separately (base method, no subset loss; lr_img scales with n)."""
    runs = [condense(run_cfg, train_set, _subdir(run_dir, name), progress=progress, features=features)
            for name, run_cfg in planned_runs("A", cfg)]
    c = train_set.spec.num_classes
    return SizedSets("A", cfg.ipc, c, cfg.factor, False, {r.ipc: r.images for r in runs}, runs)


def baseline_b(cfg: CondenseConfig, train_set: ImageDataset, run_dir: str | Path | None = None,
               progress: bool = True, features: FeatureSource | None = None) -> SizedSets:
    """B: N IPC-1 condensations, run k starting from real image k of each class; size n = runs 0..n-1."""
    runs = [condense(run_cfg, train_set, _subdir(run_dir, name), progress=progress, features=features)
            for name, run_cfg in planned_runs("B", cfg)]
    c = train_set.spec.num_classes
    blocks = torch.cat([r.images for r in runs])  # run k is block k: record k*C + c
    sets = {n: blocks[: n * c] for n in range(1, cfg.ipc + 1)}
    return SizedSets("B", cfg.ipc, c, cfg.factor, True, sets, runs)


def baseline_c(cfg: CondenseConfig, train_set: ImageDataset, run_dir: str | Path | None = None,
               progress: bool = True, features: FeatureSource | None = None) -> SizedSets:
    """C: one condensation to N without the subset loss; size n is its prefix (subset degradation)."""
    [(name, run_cfg)] = planned_runs("C", cfg)
    result = condense(run_cfg, train_set, _subdir(run_dir, name), progress=progress, features=features)
    return prefix_sets(result, "C")


def multisize_sets(cfg: CondenseConfig, train_set: ImageDataset, run_dir: str | Path | None = None,
                   progress: bool = True, features: FeatureSource | None = None) -> SizedSets:
    """MDC: one condensation to N with the subset loss; size n is its prefix."""
    [(name, run_cfg)] = planned_runs("mdc", cfg)
    result = condense(run_cfg, train_set, _subdir(run_dir, name), progress=progress, features=features)
    return prefix_sets(result, "mdc")


Builder = Callable[..., SizedSets]
BASELINES: Registry[Builder] = Registry("baseline")
BASELINES.add("A", baseline_a)
BASELINES.add("B", baseline_b)
BASELINES.add("C", baseline_c)
BASELINES.add("mdc", multisize_sets)


def build_sized_sets(name: str, cfg: CondenseConfig, train_set: ImageDataset,
                     run_dir: str | Path | None = None, progress: bool = True,
                     features: FeatureSource | None = None) -> SizedSets:
    """Any of A, B, C, mdc by name (UnknownNameError lists them); `features`: the selection inits' network."""
    return BASELINES.get(name)(cfg, train_set, run_dir, progress=progress, features=features)
