"""Settings of one benchmark run: what it compares, and the settings tree (with the bench overlay) it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from condenser.build import BuildConfig
from condenser.config.tree import Config
from condenser.errors import CondenserError
from condenser.evaluate.controls import CONTROL_METHOD, FORMED_CONTROL_METHOD
from condenser.evaluate.sizes import LABEL_MODES
from condenser.profiles import get_profile

# Every method the benchmark knows, in table order: the paper's three baselines, MDC, and the honest controls
# (docs/methods.md "Controls"): `random`, k random real images per class in the same storage, and, where the
# formation factor f (condense.factor) is > 1, `random-formed`, k*f*f random real images per class formed
# into the same stored layout. Every condensed method stores f*f patches per image; the controls are
# condenser/evaluate/controls.py's.
METHODS: tuple[str, ...] = ("A", "B", "C", "mdc", CONTROL_METHOD, FORMED_CONTROL_METHOD)
DISPLAY_NAMES = {"A": "A (separate per size)", "B": "B (N IPC-1 runs)", "C": "C (one run, prefixes)",
                 "mdc": "MDC (ours)", CONTROL_METHOD: "Random real", FORMED_CONTROL_METHOD: "Random real, formed"}
REFERENCE = "C"  # Diff. is measured against Baseline C (MDC paper Table 2, column "Diff.")


def default_methods(factor: int) -> tuple[str, ...]:
    """Every method that exists at formation `factor`: random-formed only where factor > 1."""
    return tuple(m for m in METHODS if m != FORMED_CONTROL_METHOD or factor > 1)


def method_factor(method: str, factor: int) -> int:
    """The formation factor a method's files are stored with: the random control's is 1, every other's `factor`."""
    return 1 if method == CONTROL_METHOD else factor


class BenchConfigError(CondenserError, ValueError):
    """The benchmark was asked for a method, label mode or size it cannot run."""


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: the data and largest size, the methods and label modes, and the settings tree it runs
    with (`settings`: resolved with the profile's bench overlay in place, condenser.profiles.resolve(bench=True)).

    `methods` None: every method that exists at the tree's formation factor (`default_methods`); naming
    random-formed at factor 1 is a BenchConfigError (it would be the random control again).
    """

    dataset: str = "fashion-mnist"
    ipc: int = 10
    settings: Config = field(default_factory=lambda: get_profile("cpu").benched())
    methods: tuple[str, ...] | None = None
    labels: tuple[str, ...] = LABEL_MODES
    seed: int = 0  # condensation, relabelling and random-subset seed (one fixed set per method)
    out: str | None = None  # None: results/<dataset>-ipc<N>-<profile>
    device: str = "auto"
    data_root: str | None = None
    teacher_path: str | None = None
    workers: int | None = None  # processes for cells and (CPU) A/B runs; None: one per core (<= 8), one on CUDA

    def __post_init__(self) -> None:
        if self.methods is None:
            object.__setattr__(self, "methods", default_methods(self.factor))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BenchConfigError(f"unknown bench methods {unknown}; known: {', '.join(METHODS)}")
        if FORMED_CONTROL_METHOD in self.methods and self.factor == 1:
            raise BenchConfigError(f"{FORMED_CONTROL_METHOD} needs condense.factor > 1 (it forms f*f real images into "
                                   f"each stored image); at factor 1 it is {CONTROL_METHOD} itself: drop it or "
                                   "--set condense.factor=2")
        bad = [m for m in self.labels if m not in LABEL_MODES]
        if bad or not self.labels:
            raise BenchConfigError(f"label modes must be among {LABEL_MODES}, got {list(self.labels)}")
        if self.ipc < 1:
            raise BenchConfigError(f"ipc must be >= 1, got {self.ipc}")

    @property
    def factor(self) -> int:
        """The formation factor every condensed method (and random-formed) stores with: condense.factor."""
        return self.settings.condense.factor

    @property
    def profile(self) -> str:
        return self.settings.name

    @property
    def name(self) -> str:
        return f"{self.dataset}-ipc{self.ipc}-{self.profile}".replace("/", "_").replace(":", "_")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    def as_dict(self) -> dict:
        """The run's own fields (the tree is recorded beside them, as `settings`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}

    def build_config(self) -> BuildConfig:
        """The build settings every method shares (teacher, relabelling, packing); no trainer embedded."""
        settings = self.settings.updated({"pack": {"embed_trainer": False}}, "the bench")
        return BuildConfig(
            dataset=self.dataset, ipc=self.ipc, settings=settings,
            soft_labels="teacher" if "soft" in self.labels else "none", teacher_path=self.teacher_path,
            seed=self.seed, device=self.device, data_root=self.data_root,
        )
