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
from condenser.checkpoint import (
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write_bytes,
    config_hash,
    restore_rng_state,
    rng_state,
    safe_torch_load,
)
from condenser.data import ImageDataset, data_fingerprint, load_dataset
from condenser.device import resolve_device
from condenser.errors import CheckpointError
from condenser.models import build_model
from condenser.paths import teacher_dir
from condenser.profiles import TeacherBudget, get_profile
from condenser.progress import progress_bar
from condenser.training import TensorSource, accuracy, one_hot, sgd, train_epoch
from formats.atomic import remove_stale_temps


@dataclass(frozen=True)
class TeacherConfig:
    dataset: str = "fashion-mnist"
    arch: str = "convnet"
    profile: str = "cpu"
    budget: TeacherBudget = field(default_factory=lambda: get_profile("cpu").teacher)
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    data_root: str | None = None  # where the data is looked for first; not part of the identity

    @classmethod
    def from_profile(cls, dataset: str, arch: str, profile: str, seed: int = 0, data_root: str | None = None,
                     **budget_overrides) -> TeacherConfig:
        budget = get_profile(profile).teacher
        if budget_overrides:
            budget = replace(budget, **budget_overrides)
        return cls(dataset=dataset, arch=arch, profile=profile, budget=budget, seed=seed, data_root=data_root)

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
        if self.budget == get_profile(self.profile).teacher and self.seed == 0 and not self.model_kwargs:
            return keyed
        return f"{keyed}-{config_hash(self.as_dict())[:8]}"

    def as_dict(self) -> dict:
        """The identity (what the checkpoint hash and the metadata record): the fields but data_root, + data."""
        out = asdict(self)
        del out["data_root"]
        return {**out, "data": self.data}


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: dict

    @property
    def test_accuracy(self) -> float:
        return float(self.meta["test_accuracy"])


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


def train_teacher(
    config: TeacherConfig,
    data_root: str | Path | None = None,
    device: str = "auto",
    root: Path | None = None,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] = print,
) -> Teacher:
    """Train (or resume, or load from the cache) the teacher described by `config`.

    `stop_after_epochs` ends the run early after that many epochs *in this call*, leaving a
    resumable checkpoint: it is how tests simulate an interrupt.
    """
    if data_root is not None and config.data_root is None:
        config = replace(config, data_root=str(data_root))
    weights_path, meta_path, ckpt_path = teacher_paths(config, root)
    for target in (weights_path, meta_path, ckpt_path):  # what a run killed mid-write left behind
        remove_stale_temps(target)
    if weights_path.exists() and meta_path.exists():
        return load_teacher(weights_path)

    dev = resolve_device(device)
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

    digest = config_hash(config.as_dict())
    start_epoch, history = 0, []
    if ckpt_path.exists():
        state = safe_torch_load(ckpt_path)
        if state.get("config_hash") != digest:
            raise CheckpointError(
                f"{ckpt_path} belongs to a different teacher configuration; delete it to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"], generator)
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log(f"resuming teacher {config.name} after epoch {start_epoch}/{budget.epochs}")

    started = time.time()
    epochs_run = 0
    with progress_bar() as progress:
        task = progress.add_task(
            f"teacher {config.name}",
            total=budget.epochs * steps_per_epoch,
            completed=start_epoch * steps_per_epoch,
        )
        for epoch in range(start_epoch, budget.epochs):
            loss = train_epoch(
                model, source, optimizer, budget.batch_size, generator, dev,
                step_scheduler=scheduler, on_step=lambda: progress.advance(task),
            )
            history.append({"epoch": epoch + 1, "loss": loss})
            log(f"teacher {config.name}: epoch {epoch + 1}/{budget.epochs} loss {loss:.4f}")
            progress.update(task, description=f"teacher {config.name} epoch {epoch + 1} loss {loss:.3f}")
            atomic_torch_save(
                {
                    "config_hash": digest,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(generator),
                    "history": history,
                },
                ckpt_path,
            )
            epochs_run += 1
            interrupted = stop_after_epochs is not None and epochs_run >= stop_after_epochs
            if interrupted and epoch + 1 < budget.epochs:
                raise TeacherInterrupted(f"stopped after epoch {epoch + 1} on request; rerun to resume")

    test_acc = accuracy(model, test.images, test.labels, dev, mean, std)
    meta = {
        "config": config.as_dict(),
        "dataset": config.dataset,
        "arch": config.arch,
        "in_shape": list(spec.image_shape),
        "num_classes": spec.num_classes,
        "model_kwargs": config.model_kwargs,
        "test_accuracy": test_acc,
        "train_images": len(train),
        "test_images": len(test),
        "history": history,
        "train_seconds_this_call": time.time() - started,
        "device": str(dev),
    }
    atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights_path)
    atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
    ckpt_path.unlink(missing_ok=True)
    log(f"teacher {config.name}: test accuracy {test_acc:.2f}% -> {weights_path}")
    return Teacher(model=model.eval(), meta=meta)


class TeacherInterrupted(CheckpointError):
    """Raised by `stop_after_epochs`: the run stopped on purpose and can be resumed."""


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
