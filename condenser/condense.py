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

All randomness (real batches, augmentation draws, network initialisations, random init) comes from
one explicit CPU `torch.Generator` seeded by `seed`; it is saved in every checkpoint, so rerunning a
killed run with the same config and run directory resumes and ends bit-identical to an
uninterrupted run (on CPU; CUDA kernels may be non-deterministic). The host syncs once per outer
loop (progress/loss) and once per measuring loop (distances), never per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from condenser.checkpoint import atomic_torch_save, config_hash, restore_rng_state, rng_state, safe_torch_load
from condenser.data import ImageDataset
from condenser.device import amp_dtype, resolve_device
from condenser.errors import CheckpointError, CondenserError
from condenser.methods import METHODS, MaskedSGD, StepContext, init_synthetic
from condenser.methods.formation import decode
from condenser.methods.real import RealPool
from condenser.models import build_model
from condenser.multisize import Multisize, MultisizeConfig

CHECKPOINT_NAME = "condense.pt"
CHECKPOINT_VERSION = 1


class CondenseConfigError(CondenserError, ValueError):
    """A condensation was configured with values it cannot run with."""


@dataclass(frozen=True)
class CondenseConfig:
    """One condensation run. Names follow mdc.md: T outer loops, E inner steps, Δt period."""

    method: str = "gm"
    ipc: int = 10
    factor: int = 1  # multi-formation factor (1 or 2)
    outer_loops: int = 200  # T
    inner_loops: int = 10  # E
    period: int = 20  # Δt, outer loops between MLS selections (also the checkpoint period)
    lr_img: float | None = None  # None: the method's default (gm: 5e-3*ipc/10*(res/32)^2, pixel units)
    mom_img: float = 0.5
    batch_real: int = 64  # real images per class per inner step
    n_data: int | None = 2000  # real samples the network trains on per inner step (methods that train)
    multisize: bool = True  # False: the base method alone (Baseline C)
    subset_weight: float = 1.0
    freeze: str = "paper"  # paper | code | none
    class_wise: bool = False
    init: str = "first"  # first | random
    init_offset: int = 0  # start at image number offset (Baseline B run k uses k)
    model: str = "convnet"
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    method_settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    checkpoint_every: int | None = None  # outer loops; None = period

    def __post_init__(self) -> None:
        for name in ("ipc", "factor", "outer_loops", "inner_loops", "period", "batch_real"):
            if getattr(self, name) < 1:
                raise CondenseConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.method not in METHODS:
            raise CondenseConfigError(f"unknown method {self.method!r}; known: {', '.join(METHODS.names())}")

    def to_dict(self) -> dict:
        return asdict(self)

    def result_hash(self) -> str:
        """Hash of everything that changes the result (not the checkpoint cadence)."""
        d = self.to_dict()
        d.pop("checkpoint_every")
        return config_hash(d)


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
    finished: bool

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
    """Cheap identity of a training set, so a checkpoint never resumes on different data."""
    h = hashlib.sha256()
    h.update(f"{dataset.spec.name}|{len(dataset)}|{tuple(dataset.images.shape)}".encode())
    h.update(dataset.labels.numpy().tobytes())
    h.update(dataset.images.reshape(len(dataset), -1)[:: max(1, len(dataset) // 512)].numpy().tobytes())
    return h.hexdigest()[:16]


def _method_settings(cfg: CondenseConfig) -> dict[str, Any]:
    factory = METHODS.get(cfg.method)
    settings = dict(cfg.method_settings)
    accepted = {f.name for f in fields(factory.Settings)} if hasattr(factory, "Settings") else set()
    if cfg.n_data is not None and "n_data" in accepted:
        settings.setdefault("n_data", cfg.n_data)
    return settings


def _model_factory(cfg: CondenseConfig, dataset: ImageDataset) -> Callable[[], torch.nn.Module]:
    spec = dataset.spec
    kwargs: dict[str, Any] = {"width": cfg.width}
    if cfg.model == "convnet":
        kwargs.update(depth=cfg.depth, norm=cfg.norm)
    return lambda: build_model(cfg.model, spec.image_shape, spec.num_classes, **kwargs)


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


def condense(
    cfg: CondenseConfig,
    train_set: ImageDataset,
    run_dir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    on_outer_loop: Callable[[int, dict], None] | None = None,
) -> CondenseResult:
    """Condense `train_set` to `cfg.ipc` images per class; resumable when `run_dir` is given.

    `stop_after=k` checkpoints and returns after outer loop k (a partial result, `finished=False`);
    `on_outer_loop(t, info)` is called after each outer loop's checkpoint (it may raise to interrupt);
    info holds the loss, the MLS record (if one was selected), the live images [N, C, ...] (read only)
    and the frozen prefix per class that the next loop will use.
    """
    device = resolve_device(cfg.device)
    spec = train_set.spec
    num_classes, (_, height, _) = spec.num_classes, spec.image_shape
    generator = torch.Generator().manual_seed(cfg.seed)
    method = METHODS.get(cfg.method)(allow_flip=spec.allow_flip, **_method_settings(cfg))

    syn = init_synthetic(train_set, cfg.ipc, cfg.factor, cfg.init, cfg.init_offset, generator, device)
    lr = cfg.lr_img if cfg.lr_img is not None else method.default_lr_img(cfg.ipc, height)
    if method.lr_in_pixel_units:  # x_norm = (x - m)/s: the same trajectory as SGD on [0,1] pixels
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(-1, 1, 1)
        lr_t: float | torch.Tensor = lr / std**2
    else:
        lr_t = lr
    syn.clamp_()
    optimizer = MaskedSGD(syn.data, lr_t, cfg.mom_img)
    objective = None
    if cfg.multisize and cfg.ipc > 1:
        ms_cfg = MultisizeConfig(cfg.subset_weight, cfg.period, cfg.freeze, cfg.class_wise)
        objective = Multisize(method, cfg.ipc, num_classes, syn.per_image, ms_cfg, device)

    factory = _model_factory(cfg, train_set)
    with torch.random.fork_rng(devices=[]):
        model = factory().to(device)
    amp = amp_dtype(device) if cfg.amp else None
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    match_ctx = autocast if method.autocast_matching else contextlib.nullcontext
    pool = RealPool(train_set, device)
    ctx = StepContext(real=pool, generator=generator, num_classes=num_classes,
                      reinit=_make_reinit(factory, generator), autocast=autocast)

    run_hash = config_hash({"config": cfg.result_hash(), "data": dataset_fingerprint(train_set)})
    ckpt_path = Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None
    done, elapsed = 0, 0.0
    if ckpt_path is not None and ckpt_path.exists():
        state = safe_torch_load(ckpt_path)
        if state.get("version") != CHECKPOINT_VERSION or state.get("hash") != run_hash:
            raise CheckpointError(
                f"{ckpt_path} belongs to a different run (config/data hash {state.get('hash')} != "
                f"{run_hash}); use another run directory or delete it")
        with torch.no_grad():
            syn.data.copy_(state["images"].to(device))
        optimizer.load_state_dict(state["optimizer"])
        if objective is not None:
            objective.selector.load_state_dict(state["mls"])
        restore_rng_state(state["rng"], generator)
        done, elapsed = int(state["outer_loop"]), float(state["elapsed_s"])

    def save(t: int) -> None:
        if ckpt_path is None:
            return
        atomic_torch_save({
            "version": CHECKPOINT_VERSION, "hash": run_hash, "config": cfg.to_dict(), "outer_loop": t,
            "images": syn.data.detach().cpu(), "optimizer": optimizer.state_dict(),
            "mls": objective.selector.state_dict() if objective is not None else None,
            "rng": rng_state(generator), "elapsed_s": elapsed,
        }, ckpt_path)

    every = cfg.checkpoint_every or cfg.period
    labels = torch.arange(num_classes, device=device)
    classes = list(range(num_classes))
    bar = _Progress()
    bar.start(progress, cfg.outer_loops, done, f"condense {cfg.method} ipc{cfg.ipc}")
    loops_this_run, t_run = 0, time.perf_counter()
    try:
        for t in range(done + 1, cfg.outer_loops + 1):
            t0 = time.perf_counter()
            method.prepare_model(model, ctx)
            measuring = objective is not None and objective.selector.measuring(t)
            mask = objective.trainable_mask(device) if objective is not None else None
            loss = torch.zeros((), device=device)
            for _ in range(cfg.inner_loops):
                real = pool.class_batch(classes, cfg.batch_real, generator)
                real_aug, syn_aug = method.siamese(real, syn.decoded(), generator)
                with match_ctx():
                    if objective is not None:
                        loss = objective.loss(model, syn_aug, real_aug, labels, measure=measuring)
                    else:
                        loss = method.match(model, syn_aug, method.target(model, real_aug, labels), labels)
                optimizer.zero_grad()
                torch.autograd.backward(loss, inputs=[syn.data])
                optimizer.step(mask)
                method.train_model_step(model, ctx)
            syn.clamp_()  # the reference code clamps at the start of the next loop; same images, and
            # clamping here means a prefix frozen from the next loop on is already final
            record = objective.end_outer_loop(t) if objective is not None else None
            loss_value = float(loss.detach())  # the one host sync of this outer loop
            elapsed += time.perf_counter() - t0
            loops_this_run += 1
            stopping = stop_after is not None and t >= stop_after and t < cfg.outer_loops
            if t % every == 0 or t == cfg.outer_loops or stopping:
                save(t)
            done = t
            bar.update(t, loss_value, _mls_text(objective))
            if on_outer_loop is not None:
                on_outer_loop(t, {"loss": loss_value, "mls": record.as_dict() if record else None,
                                  "images": syn.data.detach(), "frozen": _frozen(objective)})
            if stopping:
                break
    finally:
        bar.stop()

    wall = time.perf_counter() - t_run
    timings = {
        "elapsed_s": elapsed, "outer_loops_this_run": loops_this_run,
        "seconds_per_outer_loop": wall / loops_this_run if loops_this_run else None,
        "device": str(device), "threads": torch.get_num_threads(),
    }
    history = [r.as_dict() for r in objective.selector.history] if objective is not None else []
    return CondenseResult(
        images=syn.records(), labels=torch.arange(num_classes).repeat(cfg.ipc), ipc=cfg.ipc,
        num_classes=num_classes, factor=cfg.factor, mls_history=history, timings=timings,
        config=cfg.to_dict(), init_indices=syn.init_indices.clone(), outer_loops_done=done,
        finished=done >= cfg.outer_loops,
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
