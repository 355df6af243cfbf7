"""Real-data statistics of every convolution input, computed once per (dataset, arch, teacher) and cached.

BN layers carry their own targets (running buffers); convolutions do not, so G-VBSM runs the frozen
backbone once over real images and keeps, per conv layer, the channel mean/variance and the patch
mean/variance of its input. Per G-VBSM's code the dataset value is the sample-weighted mean of per-batch
statistics (so "variance" is the mean within-batch variance). Files are safetensors (no pickle) under
`$MULTISIZE_CACHE/statmatch/`, named by dataset, arch, a hash of the teacher's weights and the settings,
so a retrained teacher never reuses stale statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from condenser.checkpoint import atomic_save_safetensors
from condenser.data import ImageDataset
from condenser.errors import CheckpointError
from condenser.paths import cache_root
from condenser.statmatch.hooks import conv_layer_names
from condenser.statmatch.stats import channel_stats, patch_stats


@dataclass(frozen=True)
class ConvStatsKey:
    dataset: str
    arch: str
    teacher_hash: str
    patch: int
    max_images: int
    batch_size: int = 64

    def filename(self) -> str:
        base = f"{self.dataset}-{self.arch}-{self.teacher_hash}-p{self.patch}-n{self.max_images}-b{self.batch_size}"
        return base.replace("/", "_").replace(":", "_") + ".safetensors"


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's parameters and buffers (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_conv_stats(model: nn.Module, dataset: ImageDataset, patch: int, max_images: int,
                       batch_size: int = 64) -> dict[str, torch.Tensor]:
    """One gradient-free pass over the first `max_images` real images (eval mode)."""
    names = conv_layer_names(model)
    device = next(model.parameters()).device
    n = min(max_images, len(dataset))
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            x = args[0]
            m, v = channel_stats(x)
            pm, pv = patch_stats(x, patch)
            for key, val in (("mean", m), ("var", v), ("patch_mean", pm), ("patch_var", pv)):
                k = f"{name}.{key}"
                sums[k] = sums.get(k, 0) + val[0] * x.shape[0]
        return fn

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            model(dataset.normalized(idx, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: (v / n).float().cpu().contiguous() for k, v in sums.items()}


def stats_path(key: ConvStatsKey, root: Path | None = None) -> Path:
    return (root or cache_root() / "statmatch") / key.filename()


def save_conv_stats(path: Path, stats: dict[str, torch.Tensor], key: ConvStatsKey) -> None:
    atomic_save_safetensors(stats, path, metadata={"key": json.dumps(asdict(key))})


def load_conv_stats(path: Path, key: ConvStatsKey | None = None) -> dict[str, torch.Tensor]:
    try:
        stats = load_file(str(path))
    except Exception as exc:  # safetensors raises several types on a corrupt file
        raise CheckpointError(f"cannot read conv statistics {path}: {exc}") from exc
    if key is not None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            stored = json.loads((f.metadata() or {}).get("key", "{}"))
        if stored != asdict(key):
            raise CheckpointError(f"{path} holds statistics for {stored}, expected {asdict(key)}")
    return stats


def cached_conv_stats(model: nn.Module, dataset: ImageDataset, arch: str, patch: int = 4, max_images: int = 10000,
                      batch_size: int = 64, root: Path | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """The conv statistics of `model` on `dataset`, from the cache or computed once and stored."""
    key = ConvStatsKey(dataset.spec.name, arch, model_hash(model), patch, min(max_images, len(dataset)), batch_size)
    path = stats_path(key, root)
    if path.exists():
        return load_conv_stats(path, key), path
    stats = compute_conv_stats(model, dataset, patch, max_images, batch_size)
    save_conv_stats(path, stats, key)
    return stats, path
