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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from condenser.checkpoint import atomic_torch_save, config_hash, safe_torch_load
from condenser.data import ImageDataset
from condenser.distributed import DistContext, current, rank_dir
from condenser.errors import CheckpointError, CondenserError
from condenser.methods.synthetic import pixel_bounds
from condenser.progress import progress_bar
from condenser.stages import StageInterrupted
from condenser.statmatch.augment import RecoverAugConfig, recover_augment
from condenser.statmatch.dd import dd_features, nested_densification
from condenser.statmatch.objective import MatchConfig, StatMatchObjective

CHECKPOINT_NAME = "recover.pt"
INITS = ("noise", "real")


class RecoverConfigError(CondenserError, ValueError):
    """Recover settings it cannot run with (unknown init, non-positive budgets)."""


class RecoverInterrupted(StageInterrupted):
    """The recover loop stopped on purpose (`stop_after`); rerunning with the same run_dir resumes it."""


@dataclass(frozen=True)
class RecoverConfig:
    iterations: int = 1000
    lr: float = 0.1  # Adam lr in normalised pixel units (SRe2L Tiny 0.1)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0  # reference code: 0 (paper tables: 1e-4, ambiguity A6)
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
    finished: bool


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
    """Recover `ipc` images per class; `stop_after=k` checkpoints and raises after k chunks (of each rank).

    `dist` (default: `condenser.distributed.current()`) shards the chunks; every rank returns all images.
    """
    ctx = dist if dist is not None else current()
    spec = train.spec
    c = spec.num_classes
    per_step = max(1, min(ipc, cfg.batch_images // c))
    if ctx.sharded and cfg.match.dd_weight > 0:
        raise RecoverConfigError("nested densification (dd_weight > 0) makes every IPC chunk depend on all "
                                 f"earlier ones, so it cannot be sharded over {ctx.world_size} processes; run it in "
                                 "one process")
    starts = list(range(0, ipc, per_step))
    mine = [starts[i] for i in ctx.shard(len(starts))]  # this rank's chunks: IPC indices [lo, hi)
    lo = mine[0] if mine else ipc
    hi = min(mine[-1] + per_step, ipc) if mine else ipc
    low, high = pixel_bounds(train, device)
    images = torch.zeros(hi - lo, c, *spec.image_shape)
    identity: dict = {"config": asdict(cfg), "ipc": ipc, "run": run_hash}
    if ctx.sharded:
        identity["shard"] = [ctx.world_size, ctx.rank]
    digest = config_hash(identity)
    ckpt = rank_dir(run_dir, ctx) / CHECKPOINT_NAME if run_dir is not None else None
    done, losses, elapsed = 0, [], 0.0  # done: IPC indices of this rank's share finished
    if ckpt is not None and ckpt.exists():
        state = safe_torch_load(ckpt)
        if state.get("hash") != digest:
            raise CheckpointError(f"{ckpt} belongs to a different recover run; use another run directory")
        done, losses, elapsed = int(state["done"]), list(state["losses"]), float(state["elapsed"])
        images[:done] = state["images"]
    labels = torch.arange(c, device=device)
    mcfg = cfg.match
    chunks_run, stopped = 0, False
    bar = progress_bar()
    with bar:
        task = bar.add_task(f"recover ipc{ipc}", total=(hi - lo) * cfg.iterations,
                            completed=done * cfg.iterations)
        for start in mine:
            if start < lo + done:
                continue
            t0 = time.perf_counter()
            ids = list(range(start, min(start + per_step, ipc)))
            g = len(ids)
            x = initial_images(train, ids, cfg.init, cfg.seed, device).requires_grad_(True)
            y = labels.repeat(g)
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8)
            gen = torch.Generator().manual_seed(_unit_seed(cfg.seed + 1, start))
            context = None
            if mcfg.dd_weight > 0 and start:
                context = dd_features(images[:start].reshape(-1, *spec.image_shape).to(device),
                                      mcfg.dd_size).view(start, c, -1)
            objective.reset()
            first: dict[str, torch.Tensor] = {}
            parts: dict[str, torch.Tensor] = {}
            for t in range(cfg.iterations):
                for group in opt.param_groups:
                    group["lr"] = 0.5 * (1 + math.cos(math.pi * t / cfg.iterations)) * cfg.lr
                xa = recover_augment(x, cfg.aug, gen, spec.allow_flip)
                loss, parts = objective(xa, y, step=start * cfg.iterations + t, generator=gen, groups=g)
                if mcfg.dd_weight > 0:
                    dd = nested_densification(dd_features(x, mcfg.dd_size).view(g, c, -1), context, mcfg.dd_tau,
                                              mcfg.dd_normalize)
                    loss = loss + mcfg.dd_weight * dd
                    parts["dd"] = dd.detach()
                parts["total"] = loss.detach()
                if t == 0:
                    first = dict(parts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    xv = x.view(g, c, *spec.image_shape)
                    torch.maximum(xv, low, out=xv)
                    torch.minimum(xv, high, out=xv)
                bar.advance(task, g)
            images[start - lo:start - lo + g] = x.detach().view(g, c, *spec.image_shape).cpu()
            elapsed += time.perf_counter() - t0
            losses.append({"ipc_indices": ids, "first": {k: float(v) for k, v in first.items()},
                           "last": {k: float(v) for k, v in parts.items()}})
            done = start + g - lo
            chunks_run += 1
            if ckpt is not None:
                atomic_torch_save({"hash": digest, "done": done, "images": images[:done].clone(), "losses": losses,
                                   "elapsed": elapsed}, ckpt)
            if stop_after is not None and chunks_run >= stop_after and lo + done < hi:
                stopped = True
                break
    # every rank leaves together: a stop on one rank stops all (never a rank waiting in the gather below)
    if any(ctx.all_gather_objects(stopped, "agreeing on a stop")):
        raise RecoverInterrupted(f"stopped after IPC index {lo + done - 1} on request; rerun to resume")
    images = ctx.all_gather_rows(images, "gather of the recovered images")
    losses = [entry for part in ctx.all_gather_objects(losses, "gather of the recover losses") for entry in part]
    return RecoverResult(images=images.reshape(ipc * c, *spec.image_shape),
                         labels=torch.arange(c).repeat(ipc), ipc=ipc, losses=losses, seconds=elapsed,
                         finished=True)
