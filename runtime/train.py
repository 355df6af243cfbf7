"""`runtime.train` and `runtime.evaluate`: the training loop both backends share.

One loop, so the backends differ only in who computes a step: batches (views replayed in numpy,
padded with zero weights), the learning-rate schedule and the seed are the same for onnx and torch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from runtime.backends import ModelSpec, Trainer, make_trainer
from runtime.bundle import TrainerBundle
from runtime.config import DEFAULT_BATCH_SIZE, TrainConfig, learning_rate, steps_per_epoch
from runtime.data import prepare_images
from runtime.dataset import Dataset
from runtime.errors import ConfigError, DivergedError, TrainerError
from runtime.init import init_params

TrainerSource = TrainerBundle | bytes | str | os.PathLike | None


@dataclass
class Model:
    """A trained network: parameters (numpy, in `spec.param_names` order) and a backend to run it."""

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

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def params(self) -> dict[str, np.ndarray]:
        return dict(zip(self.spec.param_names, self._trainer.get_params(), strict=True))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, K]; x as in `evaluate` (uint8 or normalised float32)."""
        return self._trainer.logits(prepare_images(x, self.spec.in_shape, self.mean, self.std))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)


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


def plan(image_shape: tuple[int, int, int], num_classes: int, arch: str | None, backend: str,
         cfg: TrainConfig, bundle: TrainerBundle | None, arch_kwargs: dict[str, Any] | None = None,
         ) -> tuple[ModelSpec, int, TrainerBundle | None]:
    """The network spec and batch size a run uses; a bundle that describes another network is dropped
    for the torch backend and an error for the onnx one."""
    if bundle is not None:
        _check_bundle(bundle, image_shape, num_classes)
        m = bundle.meta
        same = (arch is None or arch == m.arch) and (
            arch_kwargs is None or dict(arch_kwargs) == dict(m.arch_kwargs))
        if not same:
            if backend == "onnx":
                raise TrainerError(f"the trainer bundle trains {m.arch!r} {m.arch_kwargs}, not {arch!r} "
                                   f"{arch_kwargs or {}}; pass a matching trainer= or use backend='torch'")
            bundle = None
    if bundle is not None:
        spec = ModelSpec.from_bundle(bundle)
        if backend == "onnx":
            for name in ("momentum", "weight_decay"):
                v = getattr(cfg, name)
                if v is not None and not math.isclose(v, getattr(spec, name), rel_tol=1e-6):
                    raise ConfigError(f"{name}={v} but the onnx train step has {getattr(spec, name)} "
                                      "built in")
            if cfg.batch_size is not None and cfg.batch_size != spec.batch_size:
                raise ConfigError(f"batch_size={cfg.batch_size} but the onnx train step takes batches of "
                                  f"{spec.batch_size}; export a trainer with --batch-size {cfg.batch_size}")
    else:
        if backend == "onnx":
            raise TrainerError("backend 'onnx' needs a trainer bundle: the file embeds none; export one with "
                               "`condenser export-trainer` and pass trainer=PATH (or use backend='torch')")
        spec = ModelSpec(arch=arch or "convnet", in_shape=tuple(image_shape), num_classes=num_classes,
                         arch_kwargs=dict(arch_kwargs or {}))
    spec = replace(spec, momentum=spec.momentum if cfg.momentum is None else float(cfg.momentum),
                   weight_decay=spec.weight_decay if cfg.weight_decay is None else float(cfg.weight_decay))
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


def train(ds: Dataset, arch: str | None = None, backend: str = "onnx", *, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, schedule: str | None = None,
          seed: int | None = None, labels: str | None = None, init: str | None = None,
          momentum: float | None = None, weight_decay: float | None = None, threads: int | None = None,
          trainer: TrainerSource = None, config: TrainConfig | None = None,
          arch_kwargs: dict[str, Any] | None = None,
          callback: Callable[[int, float], None] | None = None,
          progress: Callable[[int, int], None] | None = None, **settings: Any) -> Model:
    """Train a fresh network on `ds` and return it.

    The keyword settings are TrainConfig fields (see runtime/config.py for defaults and meaning); those
    given override `config`. arch None = the trainer bundle's, else "convnet". trainer: a TrainerBundle,
    its bytes or a bundle file; None = the bundle embedded in the file. callback(epoch, mean_loss) runs
    after every epoch, progress(steps_done, steps_total) after every step (runtime.progress.step_reporter
    turns it into log lines). Unknown keywords raise ConfigError.
    """
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, seed=seed, labels=labels,
                 init=init, momentum=momentum, weight_decay=weight_decay, threads=threads)
    cfg = build_config(config, {**{k: v for k, v in given.items() if v is not None}, **settings})
    mode = ds.resolve_labels(cfg.labels)
    bundle = resolve_bundle(trainer, ds.trainer_bundle)
    spec, batch_size, bundle = plan(ds.image_shape, ds.num_classes, arch, backend, cfg, bundle, arch_kwargs)
    params = initial_params(cfg, spec, bundle, backend)
    tr = make_trainer(backend, spec, bundle, params, seed=cfg.seed, threads=cfg.threads)
    model = Model(spec=tr.spec, backend=backend, config=cfg, mean=ds.mean, std=ds.std, ipc=ds.ipc,
                  _trainer=tr)
    rng = np.random.default_rng(cfg.seed)
    spe = steps_per_epoch(len(ds), batch_size)
    t0 = time.perf_counter()
    step = 0
    if progress is not None:
        progress(0, cfg.epochs * spe)
    for epoch in range(cfg.epochs):
        total = 0.0
        for batch in ds.batches(batch_size, labels=mode, rng=rng):
            loss = tr.step(learning_rate(cfg, step, spe), batch.x, batch.targets, batch.weights)
            if not math.isfinite(loss):
                raise DivergedError(f"loss became {loss} at epoch {epoch}, step {step} (lr "
                                    f"{learning_rate(cfg, step, spe):.3g}); lower lr")
            total += loss
            step += 1
            if progress is not None:
                progress(step, cfg.epochs * spe)
        model.losses.append(total / spe)
        if callback is not None:
            callback(epoch, model.losses[-1])
    model.steps, model.seconds = step, time.perf_counter() - t0
    return model


def evaluate(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]; x uint8 (normalised with the file's mean/std) or normalised float32."""
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ConfigError(f"{len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise ConfigError("evaluate() needs at least one test image")
    return float((model.predict(x) == y).mean())


__all__ = ["Model", "evaluate", "train"]
