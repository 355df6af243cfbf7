"""Teacher pools for the decoupled methods, built with condenser.teacher and cached on disk.

- `single` (SRe2L): one BN teacher (`condenser teacher` with model_kwargs norm="batch"; the instance-norm
  evaluation network is untouched).
- `backbones` (G-VBSM): several architectures trained at small scale, one sampled per step.
- `prior` (Teddy): checkpoints of ONE training run, taken after the stage epochs: the run is driven
  epoch by epoch through train_teacher's resumable `stop_after` and each checkpoint is snapshotted.
- `post` (Teddy): copies of a trained BN teacher with a random fraction of every conv's filters pruned
  (torch.nn.utils.prune), optionally fine-tuned with the masks in place, then BN statistics re-estimated
  on real images (the zeroed channels would otherwise carry stale running statistics).

Every member is a teacher.safetensors + teacher.json pair, loadable with condenser.teacher.load_teacher.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from condenser.checkpoint import atomic_save_safetensors, atomic_write_bytes, config_hash
from condenser.config.tree import Config
from condenser.data import ImageDataset, load_dataset
from condenser.device import resolve_device
from condenser.errors import CheckpointError
from condenser.methods.base import MethodConfigError
from condenser.models import build_model
from condenser.paths import cache_root
from condenser.registry import Registry
from condenser.resume import Interrupted
from condenser.statmatch.hooks import BN_TYPES
from condenser.statmatch.pool import PoolMember, TeacherPool
from condenser.statmatch.settings import DecoupledSettings
from condenser.teacher import (
    Teacher,
    TeacherConfig,
    load_teacher,
    teacher_checkpoint,
    teacher_paths,
    train_teacher,
)
from condenser.training import TensorSource, accuracy, one_hot, sgd, train_epoch


@dataclass
class PoolContext:
    """What every pool builder needs besides the method's settings: the data, where it runs, and the settings
    whose `teacher` section trains the pool's teachers (a command's resolved tree, or a profile's name)."""

    dataset: str
    settings: Config | str
    train: ImageDataset
    data_root: str | None = None
    device: str = "auto"
    seed: int = 0
    log: Callable[[str], None] = print


def teacher_config(ctx: PoolContext, s: DecoupledSettings, arch: str, model_kwargs: dict) -> TeacherConfig:
    budget = {k: v for k, v in (("epochs", s.teacher_epochs), ("max_train", s.teacher_max_train)) if v is not None}
    cfg = TeacherConfig.from_profile(ctx.dataset, arch, ctx.settings, data_root=ctx.data_root, **budget)
    return replace(cfg, model_kwargs=dict(model_kwargs))


def trained_member(ctx: PoolContext, cfg: TeacherConfig, **extra: object) -> PoolMember:
    teacher = train_teacher(cfg, data_root=ctx.data_root, device=ctx.device, log=ctx.log)
    return PoolMember(teacher.model, {**teacher.meta, "source": "trained", **extra}, str(teacher_paths(cfg)[0]))


def save_member(directory: Path, model: nn.Module, meta: dict) -> Path:
    """Write a pool member in the teacher format (safetensors + JSON sidecar), each file atomically.

    The sidecar goes first: the builders test for the weights file, so a run killed between the two
    writes redoes the member instead of finding weights without their sidecar.
    """
    weights = directory / "teacher.safetensors"
    atomic_write_bytes(directory / "teacher.json", json.dumps(meta, indent=2).encode())
    atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    return weights


def load_member(path: Path, device: str, **extra: object) -> PoolMember:
    t = load_teacher(path, device=device)
    return PoolMember(t.model, {**t.meta, **extra}, str(path))


def member_accuracy(ctx: PoolContext, model: nn.Module, cap: int = 2000) -> float:
    test = load_dataset(ctx.dataset, "test", root=ctx.data_root)
    spec = test.spec
    dev = next(model.parameters()).device
    mean = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1)
    n = min(cap, len(test))
    return accuracy(model, test.images[:n], test.labels[:n], dev, mean, std)


# --- builders ---------------------------------------------------------------------------------------

