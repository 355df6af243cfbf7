"""Settings of one benchmark run and the budgets it runs under."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from condenser.build import BuildConfig
from condenser.errors import CondenserError
from condenser.evaluate.sizes import LABEL_MODES
from condenser.profiles import Profile, get_profile

# Every method the benchmark knows, in table order: the paper's three baselines, MDC, and the honest
# control (a random real subset of the same size; docs/RESULTS.md).
METHODS: tuple[str, ...] = ("A", "B", "C", "mdc", "random")
DISPLAY_NAMES = {"A": "A (separate per size)", "B": "B (N IPC-1 runs)", "C": "C (one run, prefixes)",
                 "mdc": "MDC (ours)", "random": "Random real"}
REFERENCE = "C"  # Diff. is measured against Baseline C (MDC paper Table 2, column "Diff.")


class BenchConfigError(CondenserError, ValueError):
    """The benchmark was asked for a method, label mode or size it cannot run."""


@dataclass(frozen=True)
class BenchConfig:
    dataset: str = "fashion-mnist"
    ipc: int = 10
    profile: str = "cpu"
    methods: tuple[str, ...] = METHODS
    labels: tuple[str, ...] = LABEL_MODES
    seeds: int | None = None  # evaluation seeds per cell group; None: the bench budget's
    seed: int = 0  # condensation, relabelling and random-subset seed (one fixed set per method)
    out: str | None = None  # None: results/<dataset>-ipc<N>-<profile>
    device: str = "auto"
    data_root: str | None = None
    teacher_path: str | None = None
    views: int | None = None  # soft-label views per image; None: the bench budget's
    workers: int | None = None  # processes for cells and (CPU) A/B runs; None: one per core (<= 8), one on CUDA
    condense_overrides: dict = field(default_factory=dict)  # CondenseConfig fields, all methods alike
    eval_overrides: dict = field(default_factory=dict)  # EvalBudget fields

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BenchConfigError(f"unknown bench methods {unknown}; known: {', '.join(METHODS)}")
        bad = [m for m in self.labels if m not in LABEL_MODES]
        if bad or not self.labels:
            raise BenchConfigError(f"label modes must be among {LABEL_MODES}, got {list(self.labels)}")
        if self.ipc < 1:
            raise BenchConfigError(f"ipc must be >= 1, got {self.ipc}")

    @property
    def name(self) -> str:
        return f"{self.dataset}-ipc{self.ipc}-{self.profile}".replace("/", "_").replace(":", "_")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    def as_dict(self) -> dict:
        return asdict(self)

    def bench_profile(self) -> Profile:
        """The profile with its bench budgets in place of the condense/evaluate sections, plus overrides."""
        return bench_profile(get_profile(self.profile), self.eval_overrides, self.seeds)

    def build_config(self) -> BuildConfig:
        """The build settings every method shares (teacher, relabelling, packing); no trainer embedded."""
        return BuildConfig(
            dataset=self.dataset, ipc=self.ipc, profile=self.profile, views=self.views,
            soft_labels="teacher" if "soft" in self.labels else "none", teacher_path=self.teacher_path,
            embed_trainer=False, seed=self.seed, device=self.device, data_root=self.data_root,
            condense_overrides=dict(self.condense_overrides),
        )


def bench_profile(profile: Profile, eval_overrides: dict | None = None, seeds: int | None = None) -> Profile:
    bench = profile.bench
    out = replace(profile, condense=bench.condense or profile.condense, evaluate=bench.evaluate or profile.evaluate)
    evaluate = dict(eval_overrides or {})
    if seeds is not None:
        evaluate["seeds"] = seeds
    return out.with_overrides(evaluate=evaluate)
