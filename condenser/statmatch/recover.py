"""Recover: optimise synthetic images against a frozen teacher pool, one IPC index per statistics batch.

SRe2L's loop: every IPC index is an independent batch holding one image of every class, started from
fresh noise with a fresh Adam (β = 0.5, 0.9) and a per-iteration cosine schedule; after each step pixels
are clamped to the valid range. Images of one IPC index never see another index's images (except the
optional nested densification, which only looks back), so prefixes do not co-adapt.

Several IPC indices are stacked into one forward pass (`batch_images`) as separate statistics groups:
Adam is element-wise and every loss term is a per-group sum, so this is the same optimisation as running
the indices one after another, with shared augmentation and teacher draws. Each IPC index starts from
noise seeded by (seed, index), so any image can be regenerated alone. Resumable: the images of finished
chunks are checkpointed atomically in `run_dir`.

Under torchrun the chunks (not classes: one IPC index's statistics are those of a batch of all classes)
are sharded over the ranks in contiguous blocks; a chunk computes the same on any rank, so the gathered
images equal a single process's (on CPU). Nested densification looks back at earlier chunks and is
therefore refused under sharding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from condenser.data import ImageDataset
from condenser.distributed import DistContext, current
from condenser.errors import CondenserError
from condenser.methods.synthetic import pixel_bounds
from condenser.progress import progress_bar
from condenser.resume import Checkpoint, Interrupted, StopAfter, run_identity
from condenser.statmatch.augment import RecoverAugConfig, recover_augment
from condenser.statmatch.dd import dd_features, nested_densification
from condenser.statmatch.objective import MatchConfig, StatMatchObjective

CHECKPOINT_NAME = "recover.pt"
INITS = ("noise", "real")


class RecoverConfigError(CondenserError, ValueError):
    """Recover settings it cannot run with (unknown init, non-positive budgets)."""


@dataclass(frozen=True)
class RecoverConfig:
    iterations: int = 1000
    lr: float = 0.1  # Adam lr in normalised pixel units (SRe2L Tiny 0.1)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0  # reference code: 0 (paper tables: 1e-4; docs/methods.md)
    batch_images: int = 500  # images per forward pass: max(1, batch_images // C) IPC indices
    init: str = "noise"  # noise (SRe2L) | real (one random real image per class and index)
    aug: RecoverAugConfig = field(default_factory=RecoverAugConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise RecoverConfigError(f"unknown recover init {self.init!r}; known: {', '.join(INITS)}")
        if self.iterations < 1 or self.batch_images < 1:
            raise RecoverConfigError(f"recover needs iterations >= 1 and batch_images >= 1, got "
                                     f"{self.iterations} and {self.batch_images}")


@dataclass
class RecoverResult:
    images: torch.Tensor  # [ipc*C, ch, H, W] IPC-major, normalised, CPU
    labels: torch.Tensor  # [ipc*C]
    ipc: int
    losses: list[dict]  # per chunk: IPC indices, first/last step loss parts
    seconds: float


def _unit_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**62)


def initial_images(train: ImageDataset, ids: list[int], init: str, seed: int, device: torch.device) -> torch.Tensor:
    """[len(ids)*C, ch, H, W] starting images, each IPC index from its own seed."""
    c = train.spec.num_classes
    out = []
    for i in ids:
        g = torch.Generator().manual_seed(_unit_seed(seed, i))
        if init == "noise":
            out.append(torch.randn(c, *train.spec.image_shape, generator=g))
        else:
            idx = torch.stack([train.sample_class(k, 1, generator=g)[0] for k in range(c)])
            out.append(train.normalized(idx))
    return torch.cat(out).to(device)


def recover(
    objective: StatMatchObjective,
    train: ImageDataset,
    ipc: int,
    cfg: RecoverConfig,
    device: torch.device,
    run_dir: str | Path | None = None,
    run_hash: str = "",
    stop_after: int | None = None,
    dist: DistContext | None = None,
) -> RecoverResult:
    """Recover `ipc` images per class; `stop_after=k` checkpoints and raises condenser.resume.Interrupted
    once k chunks ran in this call (on any rank: every rank stops).

    `dist` (default: `condenser.distributed.current()`) shards the chunks; every rank returns all images.
    """
    ctx = dist if dist is not None else current()
    c = train.spec.num_classes
    shard = _shard(ipc, max(1, min(ipc, cfg.batch_images // c)), cfg, ctx)
    checkpoint = _checkpoint(run_dir, cfg, ipc, run_hash, train, ctx)
    progress = _restore(checkpoint, shard, train)
    stopped = _recover_chunks(objective, train, cfg, device, shard, progress, checkpoint, StopAfter(stop_after))
    # every rank leaves together: a stop on one rank stops all (never a rank waiting in the gather below)
    if any(ctx.all_gather_objects(stopped, "agreeing on a stop")):
        what = f"recover ipc{ipc}" + (f" (rank {ctx.rank})" if ctx.sharded else "")
        raise Interrupted(what, "IPC indices", progress.done, shard.hi - shard.lo)
    images = ctx.all_gather_rows(progress.images, "gather of the recovered images")
    parts = ctx.all_gather_objects(progress.losses, "gather of the recover losses")
    return RecoverResult(images=images.reshape(ipc * c, *train.spec.image_shape), labels=torch.arange(c).repeat(ipc),
                         ipc=ipc, losses=[entry for part in parts for entry in part], seconds=progress.elapsed)


@dataclass(frozen=True)
class _Shard:
    """This rank's chunks: their first IPC indices, `per_step` indices each, covering IPC indices [lo, hi)."""

    ipc: int
    starts: list[int]
    per_step: int
    lo: int
    hi: int


