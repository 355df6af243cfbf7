"""The settings tree: every setting of the condenser in one nested, frozen, typed dataclass (docs/config.md).

    Config
      teacher    TeacherSection   the labelling network and its training budget
      condense   CondenseConfig   the condense loop (T, E, image lr, network), with `multisize` (MultisizeConfig)
      method     MethodSection    `name` (the base method) and every method's settings: gm, dm, sre2l, gvbsm, teddy
      relabel    RelabelConfig    soft-label views: how many, their crops and mixes, the temperature
      pack       PackSection      the .mdc: pixel encoding, soft-label codec, the embedded device trainer
      evaluate   EvalBudget       the pinned evaluation protocol (also the embedded trainer's network width)
      quick      QuickEval        `condenser eval`'s default protocol: sizes, labels, changes to `evaluate`
      bench      BenchOverlay     the settings `condenser bench` runs with in place of the tree's own

Every default is written once, in the section's dataclass; the defaults are the multisize paper's protocol
(MDC paper §4.1, Appendix B.1), and the named profiles (condenser.profiles) change what they must. A stage
receives its own section only. Sections that live beside their stage (CondenseConfig, MultisizeConfig, the
method settings, RecoverConfig, RelabelConfig) are nested here as they are, not copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any

from condenser.condense import CondenseConfig
from condenser.config.schema import ConfigError, Over, as_dict, job_fields, setting_names, updated
from condenser.config.sources import nested
from condenser.device import PRECISIONS
from condenser.methods.dm import DMSettings
from condenser.methods.gm import GMSettings
from condenser.relabel import RelabelConfig
from condenser.statmatch.recover import RecoverConfig
from condenser.statmatch.settings import DecoupledSettings, preset

LABEL_MODES = ("hard", "soft")


def _one_of(section: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(section, name)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _at_least(section: object, minimum: float, *names: str, strict: bool = False) -> None:
    """Range checks of numeric settings: >= minimum, or > minimum when `strict` (a temperature > 0); a None
    optional setting passes."""
    for name in names:
        value = getattr(section, name)
        if value is not None and not (value > minimum if strict else value >= minimum):
            raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")


@dataclass(frozen=True)
class TeacherBudget:
    """How a teacher trains: SGD with a one-cycle schedule, crop + flip augmentation (condenser/teacher.py)."""

    epochs: int = 50
    batch_size: int = 128
    augment: bool = True  # random crop + flip (flip where the dataset allows it)
    lr: float = 0.05  # the one-cycle schedule's peak
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_train: int | None = None  # cap on training images (smoke only)
    max_test: int | None = None  # cap on test images (smoke only)
    precision: str = "fp32"  # the training step's arithmetic, as evaluate.precision (condenser/training.py)
    compile: bool = False  # torch.compile the training step (condenser/compiled.py)

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "batch_size", "max_train", "max_test")
        _one_of(self, "precision", PRECISIONS)


@dataclass(frozen=True)
class TeacherSection(TeacherBudget):
    """The `teacher` section: the network that labels the soft-label views, and its budget."""

    arch: str = "convnet"
    model_kwargs: dict = field(default_factory=dict)  # the network's builder arguments, e.g. {"width": 64}

    def budget(self) -> TeacherBudget:
        """The training budget alone (a cached teacher's identity: condenser.teacher.TeacherConfig)."""
        return TeacherBudget(**{f.name: getattr(self, f.name) for f in fields(TeacherBudget)})


@dataclass(frozen=True)
class EvalBudget:
    """The pinned evaluation protocol (docs/multisize.md): SGD 0.01 / 0.9 / 5e-4, multi-step LR, DSA + CutMix."""

    epochs: int = 1000
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (2 / 3, 5 / 6)  # fractions of `epochs`
    gamma: float = 0.2
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    cutmix_p: float = 0.5
    cutmix_beta: float = 1.0
    seeds: int = 3
    width: int = 128  # the ConvNet-D3 width, of server evaluation and of the embedded device trainer
    max_test: int | None = None  # a seeded stratified sample of the test split; None = the whole split
    # student loss on soft-label views: soft_ce | mse_gt (G-VBSM: logit MSE + gamma*CE) | kl (SRe2L: tau^2 * KL)
    loss: str = "soft_ce"
    loss_gamma: float = 0.1  # gamma of mse_gt (G-VBSM: 0.1 ImageNet/Tiny, 0.15 CIFAR)
    loss_temperature: float = 4.0  # tau of kl, the student's and the re-tempered teacher's (SRe2L: 20 best)
    # arithmetic of the student's training step (condenser/training.py): fp32, or bf16 autocast (convolutions and
    # matmuls in bfloat16, parameters, optimizer and loss in float32; fast only where the hardware has bf16), or
    # auto: bf16 where it is fast, else fp32 (condenser/device.py resolve_precision, on the machine that trains)
    precision: str = "fp32"
    compile: bool = False  # torch.compile the student's step (condenser/compiled.py); not bit-identical to eager

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "batch_size", "seeds", "width", "max_test")
        _at_least(self, 0, "loss_temperature", strict=True)
        _one_of(self, "precision", PRECISIONS)


