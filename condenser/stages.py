"""Build stages: how `condenser build` turns a method name into condensed images.

A stage takes the build settings and the real training set and returns the IPC-major images, the models
whose ensemble labels them, and what the header should record. `STAGES` maps every buildable method name
to its stage (gm/dm: the condense loop with the multisize wrapper; sre2l/gvbsm/teddy: the decoupled
statistics-matching engine), so the build dispatches by lookup, not by an if-chain. Stages register beside
their definition (condenser.build, condenser.statmatch.stage), modules that import this one, so the first
lookup imports them (condenser.registry providers).

A stage stopped on purpose (`stop_after`) raises condenser.resume.Interrupted from the loop it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from condenser.registry import Registry

if TYPE_CHECKING:
    from condenser.condense import CondenseResult
    from condenser.teacher import Teacher


@dataclass
class StageResult:
    result: CondenseResult  # images/labels in record order, timings, the run's own provenance
    relabel_models: list[nn.Module]  # ensemble for the soft-label views (empty: hard labels only)
    teacher: Teacher | None  # the primary teacher (BuildOutput.teacher)
    provenance: dict[str, Any] = field(default_factory=dict)  # method, base_method, teacher(s), ...


# (cfg: BuildConfig, settings: Config (the resolved tree), train: ImageDataset, log, stop_after, seconds) -> StageResult
Stage = Callable[..., StageResult]
STAGES: Registry[Stage] = Registry("build method", providers=("condenser.build", "condenser.statmatch.stage"))
