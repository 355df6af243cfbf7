"""Teacher training ("squeeze"): a network trained on the full real data.

Teachers are cached by (dataset, architecture, profile, data fingerprint) under
`$MULTISIZE_CACHE/teachers/`, so a build trains one at most once per content of the data: changed images
train a new teacher. Training checkpoints every epoch (model, optimizer, scheduler and RNG state,
written atomically) and resumes from the last finished epoch after an interrupt; the result is the
same as an uninterrupted run. The finished teacher is a safetensors file plus a JSON sidecar, so
loading it never unpickles code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from condenser.augment import DSA, DSAConfig
from condenser.checkpoint import atomic_save_safetensors, atomic_write_bytes, config_hash
from condenser.compiled import compiled
from condenser.config.tree import Config, TeacherBudget, TeacherSection
from condenser.data import ImageDataset, data_fingerprint, load_dataset
from condenser.device import resolve_device, resolve_precision
from condenser.errors import CheckpointError
from condenser.methods.selection import FeatureSource
from condenser.models import build_model
from condenser.paths import teacher_dir
from condenser.progress import progress_bar
from condenser.resume import Checkpoint, Interrupted, StopAfter, restore_rng_state, rng_state, run_identity
from condenser.training import TensorSource, accuracy, one_hot, sgd, train_epoch
from formats.atomic import remove_stale_temps


def _profile_tree(profile: str | Config) -> Config:
    from condenser.profiles import get_profile  # profiles -> tree -> ... -> this module: imported when used

    return get_profile(profile) if isinstance(profile, str) else profile


_LATER_BUDGET_FIELDS = {"precision": "fp32", "compile": False}  # TeacherBudget fields added on 2026-12-03


@dataclass(frozen=True)
class TeacherConfig:
    """One teacher's identity: the data, the network, the budget (the tree's `teacher` section) and the seed."""

    dataset: str = "fashion-mnist"
    arch: str = "convnet"
    profile: str = "cpu"  # the profile the budget came from: the cache name says it
    budget: TeacherBudget = field(default_factory=lambda: _profile_tree("cpu").teacher.budget())
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    data_root: str | None = None  # where the data is looked for first; not part of the identity
    settings: dict | None = field(default=None, compare=False)  # the command's resolved tree, for the metadata

    def __post_init__(self) -> None:
        if isinstance(self.budget, TeacherSection):  # the tree's section: its budget alone is the identity
            object.__setattr__(self, "budget", self.budget.budget())

    @classmethod
    def from_profile(cls, dataset: str, arch: str | None, profile: str | Config, seed: int = 0,
                     data_root: str | None = None, **budget_overrides) -> TeacherConfig:
        """The teacher of `profile` (a profile name, or a command's resolved tree): its `teacher` section, with
        `arch` (None: the section's) and `budget_overrides` in place."""
        tree = _profile_tree(profile)
        budget = replace(tree.teacher.budget(), **budget_overrides)
        return cls(dataset=dataset, arch=arch or tree.teacher.arch, profile=tree.name, budget=budget, seed=seed,
                   model_kwargs=dict(tree.teacher.model_kwargs), data_root=data_root,
                   settings=None if isinstance(profile, str) else tree.as_dict())

    @property
    def data(self) -> str:
        """Fingerprint of the train and test splits (the teacher learns one and is scored on the other);
        the first use loads them, once per process."""
        return data_fingerprint(self.dataset, self.data_root)

    @property
    def name(self) -> str:
        """Cache key: dataset, arch, profile and data fingerprint, plus a hash when budget or seed differ from
        the profile's."""
        base = f"{self.dataset}-{self.arch}-{self.profile}".replace("/", "_").replace(":", "_")
        keyed = f"{base}-{self.data[:8]}"
        if self.budget == _profile_tree(self.profile).teacher.budget() and self.seed == 0 and not self.model_kwargs:
            return keyed
        return f"{keyed}-{config_hash(self.as_dict())[:8]}"

    def as_dict(self) -> dict:
        """The identity (what the checkpoint hash and the metadata record): the fields but data_root, + data.
        The budget's later fields are left out at their defaults, so teachers cached before them keep their names."""
        out = asdict(self)
        del out["data_root"], out["settings"]
        for name, default in _LATER_BUDGET_FIELDS.items():
            if out["budget"][name] == default:
                del out["budget"][name]
        return {**out, "data": self.data}


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: dict

    @property
    def test_accuracy(self) -> float:
        return float(self.meta["test_accuracy"])

    def features(self) -> FeatureSource:
        """This teacher as the feature extractor of a selection init, keyed by its training configuration."""
        return FeatureSource(self.model, f"teacher-{config_hash(self.meta.get('config') or self.meta)[:12]}")


def teacher_paths(config: TeacherConfig, root: Path | None = None) -> tuple[Path, Path, Path]:
    """(weights, metadata, in-progress checkpoint) paths of a cached teacher."""
    base = (root or teacher_dir()) / config.name
    return base / "teacher.safetensors", base / "teacher.json", base / "checkpoint.pt"


def _cap(ds: ImageDataset, limit: int | None) -> ImageDataset:
    if limit is None or limit >= len(ds):
        return ds
    # A class-balanced cap keeps smoke teachers meaningful.
    per_class = max(1, limit // ds.spec.num_classes)
    idx = torch.cat([ds.first_of_class(c, min(per_class, len(ds.class_indices(c)))) for c in
                     range(ds.spec.num_classes)])
    return ds.subset(idx)


def teacher_checkpoint(config: TeacherConfig, root: Path | None = None) -> Checkpoint:
    """The in-progress checkpoint of a teacher run, which only this configuration and data may resume."""
    return Checkpoint(teacher_paths(config, root)[2], run_identity(config.as_dict(), config.data),
                      "teacher configuration")


def train_teacher(
    config: TeacherConfig,
    data_root: str | Path | None = None,
    device: str = "auto",
    root: Path | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> Teacher:
    """Train (or resume, or load from the cache) the teacher described by `config`.

    `stop_after=k` raises condenser.resume.Interrupted once k epochs ran in this call, leaving a resumable
    checkpoint: how tests simulate an interrupt, and how the prior pool snapshots a run epoch by epoch.
    """
    if data_root is not None and config.data_root is None:
        config = replace(config, data_root=str(data_root))
    weights_path, meta_path, ckpt_path = teacher_paths(config, root)
    for target in (weights_path, meta_path, ckpt_path):  # what a run killed mid-write left behind
        remove_stale_temps(target)
    if weights_path.exists() and meta_path.exists():
        return load_teacher(weights_path)
    run = _start(config, resolve_device(device))
    checkpoint = teacher_checkpoint(config, root)
    _restore(run, checkpoint.load(), log)
    started = time.time()
    _train_epochs(run, checkpoint, StopAfter(stop_after), log)
    teacher = _finish(run, weights_path, meta_path, time.time() - started)
    checkpoint.remove()
    log(f"teacher {config.name}: test accuracy {teacher.test_accuracy:.2f}% -> {weights_path}")
    return teacher


@dataclass
class _TeacherRun:
    """A teacher's training state: what the epochs advance and what a checkpoint saves."""

    config: TeacherConfig
    device: torch.device
    train: ImageDataset
    test: ImageDataset
    mean: torch.Tensor
    std: torch.Tensor
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    source: TensorSource
    steps_per_epoch: int
    epoch: int = 0  # epochs finished
    history: list[dict] = field(default_factory=list)


def _start(config: TeacherConfig, dev: torch.device) -> _TeacherRun:
    """Data, network, optimiser and schedule of a fresh run, seeded in the order results depend on."""
    budget = config.budget
    train = _cap(load_dataset(config.dataset, "train", root=config.data_root), budget.max_train)
    test = _cap(load_dataset(config.dataset, "test", root=config.data_root), budget.max_test)
    spec = train.spec
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1).to(dev)
    std = torch.tensor(spec.std).view(1, -1, 1, 1).to(dev)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, spec.image_shape, spec.num_classes, **config.model_kwargs).to(dev)
    optimizer = sgd(model, budget.lr, budget.momentum, budget.weight_decay)
    steps_per_epoch = -(-len(train) // budget.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=budget.lr, epochs=budget.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    dsa = DSA(DSAConfig(strategy="crop_flip"), allow_flip=spec.allow_flip) if budget.augment else None
    source = TensorSource(
        images=train.images.to(dev),
        targets=one_hot(train.labels, spec.num_classes).to(dev),
        mean=mean,
        std=std,
        augment=(lambda x, g: dsa(x, generator=g)) if dsa else None,
    )
    return _TeacherRun(config, dev, train, test, mean, std, model, optimizer, scheduler, generator, source,
                       steps_per_epoch)


def _state(run: _TeacherRun) -> dict:
    """What a checkpoint saves after an epoch: weights, optimiser, schedule, the batch-order generator."""
    return {"epoch": run.epoch, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "rng": rng_state(run.generator), "history": run.history}


def _restore(run: _TeacherRun, state: dict | None, log: Callable[[str], None]) -> None:
    """Continue from a saved `_state` (None: start at epoch 0)."""
    if state is None:
        return
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"], run.generator)
    run.epoch, run.history = int(state["epoch"]), list(state["history"])
    log(f"resuming teacher {run.config.name} after epoch {run.epoch}/{run.config.budget.epochs}")


def _train_epochs(run: _TeacherRun, checkpoint: Checkpoint, stop: StopAfter, log: Callable[[str], None]) -> None:
    """The remaining epochs under one progress bar, checkpointing after each (Interrupted on `stop`)."""
    budget, name = run.config.budget, run.config.name
    with progress_bar() as progress:
        task = progress.add_task(f"teacher {name}", total=budget.epochs * run.steps_per_epoch,
                                 completed=run.epoch * run.steps_per_epoch)
        step_model = compiled(run.model) if budget.compile else run.model  # shares run.model's parameters
        precision = resolve_precision(budget.precision, run.device)
        while run.epoch < budget.epochs:
            loss = train_epoch(
                step_model, run.source, run.optimizer, budget.batch_size, run.generator, run.device,
                step_scheduler=run.scheduler, on_step=lambda: progress.advance(task), precision=precision,
            )
            run.epoch += 1
            run.history.append({"epoch": run.epoch, "loss": loss})
            log(f"teacher {name}: epoch {run.epoch}/{budget.epochs} loss {loss:.4f}")
            progress.update(task, description=f"teacher {name} epoch {run.epoch} loss {loss:.3f}")
            checkpoint.save(_state(run))
            if stop.count(run.epoch, budget.epochs):
                raise Interrupted(f"teacher {name}", "epochs", run.epoch, budget.epochs)


def _finish(run: _TeacherRun, weights_path: Path, meta_path: Path, seconds: float) -> Teacher:
    """Score the trained teacher on the test split and store it (safetensors + JSON sidecar, atomically)."""
    config, spec = run.config, run.train.spec
    test_acc = accuracy(run.model, run.test.images, run.test.labels, run.device, run.mean, run.std)
    meta = {
        "config": config.as_dict(),
        "dataset": config.dataset,
        "arch": config.arch,
        "in_shape": list(spec.image_shape),
        "num_classes": spec.num_classes,
        "model_kwargs": config.model_kwargs,
        "test_accuracy": test_acc,
        "train_images": len(run.train),
        "test_images": len(run.test),
        "history": run.history,
        "train_seconds_this_call": seconds,
        "device": str(run.device),
        "settings": config.settings,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    atomic_save_safetensors(state, weights_path)
    atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
    return Teacher(model=run.model.eval(), meta=meta)


def load_teacher(weights_path: str | Path, device: str = "auto") -> Teacher:
    """Load a cached teacher from its safetensors file and JSON sidecar."""
    weights_path = Path(weights_path)
    meta_path = weights_path.with_name("teacher.json") if weights_path.name == "teacher.safetensors" \
        else weights_path.with_suffix(".json")
    if not weights_path.exists() or not meta_path.exists():
        raise CheckpointError(f"teacher not found: need {weights_path} and {meta_path}")
    meta = json.loads(meta_path.read_text())
    kwargs = meta.get("model_kwargs", {})
    model = build_model(meta["arch"], tuple(meta["in_shape"]), meta["num_classes"], **kwargs)
    model.load_state_dict(load_file(str(weights_path)))
    return Teacher(model=model.to(resolve_device(device)).eval(), meta=meta)
