"""`runtime.train` and `runtime.evaluate`: the training loop both backends share.

One loop, so the backends differ only in who computes a step: batches (views replayed in numpy,
padded with zero weights), the learning-rate schedule and the seed are the same for onnx and torch.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from formats.atomic import atomic_write_bytes
from runtime import checkpoint as ckpt
from runtime.backends import ModelSpec, Trainer, make_trainer
from runtime.bundle import OptimizerConfig, TrainerBundle
from runtime.checkpoint import CheckpointError, LoopState, ModelState
from runtime.config import DEFAULT_BATCH_SIZE, TrainConfig, learning_rate, steps_per_epoch
from runtime.data import prepare_images
from runtime.dataset import Dataset
from runtime.errors import ConfigError, DivergedError, TrainerError
from runtime.inference_graph import bake_params
from runtime.init import init_params
from runtime.onnx_check import check_model

TrainerSource = TrainerBundle | bytes | str | os.PathLike | None


@dataclass
class Model:
    """A trained network: parameters (numpy, in `spec.param_names` order) and a backend to run it.

    `save`/`load` write and read a checkpoint (runtime/checkpoint.py) that `runtime.train(resume=...)`
    continues bit-identically; `export_onnx` writes a plain inference model (docs/trainer.md).
    """

    spec: ModelSpec
    backend: str
    config: TrainConfig
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    steps: int = 0
    seconds: float = 0.0
    ipc: int | None = None
    _trainer: Trainer | None = field(default=None, repr=False)
    _bundle: TrainerBundle | None = field(default=None, repr=False)
    _loop: LoopState | None = field(default=None, repr=False)

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def params(self) -> dict[str, np.ndarray]:
        return dict(zip(self.spec.param_names, self._trainer.get_params(), strict=True))

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """State buffers (BatchNorm running mean / variance), updated by training, used by inference."""
        return dict(zip(self.spec.buffer_names, self._trainer.get_buffers(), strict=True))

    @property
    def finished(self) -> bool:
        """Whether every epoch of `config.epochs` has run (a checkpoint of a killed run has not)."""
        return self._loop is not None and self._loop.epoch >= self.config.epochs

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, K]; x as in `evaluate` (uint8 or normalised float32)."""
        return self._trainer.logits(prepare_images(x, self.spec.in_shape, self.mean, self.std))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)

    def state(self) -> ModelState:
        """Parameters, optimizer state, buffers, settings and loop position, as a checkpoint stores them."""
        loop = copy.copy(self._loop) if self._loop is not None else LoopState.start(self.config.seed, {})
        tr = self._trainer
        return ModelState(backend=self.backend, spec=self.spec, config=self.config, params=tr.get_params(),
                          slots=tr.get_slots(), buffers=tr.get_buffers(),
                          loop=loop, mean=self.mean, std=self.std, ipc=self.ipc, losses=list(self.losses),
                          seconds=self.seconds, bundle=None if self._bundle is None else self._bundle.to_bytes())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint atomically (formats/atomic.py): msgpack and raw float32 arrays, no pickle."""
        ckpt.save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str | None = None, threads: int | None = None) -> Model:
        """A Model from a checkpoint, ready to predict, export or continue (`runtime.train(resume=...)`);
        backend None = the one it was trained with."""
        return model_from_state(ckpt.load(path), backend, threads)

    def export_onnx(self, path: str | os.PathLike[str]) -> None:
        """Write `x -> logits` as a plain ONNX model with the trained parameters and buffers as initializers.

        x is float32 [B, C, H, W], normalised with `mean`/`std`, B the trainer's fixed batch size; the
        graph is the bundle's inference graph (BatchNorm on the trained running statistics), so it passes
        runtime/onnx_check.py like the bundle does.
        """
        if self._bundle is None:
            raise TrainerError("export_onnx() needs a trainer bundle's inference graph; this model was trained "
                               "with backend='torch' and no bundle: pass trainer= to runtime.train")
        names = self._bundle.meta.inference_inputs[1:]
        graph = bake_params(self._bundle.inference, names,
                            [*self._trainer.get_params(), *self._trainer.get_buffers()])
        check_model(graph, "exported inference")
        atomic_write_bytes(path, graph)


def model_from_state(s: ModelState, backend: str | None = None, threads: int | None = None) -> Model:
    """Rebuild a backend trainer from a checkpoint's parameters, optimizer state and buffers."""
    bundle = TrainerBundle.from_bytes(s.bundle) if s.bundle is not None else None
    backend = backend or s.backend
    tr = make_trainer(backend, s.spec, bundle, s.params, seed=s.config.seed, threads=threads,
                      buffers=s.buffers)
    tr.set_slots(s.slots)
    return Model(spec=tr.spec, backend=backend, config=s.config, mean=s.mean, std=s.std, losses=list(s.losses),
                 steps=s.loop.step, seconds=s.seconds, ipc=s.ipc, _trainer=tr, _bundle=bundle, _loop=s.loop)


