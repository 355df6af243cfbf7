"""The condensation loop: T outer loops x E inner steps of a base method, wrapped by multisize.

    for t in 1..T:                      # outer loop: fresh network
        for e in 1..E:                  # inner step: all classes at once
            real batch per class -> siamese augmentation of [real; decoded syn] per class
            loss = base(S) + w * base(S_[MLS])      (multisize; base only when disabled)
            distances of every prefix   (measuring loops: t == 1 or t % Δt == 0)
            masked SGD step on S        (frozen prefix: no move, no momentum)
            network hook (gm: train on real data; dm: redraw the random network)
        clamp pixels to [0, 1]; MLS selection + freezing (measuring loops)
        checkpoint                      (every Δt loops, atomically)

Randomness comes from explicit CPU generators, in two kinds of streams:
- per class c, a generator seeded by (seed, c) (`class_seed`): the class's random initial images, its
  real batches and its siamese augmentation draws (and anything else a class-separable method draws
  per class). A class's draws never depend on which other classes are condensed alongside it;
- one shared generator seeded by `seed`: network (re)initialisations, the random network of dm and
  the real batches/augmentations the gm network trains on. It is drawn identically by every process.
Every generator is saved in every checkpoint, so rerunning a killed run with the same config and run
directory resumes and ends bit-identical to an uninterrupted run (on CPU; CUDA kernels may be
non-deterministic). The host syncs once per outer loop (progress/loss) and once per measuring loop
(distances), never per step.

Under torchrun (condenser.distributed) classes are sharded over the ranks: rank k condenses its
contiguous share of classes with their own generators, holds the full network (every rank applies the
same update from the shared generator, so the gm network that trains on real batches of ALL classes is
replicated, not all-reduced; on CUDA rank 0's weights are broadcast after every inner step, since CUDA
kernels may differ bitwise), and the MLS distances of all classes are summed over ranks before each
selection (one small all-reduce per measuring loop: exact, each class's row comes from one rank), so
class-wise and shared MLS select exactly as one process does. The result is gathered on every rank. On
CPU a sharded run gives bit-identical images to a single-process run with the same seed. Each rank
checkpoints in run_dir/world-W/rank-k, keeping the previous checkpoint too, and a restarted job with the
same world size resumes from the latest outer loop that every rank saved.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from condenser.checkpoint import config_hash
from condenser.data import ImageDataset
from condenser.device import PRECISIONS, resolve_device, resolve_precision
from condenser.distributed import DistContext, current
from condenser.errors import CondenserError
from condenser.methods import METHODS, BaseMethod, MaskedSGD, StepContext, SyntheticSet, init_synthetic
from condenser.methods.formation import decode
from condenser.methods.real import RealPool
from condenser.methods.selection import SELECTIONS, FeatureSource
from condenser.models import build_model
from condenser.multisize import Multisize, MultisizeConfig
from condenser.resume import (
    Checkpoint,
    Interrupted,
    StopAfter,
    agreed_state,
    restore_rng_state,
    rng_state,
    run_identity,
)
from condenser.training import autocast

CHECKPOINT_NAME = "condense.pt"  # the previous one is kept beside it (condense.prev.pt, condenser.resume)


class CondenseConfigError(CondenserError, ValueError):
    """A condensation was configured with values it cannot run with."""


@dataclass(frozen=True)
class CondenseConfig:
    """One condensation run. Names follow the MDC paper's Algorithm 1: T outer loops, E inner steps, Δt period.

    The settings are the `condense` section of the settings tree (docs/config.md), whose defaults are the paper's
    budgets (MDC paper §4.1); `method`, `ipc`, `init_offset`, `method_settings`, `seed` and `device` are the
    run's own, filled by the command (condenser.build.BuildConfig.condense_config).
    """

    method: str = "gm"
    ipc: int = 10
    factor: int = 1  # multi-formation factor (1 or 2)
    outer_loops: int = 2000  # T
    inner_loops: int = 100  # E
    lr_img: float | None = None  # None: the method's default (gm: 5e-3*ipc/10*(res/32)^2, pixel units)
    mom_img: float = 0.5
    batch_real: int = 64  # real images per class per inner step
    multisize: MultisizeConfig = field(default_factory=MultisizeConfig)  # enabled=False: Baseline C
    init: str = "first"  # first | random | herding | kmeans (condenser/methods/selection.py, on the teacher)
    init_offset: int = 0  # start at image number offset (Baseline B run k uses k)
    model: str = "convnet"
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    method_settings: dict[str, Any] = field(default_factory=dict)  # the method's settings (method.<name>)
    seed: int = 0
    device: str = "auto"
    # the forward's arithmetic (condenser.training.autocast): fp32; bf16 autocast, float32 images and gradients;
    # auto: bf16 where the hardware multiplies bf16 (CUDA, AMX/AVX512-BF16 CPUs), fp32 elsewhere
    precision: str = "auto"
    checkpoint_every: int | None = None  # outer loops; None = the MLS period

    def __post_init__(self) -> None:
        for name in ("ipc", "factor", "outer_loops", "inner_loops", "batch_real"):
            if getattr(self, name) < 1:
                raise CondenseConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise CondenseConfigError(f"checkpoint_every must be >= 1 (or null: the period), got "
                                      f"{self.checkpoint_every}")
        if self.precision not in PRECISIONS:
            raise CondenseConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.method not in METHODS:
            raise CondenseConfigError(f"unknown method {self.method!r}; known: {', '.join(METHODS.names())}")

    @property
    def period(self) -> int:
        """Δt: outer loops between MLS selections, and the default checkpoint period."""
        return self.multisize.period

    def with_subset(self, enabled: bool, **changes: Any) -> CondenseConfig:
        """A copy with the multisize subset loss on or off (off: the base method alone), plus `changes`."""
        return replace(self, multisize=replace(self.multisize, enabled=enabled), **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def result_hash(self) -> str:
        """Hash of everything that changes the result (not the checkpoint cadence)."""
        d = self.to_dict()
        d.pop("checkpoint_every")
        d["precision"] = self.resolved_precision()  # `auto` names two arithmetics; the hash names the one that runs
        return config_hash(d)

    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, resolve_device(self.device))


@dataclass
class CondenseResult:
    """Stored synthetic images in record order r = i*C + c (IPC-major), normalised float32, on CPU."""

    images: torch.Tensor  # [ipc*C, ch, H, W]
    labels: torch.Tensor  # int64 [ipc*C]
    ipc: int
    num_classes: int
    factor: int
    mls_history: list[dict]
    timings: dict
    config: dict
    init_indices: torch.Tensor  # int64 [C, ipc*f*f] dataset indices of the initial real images
    outer_loops_done: int

    def prefix(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The IPC-n prefix: stored images and labels of image numbers 0..n-1 of every class."""
        if not 1 <= n <= self.ipc:
            raise CondenserError(f"prefix size {n} outside 1..{self.ipc}")
        k = n * self.num_classes
        return self.images[:k], self.labels[:k]

    def decoded(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples of the IPC-n prefix: each stored image decoded into f*f images."""
        images, labels = self.prefix(n or self.ipc)
        dec = decode(images, self.factor)  # [k, f*f, ...]
        return dec.reshape(-1, *dec.shape[2:]), labels.repeat_interleave(self.factor * self.factor)

    def provenance(self) -> dict:
        """What the .mdc header records about how the images were made."""
        return {
            "condense": self.config, "mls_history": self.mls_history, "timings": self.timings,
            "factor": self.factor, "nesting_unit": "stored image",
            "init_indices": self.init_indices.tolist(), "outer_loops_done": self.outer_loops_done,
        }


@dataclass
class _Progress:
    """One rich bar over outer loops, showing the last loss and the current MLS."""

    bar: Any = None
    task: Any = None
    label: str = ""

    def start(self, enabled: bool, total: int, done: int, label: str) -> None:
        if not enabled:
            return
        from condenser.progress import progress_bar

        self.bar = progress_bar()
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, completed=done)
        self.label = label

    def update(self, done: int, loss: float, mls: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, description=f"{self.label} loss {loss:.4g} {mls}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """Identity of a training set (every pixel and label; ImageDataset.fingerprint, computed once), so a
    checkpoint never resumes on different data."""
    return dataset.fingerprint


def _model_factory(cfg: CondenseConfig, dataset: ImageDataset) -> Callable[[], torch.nn.Module]:
    spec = dataset.spec
    kwargs: dict[str, Any] = {"width": cfg.width}
    if cfg.model == "convnet":
        kwargs.update(depth=cfg.depth, norm=cfg.norm)
    return lambda: build_model(cfg.model, spec.image_shape, spec.num_classes, **kwargs)


def class_seed(seed: int, c: int) -> int:
    """Seed of class c's generator: a hash of (seed, c), so class streams are unrelated to each other."""
    digest = hashlib.sha256(f"condense-class|{seed}|{c}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _make_reinit(factory: Callable[[], torch.nn.Module], generator: torch.Generator
                 ) -> Callable[[torch.nn.Module], None]:
    """Redraw weights from `generator` without touching the global RNG (CPU init, then copied)."""

    def reinit(model: torch.nn.Module) -> None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = factory()
        with torch.no_grad():
            model.load_state_dict(fresh.state_dict())

    return reinit


@dataclass
class _Run:
    """One condensation's live state: what the outer loops advance and what a checkpoint saves."""

    cfg: CondenseConfig
    dist: DistContext
    device: torch.device
    method: BaseMethod
    classes: list[int]  # this process's share of the classes (contiguous)
    generator: torch.Generator  # shared: networks, the gm network's real batches
    class_gens: list[torch.Generator]  # one per class of `classes`
    syn: SyntheticSet
    optimizer: MaskedSGD
    objective: Multisize | None
    model: torch.nn.Module
    pool: RealPool
    ctx: StepContext
    match_ctx: Callable[[], Any]
    done: int = 0  # outer loops finished
    elapsed: float = 0.0  # seconds spent in outer loops, over every call

    @property
    def own(self) -> slice:
        return slice(self.classes[0], self.classes[-1] + 1)

    @property
    def draw_gens(self) -> torch.Generator | list[torch.Generator]:
        return self.class_gens if getattr(self.method, "class_separable", False) else self.generator


def condense(
    cfg: CondenseConfig,
    train_set: ImageDataset,
    run_dir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    on_outer_loop: Callable[[int, dict], None] | None = None,
    dist: DistContext | None = None,
    features: FeatureSource | None = None,
) -> CondenseResult:
    """Condense `train_set` to `cfg.ipc` images per class; resumable when `run_dir` is given.

    `stop_after=k` checkpoints and raises condenser.resume.Interrupted once k outer loops ran in this call;
    `on_outer_loop(t, info)` is called after each outer loop's checkpoint (it may raise to interrupt);
    info holds the loss, the MLS record (if one was selected), the live images [N, K, ...] of this
    process's classes `info["classes"]` (read only) and the frozen prefix per class for the next loop.
    `dist` (default: `condenser.distributed.current()`) shards the classes over the ranks of a process
    group; every rank returns the whole, gathered result. `features` embeds real images for the `herding`
    and `kmeans` inits (condenser/methods/selection.py; a build passes its teacher).
    """
    run = _start(cfg, train_set, dist if dist is not None else current(), features)
    checkpoint = Checkpoint.in_run_dir(run_dir, CHECKPOINT_NAME, _identity(cfg, train_set, run.dist, features),
                                       "condensation run", run.dist, keep_previous=True)
    _restore(run, agreed_state(checkpoint, run.dist, "outer_loop"))
    stop, first, t_run = StopAfter(stop_after), run.done, time.perf_counter()
    bar = _Progress()
    bar.start(progress and run.dist.is_main, cfg.outer_loops, run.done, f"condense {cfg.method} ipc{cfg.ipc}")
    try:
        for t in range(run.done + 1, cfg.outer_loops + 1):
            t0 = time.perf_counter()
            loss, record = _outer_loop(run, t)
            run.elapsed += time.perf_counter() - t0
            run.done = t
            stopping = stop.count(t, cfg.outer_loops)
            if checkpoint is not None and (_checkpoint_due(cfg, t) or stopping):
                checkpoint.save(_state(run))
            bar.update(t, loss, _mls_text(run.objective))
            if on_outer_loop is not None:
                on_outer_loop(t, {"loss": loss, "mls": record.as_dict() if record else None,
                                  "images": run.syn.data.detach(), "classes": run.classes,
                                  "frozen": _frozen(run.objective)})
            if stopping:
                raise Interrupted(f"condense {cfg.method} ipc{cfg.ipc}", "outer loops", t, cfg.outer_loops)
    finally:
        bar.stop()
    return _result(run, time.perf_counter() - t_run, run.done - first)


def _check_shardable(cfg: CondenseConfig, method: BaseMethod, dist: DistContext, num_classes: int) -> None:
    """Classes can be split over ranks only for a class-separable method, with one class per rank at least."""
    if not dist.sharded:
        return
    if not getattr(method, "class_separable", False):
        raise CondenseConfigError(
            f"method {cfg.method!r} matches all classes in one batch and cannot be sharded over "
            f"{dist.world_size} processes; run it in one process")
    if dist.world_size > num_classes:
        raise CondenseConfigError(f"{dist.world_size} processes for {num_classes} classes: every rank "
                                  "needs at least one class; use fewer processes")


def _image_lr(cfg: CondenseConfig, method: BaseMethod, dataset: ImageDataset, device: torch.device
              ) -> float | torch.Tensor:
    """The images' SGD lr; a method that gives it for [0, 1] pixels gets it per channel in normalised units."""
    lr = cfg.lr_img if cfg.lr_img is not None else method.default_lr_img(cfg.ipc, dataset.spec.image_shape[1])
    if not method.lr_in_pixel_units:
        return lr
    # x_norm = (x - m)/s: the same trajectory as SGD on [0,1] pixels
    std = torch.tensor(dataset.spec.std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return lr / std**2


def _autocasts(cfg: CondenseConfig, method: BaseMethod, device: torch.device
               ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(the run's AMP context, the one the matching loss runs under)."""
    run_autocast = functools.partial(autocast, device, resolve_precision(cfg.precision, device))
    return run_autocast, run_autocast if method.autocast_matching else contextlib.nullcontext


def _start(cfg: CondenseConfig, train_set: ImageDataset, dist: DistContext, features: FeatureSource | None = None
           ) -> _Run:
    """Everything a fresh run starts from, in the order its random draws are made (results depend on it)."""
    device = resolve_device(cfg.device)
    num_classes = train_set.spec.num_classes
    method = METHODS.get(cfg.method)(allow_flip=train_set.spec.allow_flip, **cfg.method_settings)
    _check_shardable(cfg, method, dist, num_classes)
    classes = list(dist.shard(num_classes))
    generator = torch.Generator().manual_seed(cfg.seed)
    class_gens = [torch.Generator().manual_seed(class_seed(cfg.seed, c)) for c in classes]
    syn = init_synthetic(train_set, cfg.ipc, cfg.factor, cfg.init, cfg.init_offset, class_gens, device,
                         classes=classes, embedder=features)
    syn.clamp_()
    optimizer = MaskedSGD(syn.data, _image_lr(cfg, method, train_set, device), cfg.mom_img)
    objective = None
    if cfg.multisize.enabled and cfg.ipc > 1:
        objective = Multisize(method, cfg.ipc, num_classes, syn.per_image, cfg.multisize, device)
    factory = _model_factory(cfg, train_set)
    with torch.random.fork_rng(devices=[]):
        model = factory().to(device)
    autocast, match_ctx = _autocasts(cfg, method, device)
    pool = RealPool(train_set, device)
    ctx = StepContext(real=pool, generator=generator, num_classes=num_classes,
                      reinit=_make_reinit(factory, generator), autocast=autocast)
    return _Run(cfg, dist, device, method, classes, generator, class_gens, syn, optimizer, objective, model, pool,
                ctx, match_ctx)


def _identity(cfg: CondenseConfig, train_set: ImageDataset, dist: DistContext,
              features: FeatureSource | None = None) -> str:
    return run_identity(cfg.result_hash() + selection_identity(cfg, features), dataset_fingerprint(train_set), dist)


def selection_identity(cfg: CondenseConfig, features: FeatureSource | None) -> str:
    """What besides the config a run's initial images depend on: the selection's network, for those inits."""
    return f"+{features.identity}" if cfg.init in SELECTIONS and features is not None else ""


def run_config_key(cfg: CondenseConfig, features: FeatureSource | None = None) -> dict:
    """What a run directory is hashed from: the config, plus the selection's network where the init uses one."""
    selection = selection_identity(cfg, features)
    return {**asdict(cfg), "selection": selection} if selection else asdict(cfg)


def _checkpoint_due(cfg: CondenseConfig, t: int) -> bool:
    """Every `checkpoint_every` outer loops (default: the MLS period) and after the last one."""
    return t % (cfg.checkpoint_every or cfg.period) == 0 or t == cfg.outer_loops


def _state(run: _Run) -> dict[str, Any]:
    """What a checkpoint saves: images, optimiser momentum, MLS selector, every generator, progress."""
    return {
        "config": run.cfg.to_dict(), "outer_loop": run.done, "images": run.syn.data.detach().cpu(),
        "optimizer": run.optimizer.state_dict(),
        "mls": run.objective.selector.state_dict() if run.objective is not None else None,
        "rng": rng_state(run.generator, *run.class_gens), "elapsed_s": run.elapsed, "classes": run.classes,
    }


def _restore(run: _Run, state: dict[str, Any] | None) -> None:
    """Put a saved `_state` back into a freshly started run (None: nothing to resume)."""
    if state is None:
        return
    with torch.no_grad():
        run.syn.data.copy_(state["images"].to(run.device))
    run.optimizer.load_state_dict(state["optimizer"])
    if run.objective is not None:
        run.objective.selector.load_state_dict(state["mls"])
    restore_rng_state(state["rng"], run.generator, *run.class_gens)
    run.done, run.elapsed = int(state["outer_loop"]), float(state["elapsed_s"])


def _outer_loop(run: _Run, t: int) -> tuple[float, Any]:
    """Outer loop t: E inner steps on a fresh network, clamping, MLS selection; (loss, MLS record or None)."""
    objective, dist = run.objective, run.dist
    run.method.prepare_model(run.model, run.ctx)
    measuring = objective is not None and objective.selector.measuring(t)
    mask = objective.trainable_mask(run.device) if objective is not None else None
    mask = mask[:, run.own] if mask is not None else None
    labels = torch.tensor(run.classes, device=run.device)
    loss = torch.zeros((), device=run.device)
    for _ in range(run.cfg.inner_loops):
        loss = _inner_step(run, labels, measuring, mask)
    run.syn.clamp_()  # the reference code clamps at the start of the next loop; same images, and
    # clamping here means a prefix frozen from the next loop on is already final
    reduce = (lambda d: dist.all_reduce_sum(d, "all-reduce of the MLS distances")) if dist.sharded else None
    record = objective.end_outer_loop(t, reduce) if objective is not None else None
    # the one host sync of this outer loop (and, sharded, the heartbeat that notices a failed rank)
    return float(dist.all_reduce_sum(loss.detach().float(), f"all-reduce of loop {t}'s loss")), record


def _inner_step(run: _Run, labels: torch.Tensor, measuring: bool, mask: torch.Tensor | None) -> torch.Tensor:
    """One image update of every class: real batch, siamese augmentation, (multisize) loss, masked SGD step."""
    method, model, objective = run.method, run.model, run.objective
    real = run.pool.class_batch(run.classes, run.cfg.batch_real, run.class_gens)
    real_aug, syn_aug = method.siamese(real, run.syn.decoded(), run.draw_gens)
    with run.match_ctx():
        if objective is not None:
            loss = objective.loss(model, syn_aug, real_aug, labels, measure=measuring)
        else:
            loss = method.match(model, syn_aug, method.target(model, real_aug, labels), labels)
    run.optimizer.zero_grad()
    torch.autograd.backward(loss, inputs=[run.syn.data])
    run.optimizer.step(mask)
    method.train_model_step(model, run.ctx)
    if run.dist.sharded and run.device.type == "cuda":  # CUDA kernels may differ bitwise between ranks
        run.dist.broadcast_module(model)
    return loss


def _result(run: _Run, wall: float, loops: int) -> CondenseResult:
    """The whole result on every rank: this rank's classes gathered with the others' (sharded)."""
    cfg, dist = run.cfg, run.dist
    timings = {
        "elapsed_s": run.elapsed, "outer_loops_this_run": loops,
        "seconds_per_outer_loop": wall / loops if loops else None,
        "device": str(run.device), "threads": torch.get_num_threads(), "world_size": dist.world_size,
    }
    history = [r.as_dict() for r in run.objective.selector.history] if run.objective is not None else []
    images = run.syn.data.detach().transpose(0, 1).contiguous()  # [K, N, ...]: this rank's classes as rows
    images = dist.all_gather_rows(images, "gather of the condensed images").transpose(0, 1)  # [N, C, ...]
    init = dist.all_gather_rows(run.syn.init_indices, "gather of the initial image indices")
    num_classes = run.ctx.num_classes
    return CondenseResult(
        images=images.reshape(-1, *images.shape[2:]).cpu().clone(), labels=torch.arange(num_classes).repeat(cfg.ipc),
        ipc=cfg.ipc, num_classes=num_classes, factor=cfg.factor, mls_history=history, timings=timings,
        config={**cfg.to_dict(), "precision": cfg.resolved_precision()},  # what ran, not `auto`
        init_indices=init.clone(), outer_loops_done=run.done,
    )


def _frozen(objective: Multisize | None) -> list[int] | None:
    return objective.selector.frozen_sizes() if objective is not None else None


def _mls_text(objective: Multisize | None) -> str:
    if objective is None or not objective.selector.active:
        return ""
    sel = objective.selector
    if sel.config.class_wise:
        return f"MLS {sel.current} frozen {sel.frozen}"
    return f"MLS {sel.current[0]} frozen {sel.frozen[0]}"