def single_pool(ctx: PoolContext, s: DecoupledSettings) -> list[PoolMember]:
    return [trained_member(ctx, teacher_config(ctx, s, s.teacher_arch, s.teacher_kwargs))]


def recalibrated_member(ctx: PoolContext, cfg: TeacherConfig, images: int) -> PoolMember:
    """A trained teacher whose BN statistics were re-estimated on real images (cached beside the pools)."""
    member = trained_member(ctx, cfg)
    if images <= 0 or not any(isinstance(m, BN_TYPES) for m in member.model.modules()):
        return member
    path = cache_root() / "pools" / f"{cfg.name}-recal{images}-s{ctx.seed}" / "teacher.safetensors"
    if not path.exists():
        model = copy.deepcopy(member.model)
        recalibrate_bn(model, ctx.train, images, seed=ctx.seed)
        meta = {**{k: v for k, v in member.meta.items() if k != "history"}, "source": "trained+bn-recalibrated",
                "recalibrate_images": images, "test_accuracy_before": member.meta.get("test_accuracy"),
                "test_accuracy": member_accuracy(ctx, model)}
        save_member(path.parent, model, meta)
    return load_member(path, ctx.device)


def backbone_pool(ctx: PoolContext, s: DecoupledSettings) -> list[PoolMember]:
    """G-VBSM's backbones, each trained at small scale and, with `recalibrate_backbones`, BN-recalibrated."""
    if not s.backbones:
        raise MethodConfigError("the backbones pool needs at least one backbone")
    images = s.recalibrate_images if s.recalibrate_backbones else 0
    return [recalibrated_member(ctx, teacher_config(ctx, s, arch, s.backbone_kwargs.get(arch, {})), images)
            for arch in s.backbones]


def prior_pool(ctx: PoolContext, s: DecoupledSettings) -> list[PoolMember]:
    """Snapshots after each stage epoch of one run.

    The run is the single-teacher run itself (same config, same cache entry) while that teacher is not
    trained yet, so SRe2L's teacher comes for free; once it exists without snapshots, a private copy of
    the run (same seed: the same trajectory) is replayed under the pool's directory.
    """
    cfg = teacher_config(ctx, s, s.teacher_arch, s.teacher_kwargs)
    epochs = cfg.budget.epochs
    stages = sorted(set(s.stages or range(1, epochs + 1)))
    if not stages or stages[0] < 1 or stages[-1] > epochs:
        raise MethodConfigError(f"prior pool stages {stages} must lie in 1..{epochs} (the run's epochs)")
    pool_dir = cache_root() / "pools" / f"{cfg.name}-prior"
    snap = {e: pool_dir / "snapshots" / f"epoch-{e:03d}" / "teacher.safetensors" for e in stages}
    done = all(p.exists() for p in snap.values())
    root = pool_dir / "run" if teacher_paths(cfg)[0].exists() and not done else None
    spec = ctx.train.spec

    def snapshot(epoch: int, model: nn.Module) -> None:
        if epoch in snap and not snap[epoch].exists():
            meta = {"arch": cfg.arch, "dataset": cfg.dataset, "in_shape": list(spec.image_shape),
                    "num_classes": spec.num_classes, "model_kwargs": cfg.model_kwargs, "config": cfg.as_dict(),
                    "source": "checkpoint", "epoch": epoch, "test_accuracy": member_accuracy(ctx, model)}
            save_member(snap[epoch].parent, model, meta)

    while not all(p.exists() for p in snap.values()):
        try:
            final = train_teacher(cfg, data_root=ctx.data_root, device=ctx.device, root=root, stop_after=1,
                                  log=ctx.log)
        except Interrupted:
            state = teacher_checkpoint(cfg, root).load()
            model = build_model(cfg.arch, spec.image_shape, spec.num_classes, **cfg.model_kwargs)
            model.load_state_dict(state["model"])
            snapshot(int(state["epoch"]), model.to(resolve_device(ctx.device)))
            continue
        snapshot(epochs, final.model)
        missing = [e for e, p in snap.items() if not p.exists()]
        if missing:
            raise CheckpointError(f"the prior-pool run finished without snapshots of epochs {missing}; "
                                  f"delete {pool_dir} to retrain")
        break
    return [load_member(snap[e], ctx.device) for e in stages]