def resolve_bundle(trainer: TrainerSource, embedded: bytes | None) -> TrainerBundle | None:
    """An explicit trainer (a bundle, its bytes or a bundle file) wins over the one embedded in the file."""
    if isinstance(trainer, TrainerBundle):
        return trainer
    if isinstance(trainer, (bytes, bytearray, memoryview)):
        return TrainerBundle.from_bytes(trainer)
    if trainer is not None:
        return TrainerBundle.load(trainer)
    if embedded is not None:
        return TrainerBundle.from_bytes(embedded)
    return None


def _check_bundle(bundle: TrainerBundle, image_shape: tuple[int, int, int], num_classes: int) -> None:
    m = bundle.meta
    if tuple(m.in_shape) != tuple(image_shape) or m.num_classes != num_classes:
        raise TrainerError(f"trainer bundle is for inputs {tuple(m.in_shape)} with {m.num_classes} classes; "
                           f"the data has {tuple(image_shape)} with {num_classes}")


def build_config(config: TrainConfig | None, settings: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    return (config or TrainConfig()).with_(**settings)


def _bundle_for(bundle: TrainerBundle | None, arch: str | None, arch_kwargs: dict[str, Any] | None,
                backend: str) -> TrainerBundle | None:
    """The bundle if it trains the asked network; one that describes another network is dropped for the
    torch backend and an error for the onnx one."""
    if bundle is None:
        return None
    m = bundle.meta
    if (arch is None or arch == m.arch) and (arch_kwargs is None or dict(arch_kwargs) == dict(m.arch_kwargs)):
        return bundle
    if backend == "onnx":
        raise TrainerError(f"the trainer bundle trains {m.arch!r} {m.arch_kwargs}, not {arch!r} "
                           f"{arch_kwargs or {}}; pass a matching trainer= or use backend='torch'")
    return None


def _optimizer_with(opt: OptimizerConfig, cfg: TrainConfig, baked: bool) -> OptimizerConfig:
    """The optimizer with TrainConfig's momentum / weight_decay: an onnx graph bakes them in, so there an
    explicit value must equal the bundle's; the torch backend takes it."""
    changes = {}
    for name in ("momentum", "weight_decay"):
        v = getattr(cfg, name)
        if v is None:
            continue
        if not hasattr(opt, name):
            raise ConfigError(f"{name}={v} does not apply to the trainer's optimizer {opt.name!r}")
        if baked and not math.isclose(v, getattr(opt, name), rel_tol=1e-6):
            raise ConfigError(f"{name}={v} but the onnx train step has {getattr(opt, name)} built in")
        changes[name] = float(v)
    return replace(opt, **changes)


def plan(image_shape: tuple[int, int, int], num_classes: int, arch: str | None, backend: str,
         cfg: TrainConfig, bundle: TrainerBundle | None, arch_kwargs: dict[str, Any] | None = None,
         ) -> tuple[ModelSpec, int, TrainerBundle | None]:
    """The network spec and batch size a run uses, and the bundle that trains it (None: torch builds it)."""
    if bundle is not None:
        _check_bundle(bundle, image_shape, num_classes)
    bundle = _bundle_for(bundle, arch, arch_kwargs, backend)
    if bundle is not None:
        spec = ModelSpec.from_bundle(bundle)
        if backend == "onnx" and cfg.batch_size is not None and cfg.batch_size != spec.batch_size:
            raise ConfigError(f"batch_size={cfg.batch_size} but the onnx train step takes batches of "
                              f"{spec.batch_size}; export a trainer with --batch-size {cfg.batch_size}")
    elif backend == "onnx":
        raise TrainerError("backend 'onnx' needs a trainer bundle: the file embeds none; export one with "
                           "`condenser export-trainer` and pass trainer=PATH (or use backend='torch')")
    else:
        spec = ModelSpec(arch=arch or "convnet", in_shape=tuple(image_shape), num_classes=num_classes,
                         arch_kwargs=dict(arch_kwargs or {}))
    spec = replace(spec, optimizer=_optimizer_with(spec.optimizer, cfg, baked=backend == "onnx"))
    batch = cfg.batch_size or spec.batch_size or DEFAULT_BATCH_SIZE
    return spec, int(batch), bundle


def initial_params(cfg: TrainConfig, spec: ModelSpec, bundle: TrainerBundle | None,
                   backend: str) -> list[np.ndarray] | None:
    if cfg.init == "bundle":
        if bundle is None:
            raise ConfigError("init='bundle' needs a trainer bundle with initial parameters")
        return bundle.initial_params()
    if backend == "torch":
        return None  # torch's own layer init, seeded
    return init_params(bundle.meta.param_names, bundle.params, cfg.seed)


def initial_buffers(cfg: TrainConfig, bundle: TrainerBundle | None) -> list[np.ndarray] | None:
    """init 'bundle': the bundle's buffers (perhaps a trained model's running statistics); 'seed': fresh
    ones, as torch initialises BatchNorm (running mean 0, running variance 1); None: the torch model's own."""
    if bundle is None:
        return None
    if cfg.init == "bundle":
        return bundle.initial_buffers()
    return [np.full(shape, 1.0 if name.endswith("running_var") else 0.0, np.float32)
            for name, shape in zip(bundle.meta.buffer_names, bundle.meta.buffer_shapes, strict=True)]


def _fresh_model(ds: Dataset, arch: str | None, backend: str, cfg: TrainConfig, trainer: TrainerSource,
                 arch_kwargs: dict[str, Any] | None) -> Model:
    bundle = resolve_bundle(trainer, ds.trainer_bundle)
    spec, _, bundle = plan(ds.image_shape, ds.num_classes, arch, backend, cfg, bundle, arch_kwargs)
    params = initial_params(cfg, spec, bundle, backend)
    tr = make_trainer(backend, spec, bundle, params, seed=cfg.seed, threads=cfg.threads,
                      buffers=initial_buffers(cfg, bundle))
    return Model(spec=tr.spec, backend=backend, config=cfg, mean=ds.mean, std=ds.std, ipc=ds.ipc,
                 _trainer=tr, _bundle=bundle, _loop=LoopState.start(cfg.seed, ckpt.data_fingerprint(ds)))


def _resume_config(saved: TrainConfig, config: TrainConfig | None, explicit: dict[str, Any],
                   where: str) -> TrainConfig:
    """The checkpoint's settings; those this call states must agree (threads may change)."""
    asked = {**({f.name: getattr(config, f.name) for f in fields(TrainConfig)} if config else {}), **explicit}
    build_config(None, asked)  # unknown or invalid settings fail as for a fresh run
    for name, value in asked.items():
        if name != "threads" and value != getattr(saved, name):
            raise CheckpointError(f"{where}: the run was started with {name}={getattr(saved, name)!r}, "
                                  f"this call asks for {name}={value!r}")
    return saved.with_(threads=asked.get("threads", saved.threads))


def _resumed_model(state: ModelState, ds: Dataset, arch: str | None, backend: str | None, trainer: TrainerSource,
                   config: TrainConfig | None, explicit: dict[str, Any], where: str) -> Model:
    """The model of a checkpoint, after checking that this call continues the same run on the same data."""
    cfg = _resume_config(state.config, config, explicit, where)
    if backend is not None and backend != state.backend:
        raise CheckpointError(f"{where}: the run trains with backend {state.backend!r}, this call asks for "
                              f"{backend!r}")
    if arch is not None and arch != state.spec.arch:
        raise CheckpointError(f"{where}: the run trains {state.spec.arch!r}, this call asks for {arch!r}")
    if trainer is not None and resolve_bundle(trainer, None).to_bytes() != state.bundle:
        raise CheckpointError(f"{where}: trainer= is not the trainer bundle the run started with")
    data = ckpt.data_fingerprint(ds)
    for key, value in state.loop.data.items():
        if data.get(key) != value:
            raise CheckpointError(f"{where}: the run trained on other data ({key} {value!r}, this dataset "
                                  f"{data.get(key)!r})")
    state.config = cfg
    return model_from_state(state, threads=cfg.threads)


def _resume_state(resume: Model | str | os.PathLike | None,
                  checkpoint: str | os.PathLike | None) -> tuple[ModelState | None, str]:
    """What to continue: `resume` (a Model or a checkpoint file), else `checkpoint` if that file exists."""
    if isinstance(resume, Model):
        return resume.state(), "resume= model"
    if resume is not None:
        return ckpt.load(resume), str(resume)
    if checkpoint is not None and os.path.exists(checkpoint):
        return ckpt.load(checkpoint), str(checkpoint)
    return None, ""


def train(ds: Dataset, arch: str | None = None, backend: str | None = None, *, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, schedule: str | None = None,
          seed: int | None = None, labels: str | None = None, init: str | None = None,
          momentum: float | None = None, weight_decay: float | None = None, threads: int | None = None,
          trainer: TrainerSource = None, config: TrainConfig | None = None,
          arch_kwargs: dict[str, Any] | None = None,
          callback: Callable[[int, float], None] | None = None,
          progress: Callable[[int, int], None] | None = None,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          resume: Model | str | os.PathLike | None = None, **settings: Any) -> Model:
    """Train a network on `ds` and return it.

    The keyword settings are TrainConfig fields (see runtime/config.py for defaults and meaning); those
    given override `config`. arch None = the trainer bundle's, else "convnet"; backend None = "onnx".
    trainer: a TrainerBundle, its bytes or a bundle file; None = the bundle embedded in the file.
    callback(epoch, mean_loss) runs after every epoch, progress(steps_done, steps_total) after every step
    (runtime.progress.step_reporter turns it into log lines). Unknown keywords raise ConfigError.

    checkpoint: a file the run saves itself to (Model.save) every `checkpoint_every` steps, or after
    every epoch when that is None, and at the end; when the file exists, train() continues from it, so
    calling it again after the app was killed finishes the same run bit-identically. resume: a Model or
    checkpoint file to continue from. A continued run takes the checkpoint's settings; settings given
    here must equal them (CheckpointError), and so must the data.
    """
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ConfigError(f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}")
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, seed=seed, labels=labels,
                 init=init, momentum=momentum, weight_decay=weight_decay, threads=threads)
    explicit = {**{k: v for k, v in given.items() if v is not None}, **settings}
    state, where = _resume_state(resume, checkpoint)
    if state is None:
        cfg = build_config(config, explicit)
        model = _fresh_model(ds, arch, backend or "onnx", cfg, trainer, arch_kwargs)
    else:
        model = _resumed_model(state, ds, arch, backend, trainer, config, explicit, where)
    mode = ds.resolve_labels(model.config.labels)
    batch = model.config.batch_size or model.spec.batch_size or DEFAULT_BATCH_SIZE
    _run(model, ds, mode, int(batch), callback, progress, checkpoint, checkpoint_every)
    return model