@dataclass(frozen=True)
class PackSection:
    """The `pack` section: how the .mdc stores pixels and soft labels (docs/format.md), and its device trainer."""

    codec: str = "topk-u8"
    topk: int | None = None  # None: min(num_classes, 10)
    pixels: str = "float16"
    embed_trainer: bool = True
    trainer_batch_size: int = 64

    def __post_init__(self) -> None:
        from formats import CODECS
        from formats.pixels import PIXEL_DTYPES

        if self.codec not in CODECS:
            raise ConfigError(f"unknown soft-label codec {self.codec!r}; valid: {', '.join(CODECS.names())}")
        if self.pixels not in PIXEL_DTYPES:
            raise ConfigError(f"unknown pixel encoding {self.pixels!r}; valid: {', '.join(PIXEL_DTYPES)}")
        _at_least(self, 1, "topk", "trainer_batch_size")


@dataclass(frozen=True)
class QuickEval:
    """`condenser eval`'s default protocol (`--protocol quick`): a first honest number in minutes.

    `sizes` are kept where the file holds them, plus the file's largest; `evaluate` gives the settings of the
    tree's `evaluate` that the quick budget changes. The pinned protocol is the tree's `evaluate`, every size.
    """

    evaluate: Annotated[dict, Over(EvalBudget)] = field(default_factory=dict)  # {}: the tree's own evaluation
    sizes: tuple[int, ...] = (1, 2, 5, 10)
    labels: tuple[str, ...] = ("soft",)  # a file without soft-label views falls back to hard

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"sizes must be a non-empty list of sizes >= 1, got {list(self.sizes)}")
        if not self.labels or any(m not in LABEL_MODES for m in self.labels):
            raise ConfigError(f"labels must be among {', '.join(LABEL_MODES)}, got {list(self.labels)}")


@dataclass(frozen=True)
class MethodSection:
    """The `method` section: which method condenses (`name`) and every method's own settings."""

    name: str = "gm"
    gm: GMSettings = field(default_factory=GMSettings)
    dm: DMSettings = field(default_factory=DMSettings)
    sre2l: DecoupledSettings = field(default_factory=lambda: preset("sre2l"))
    gvbsm: DecoupledSettings = field(default_factory=lambda: preset("gvbsm"))
    teddy: DecoupledSettings = field(default_factory=lambda: preset("teddy"))

    def __post_init__(self) -> None:
        if self.name not in self.methods():
            raise ConfigError(f"unknown method {self.name!r}; valid: {', '.join(sorted(self.methods()))}")

    @classmethod
    def methods(cls) -> list[str]:
        """The methods that have a settings section (every method a build can run)."""
        return [name for name in setting_names(cls) if name != "name"]

    def settings(self, name: str | None = None) -> Any:
        """The settings of method `name` (default: the chosen one)."""
        return getattr(self, name or self.name)