def _shard(ipc: int, per_step: int, cfg: RecoverConfig, ctx: DistContext) -> _Shard:
    """Contiguous blocks of chunks per rank; refused for nested densification, which looks back at all chunks."""
    if ctx.sharded and cfg.match.dd_weight > 0:
        raise RecoverConfigError("nested densification (dd_weight > 0) makes every IPC chunk depend on all "
                                 f"earlier ones, so it cannot be sharded over {ctx.world_size} processes; run it in "
                                 "one process")
    starts = list(range(0, ipc, per_step))
    mine = [starts[i] for i in ctx.shard(len(starts))]
    lo = mine[0] if mine else ipc
    hi = min(mine[-1] + per_step, ipc) if mine else ipc
    return _Shard(ipc, mine, per_step, lo, hi)


@dataclass
class _Progress:
    """This rank's recovered images [hi - lo, C, ...] and what a checkpoint saves with them."""

    images: torch.Tensor
    done: int = 0  # IPC indices of this rank's share finished
    losses: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


def _checkpoint(run_dir: str | Path | None, cfg: RecoverConfig, ipc: int, run_hash: str, train: ImageDataset,
                ctx: DistContext) -> Checkpoint | None:
    if run_dir is None:
        return None
    identity = run_identity({"recover": asdict(cfg), "ipc": ipc, "run": run_hash}, train.fingerprint, ctx)
    return Checkpoint.in_run_dir(run_dir, CHECKPOINT_NAME, identity, "recover run", ctx)


def _restore(checkpoint: Checkpoint | None, shard: _Shard, train: ImageDataset) -> _Progress:
    """The finished chunks' images, losses and time of an interrupted run (nothing done without one)."""
    progress = _Progress(torch.zeros(shard.hi - shard.lo, train.spec.num_classes, *train.spec.image_shape))
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        progress.done, progress.losses, progress.elapsed = int(state["done"]), list(state["losses"]), \
            float(state["elapsed"])
        progress.images[:progress.done] = state["images"]
    return progress