def _run(model: Model, ds: Dataset, mode: str, batch_size: int, callback: Callable[[int, float], None] | None,
         progress: Callable[[int, int], None] | None, checkpoint: str | os.PathLike | None,
         every: int | None) -> None:
    """The loop, from wherever `model._loop` stands: per epoch a permutation, then per batch its views,
    all from the loop's one generator, so a continued run draws exactly what an unbroken one draws."""
    cfg, tr, loop = model.config, model._trainer, model._loop
    spe = steps_per_epoch(len(ds), batch_size)
    rng = loop.generator()
    t0, seconds0 = time.perf_counter(), model.seconds

    def save() -> None:
        loop.rng = rng.bit_generator.state
        model.steps, model.seconds = loop.step, seconds0 + time.perf_counter() - t0
        if checkpoint is not None:
            model.save(checkpoint)

    if progress is not None:
        progress(loop.step, cfg.epochs * spe)
    while loop.epoch < cfg.epochs:
        order = loop.order if loop.order is not None else rng.permutation(len(ds))
        for j in range(loop.batch, spe):
            batch = ds.batch(order[j * batch_size:(j + 1) * batch_size], batch_size, mode, rng)
            lr = learning_rate(cfg, loop.step, spe)
            loss = tr.step(lr, batch.x, batch.targets, batch.weights, step=loop.step)
            if not math.isfinite(loss):
                raise DivergedError(f"loss became {loss} at epoch {loop.epoch}, step {loop.step} (lr {lr:.3g}); "
                                    "lower lr")
            loop.epoch_loss += loss
            loop.step += 1
            if progress is not None:
                progress(loop.step, cfg.epochs * spe)
            if every is not None and loop.step % every == 0 and j + 1 < spe:
                loop.batch, loop.order = j + 1, order
                save()
        model.losses.append(loop.epoch_loss / spe)
        loop.epoch, loop.batch, loop.order, loop.epoch_loss = loop.epoch + 1, 0, None, 0.0
        if callback is not None:
            callback(loop.epoch - 1, model.losses[-1])
        if loop.epoch < cfg.epochs and (every is None or loop.step % every == 0):
            save()
    save()


def evaluate(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]; x uint8 (normalised with the file's mean/std) or normalised float32."""
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ConfigError(f"{len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise ConfigError("evaluate() needs at least one test image")
    return float((model.predict(x) == y).mean())


__all__ = ["Model", "evaluate", "train"]