@dataclass(frozen=True)
class BenchOverlay:
    """The `bench` section: settings `condenser bench` runs with in place of the tree's own, section by section.

    `condenser bench` trains 2N+2 condensations and thousands of evaluations, so a profile may give it lighter
    budgets, the same for every method. Each field holds only the settings it changes (`{"epochs": 100}`), so
    every other setting stays the tree's.
    """

    teacher: Annotated[dict, Over(TeacherSection)] = field(default_factory=dict)
    condense: Annotated[dict, Over(CondenseConfig)] = field(default_factory=dict)
    method: Annotated[dict, Over(MethodSection)] = field(default_factory=dict)
    relabel: Annotated[dict, Over(RelabelConfig)] = field(default_factory=dict)
    pack: Annotated[dict, Over(PackSection)] = field(default_factory=dict)
    evaluate: Annotated[dict, Over(EvalBudget)] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The whole settings tree; `name` is the profile it was resolved from (condenser.profiles)."""

    name: str = "paper"
    teacher: TeacherSection = field(default_factory=TeacherSection)
    condense: CondenseConfig = field(default_factory=CondenseConfig)
    method: MethodSection = field(default_factory=MethodSection)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    pack: PackSection = field(default_factory=PackSection)
    evaluate: EvalBudget = field(default_factory=EvalBudget)
    quick: QuickEval = field(default_factory=QuickEval)
    bench: BenchOverlay = field(default_factory=BenchOverlay)

    def __post_init__(self) -> None:
        check_relabel(self.relabel)

    def as_dict(self) -> dict[str, Any]:
        """The plain-dict form every result and file header records."""
        return {"name": self.name, **as_dict(self)}

    def updated(self, changes: Mapping[str, Any], where: str = "the caller") -> Config:
        """A copy with `changes` applied: a nested mapping of the tree's shape, or dotted keys
        (`{"relabel.views": 2}`); `where` names their source in errors."""
        return updated(self, nested(changes), where)

    def benched(self) -> Config:
        """The tree `condenser bench` runs: the bench overlay's settings in place of the tree's own."""
        overlay = as_dict(self.bench)
        swaps = {name: updated(getattr(self, name), delta, "the bench overlay", name)
                 for name, delta in overlay.items() if delta}
        try:
            return replace(self, bench=BenchOverlay(), **swaps)
        except ConfigError as exc:  # a check across sections (relabel.views): name the overlay
            raise ConfigError(f"bench: {exc}") from None

    @property
    def quick_budget(self) -> EvalBudget:
        """The quick protocol's training and test budget: the tree's evaluation with quick.evaluate's changes."""
        return updated(self.evaluate, self.quick.evaluate, "the quick overlay", "quick.evaluate")

    def checked(self) -> Config:
        """The tree, once the names it gives are known to their registries (models, student losses)."""
        from condenser.evaluate.losses import STUDENT_LOSSES
        from condenser.models import REGISTRY

        bench = self.benched()
        names = [("teacher.arch", self.teacher.arch, REGISTRY), ("condense.model", self.condense.model, REGISTRY),
                 ("evaluate.loss", self.evaluate.loss, STUDENT_LOSSES),
                 ("quick.evaluate.loss", self.quick_budget.loss, STUDENT_LOSSES),
                 ("bench.teacher.arch", bench.teacher.arch, REGISTRY),
                 ("bench.evaluate.loss", bench.evaluate.loss, STUDENT_LOSSES)]
        for key, value, registry in names:
            if value not in registry:
                hint = " (`condenser models` describes them)" if registry is REGISTRY else ""
                raise ConfigError(f"unknown {registry.kind} {value!r} ({key}); valid: {', '.join(registry.names())}"
                                  f"{hint}")
        return self


def check_relabel(relabel: RelabelConfig) -> None:
    """RelabelConfig's ranges: at least one view per image (no 0 that means "the default"), a usable batch."""
    if relabel.views < 1:
        raise ConfigError(f"relabel.views must be >= 1, got {relabel.views} (hard labels only: --soft-labels none)")
    if relabel.batch_size < 1 or relabel.temperature <= 0 or not 0 <= relabel.mix_p <= 1:
        raise ConfigError(f"relabel: batch_size >= 1, temperature > 0 and 0 <= mix_p <= 1 required, got "
                          f"{relabel.batch_size}, {relabel.temperature}, {relabel.mix_p}")


# What each command sets from its own arguments rather than from the tree.
job_fields(Config, name="--profile")
job_fields(CondenseConfig, method="method.name", ipc="--ipc", init_offset="the baseline's run",
           method_settings="method.<name>", seed="--seed", device="--device")
job_fields(RecoverConfig, seed="--seed")
job_fields(RelabelConfig, seed="--seed")