def _recover_chunks(objective: StatMatchObjective, train: ImageDataset, cfg: RecoverConfig, device: torch.device,
                    shard: _Shard, progress: _Progress, checkpoint: Checkpoint | None, stop: StopAfter) -> bool:
    """Recover this rank's unfinished chunks under one progress bar, checkpointing each; True: stopped early."""
    c = train.spec.num_classes
    bounds = pixel_bounds(train, device)
    with progress_bar() as bar:
        task = bar.add_task(f"recover ipc{shard.ipc}", total=(shard.hi - shard.lo) * cfg.iterations,
                            completed=progress.done * cfg.iterations)
        for start in shard.starts:
            if start < shard.lo + progress.done:
                continue
            t0 = time.perf_counter()
            ids = list(range(start, min(start + shard.per_step, shard.hi)))
            x, entry = _recover_chunk(objective, train, ids, cfg, device, progress.images, bounds,
                                      lambda g: bar.advance(task, g))
            g = len(ids)
            progress.images[start - shard.lo:start - shard.lo + g] = x.view(g, c, *train.spec.image_shape).cpu()
            progress.elapsed += time.perf_counter() - t0
            progress.losses.append(entry)
            progress.done = start + g - shard.lo
            if checkpoint is not None:
                checkpoint.save({"done": progress.done, "images": progress.images[:progress.done].clone(),
                                 "losses": progress.losses, "elapsed": progress.elapsed})
            if stop.count(shard.lo + progress.done, shard.hi):
                return True
    return False


def _recover_chunk(objective: StatMatchObjective, train: ImageDataset, ids: list[int], cfg: RecoverConfig,
                   device: torch.device, earlier: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor],
                   advance: Callable[[int], None]) -> tuple[torch.Tensor, dict]:
    """IPC indices `ids` from their seeded start with a fresh Adam: (the images [g*C, ...], their loss record)."""
    spec, mcfg, start, g = train.spec, cfg.match, ids[0], len(ids)
    x = initial_images(train, ids, cfg.init, cfg.seed, device).requires_grad_(True)
    y = torch.arange(spec.num_classes, device=device).repeat(g)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8)
    gen = torch.Generator().manual_seed(_unit_seed(cfg.seed + 1, start))
    context = None
    if mcfg.dd_weight > 0 and start:
        context = dd_features(earlier[:start].reshape(-1, *spec.image_shape).to(device),
                              mcfg.dd_size).view(start, spec.num_classes, -1)
    objective.reset()
    first: dict[str, torch.Tensor] = {}
    parts: dict[str, torch.Tensor] = {}
    for t in range(cfg.iterations):
        parts = _recover_step(objective, x, y, opt, gen, t, start * cfg.iterations + t, g, context, cfg,
                              train.spec.allow_flip)
        if t == 0:
            first = dict(parts)
        _clamp(x, g, bounds)
        advance(g)
    return x.detach(), {"ipc_indices": ids, "first": {k: float(v) for k, v in first.items()},
                        "last": {k: float(v) for k, v in parts.items()}}


def _recover_step(objective: StatMatchObjective, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Adam,
                  gen: torch.Generator, t: int, step: int, g: int, context: torch.Tensor | None, cfg: RecoverConfig,
                  allow_flip: bool) -> dict[str, torch.Tensor]:
    """One Adam step at iteration t of the per-iteration cosine schedule; the loss parts (detached)."""
    mcfg = cfg.match
    for group in opt.param_groups:
        group["lr"] = 0.5 * (1 + math.cos(math.pi * t / cfg.iterations)) * cfg.lr
    xa = recover_augment(x, cfg.aug, gen, allow_flip)
    loss, parts = objective(xa, y, step=step, generator=gen, groups=g)
    if mcfg.dd_weight > 0:
        classes = y.numel() // g
        dd = nested_densification(dd_features(x, mcfg.dd_size).view(g, classes, -1), context, mcfg.dd_tau,
                                  mcfg.dd_normalize)
        loss = loss + mcfg.dd_weight * dd
        parts["dd"] = dd.detach()
    parts["total"] = loss.detach()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return parts


def _clamp(x: torch.Tensor, g: int, bounds: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Pixels back into the valid range after a step (per channel, normalised units)."""
    low, high = bounds
    with torch.no_grad():
        xv = x.view(g, -1, *x.shape[1:])
        torch.maximum(xv, low, out=xv)
        torch.minimum(xv, high, out=xv)