def prune_filters(model: nn.Module, amount: float, seed: int) -> list[nn.Conv2d]:
    """Zero a random `amount` of the output filters of every conv (pruning masks left in place)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for conv in convs:
            prune.random_structured(conv, "weight", amount=amount, dim=0)
    return convs


@torch.no_grad()
def recalibrate_bn(model: nn.Module, train: ImageDataset, images: int, batch_size: int = 256, seed: int = 0) -> None:
    """Re-estimate every BN layer's running statistics (cumulative average) on random plain real images.

    The running statistics are the BN-matching targets; after pruning, or after a short training on
    augmented batches, they describe the real data poorly (a MobileNetV2 trained on 2000 Fashion-MNIST
    images for 3 epochs tested at 17% with its own statistics and 66% after recalibration).
    """
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    if not bns or images <= 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    dev = next(model.parameters()).device
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:images]
    model.train()
    for start in range(0, idx.numel(), batch_size):
        model(train.normalized(idx[start:start + batch_size], device=dev))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.eval()


def finetune(model: nn.Module, train: ImageDataset, epochs: int, seed: int, max_images: int = 10000) -> None:
    """A short SGD fine-tune (lr 0.01, Teddy's range) with the pruning masks still applied."""
    spec = train.spec
    dev = next(model.parameters()).device
    n = min(max_images, len(train))
    source = TensorSource(images=train.images[:n].to(dev), targets=one_hot(train.labels[:n], spec.num_classes).to(dev),
                          mean=torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1),
                          std=torch.tensor(spec.std, device=dev).view(1, -1, 1, 1))
    model.requires_grad_(True)
    opt = sgd(model, 0.01, 0.9, 1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        train_epoch(model, source, opt, 128, g, dev)
    model.eval()


def post_pool(ctx: PoolContext, s: DecoupledSettings) -> list[PoolMember]:
    """Pruned copies of one trained BN teacher, cached by the base teacher and the pruning plan."""
    cfg = teacher_config(ctx, s, s.teacher_arch, s.teacher_kwargs)
    base: Teacher = train_teacher(cfg, data_root=ctx.data_root, device=ctx.device, log=ctx.log)
    plan = {"amounts": list(s.prune_amounts), "finetune": s.prune_finetune_epochs, "recal": s.recalibrate_images,
            "seed": ctx.seed}
    root = cache_root() / "pools" / f"{cfg.name}-post-{config_hash(plan)[:8]}"
    members = []
    for i, amount in enumerate(s.prune_amounts):
        path = root / f"member-{i:02d}" / "teacher.safetensors"
        if not path.exists():
            model = copy.deepcopy(base.model).to(resolve_device(ctx.device))
            convs = prune_filters(model, amount, seed=ctx.seed * 1000 + i)
            if s.prune_finetune_epochs:
                finetune(model, ctx.train, s.prune_finetune_epochs, seed=ctx.seed * 1000 + i)
            for conv in convs:
                prune.remove(conv, "weight")
            recalibrate_bn(model, ctx.train, s.recalibrate_images, seed=ctx.seed)
            meta = {**{k: v for k, v in base.meta.items() if k != "history"}, "source": "pruned",
                    "prune_amount": amount, "test_accuracy": member_accuracy(ctx, model), "base_teacher": cfg.name}
            save_member(path.parent, model, meta)
        members.append(load_member(path, ctx.device))
    return members


POOL_BUILDERS: Registry[Callable[[PoolContext, DecoupledSettings], list[PoolMember]]] = Registry("teacher pool")
POOL_BUILDERS.add("single", single_pool)
POOL_BUILDERS.add("backbones", backbone_pool)
POOL_BUILDERS.add("prior", prior_pool)
POOL_BUILDERS.add("post", post_pool)


def build_pool(ctx: PoolContext, s: DecoupledSettings) -> TeacherPool:
    members = POOL_BUILDERS.get(s.pool)(ctx, s)
    pool = TeacherPool(members, sampling=s.sampling, k=s.k)
    return pool.to(resolve_device(ctx.device))
