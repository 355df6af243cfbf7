"""`runtime.load`: open an .mdc file, pick the prefix size the budget allows, read only that prefix."""

from __future__ import annotations

from typing import Any

from formats import open_mdc
from formats.layout import DEFAULT_MAX_DECODE_BYTES
from formats.source import MDCSource
from runtime.backends import make_trainer
from runtime.budget import Budget, FileFacts, check_int_budget, choose_ipc
from runtime.calibrate import Calibration, calibrate
from runtime.config import TrainConfig
from runtime.dataset import Dataset
from runtime.train import TrainerSource, build_config, initial_params, plan, resolve_bundle

BudgetLike = int | Budget | None


def file_facts(reader: Any) -> FileFacts:
    s = reader.spec
    return FileFacts(ipc_max=reader.ipc_max, blocks_present=reader.blocks_present,
                     num_classes=reader.num_classes, image_shape=tuple(s.image_shape),
                     num_views=s.views.count if s.views is not None else 0,
                     block_bytes=s.block_stride, formation_factor=s.formation_factor)


def _calibrate(reader: Any, budget: Budget, cfg: TrainConfig, backend: str, trainer: TrainerSource,
               arch: str | None, steps: int) -> tuple[Calibration | None, int]:
    """Measure this device with the trainer that training will use; returns (calibration, batch size)."""
    facts = file_facts(reader)
    bundle = resolve_bundle(trainer, reader.trainer_bundle())
    spec, batch, bundle = plan(facts.image_shape, facts.num_classes, arch, backend, cfg, bundle)
    if not budget.needs_calibration:
        return None, batch
    params = initial_params(cfg.with_(init="bundle") if bundle is not None else cfg, spec, bundle, backend)
    views = facts.num_views > 0 and cfg.labels != "hard"
    cal = calibrate(lambda: make_trainer(backend, spec, bundle, params, seed=cfg.seed, threads=cfg.threads),
                    batch, facts.image_shape, facts.num_classes, views, steps=steps, seed=cfg.seed)
    return cal, batch


def load(path: MDCSource, budget: BudgetLike = None, *, config: TrainConfig | None = None,
         backend: str = "onnx", trainer: TrainerSource = None, arch: str | None = None,
         calibration_steps: int = 3, max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
         **settings: Any) -> Dataset:
    """The IPC-k prefix of an .mdc file as a Dataset, reading only that prefix's bytes.

    path: a file path, the file's bytes (bytes, bytearray, memoryview), or a seekable binary file object
    (io.BytesIO, open(path, "rb")). Soft labels stay as the file stores them and decode per batch;
    max_bytes caps what the decoded prefix may take (formats.DecodeLimitError before anything is
    allocated; default 1 GiB, None for no limit).

    budget: an int k (1..ipc_max; runtime.BudgetError outside, formats.TruncatedError past a cut file),
    None (every block present), or Budget(seconds=..., memory_mb=...): the largest prefix whose training
    with `backend`/`trainer` and the training settings (config or TrainConfig fields as keywords)
    fits, after a short calibration on this device (formulas in runtime/budget.py).
    """
    with open_mdc(path) as reader:
        report: dict[str, Any] = {}
        if budget is None:
            k = reader.blocks_present or reader.ipc_max  # 0 present: let read() name the truncation
        elif isinstance(budget, Budget):
            cfg = build_config(config, settings)
            cal, batch = _calibrate(reader, budget, cfg, backend, trainer, arch, calibration_steps)
            k, report = choose_ipc(budget, file_facts(reader), cfg.epochs, batch, cal)
        else:
            k = check_int_budget(budget, reader.ipc_max)
        prefix = reader.read(k, targets="compact", max_bytes=max_bytes, formation="decoded")
        s = reader.spec
        return Dataset(images=prefix.images, labels=prefix.labels, ipc=prefix.ipc,
                       num_classes=prefix.num_classes, class_names=list(s.class_names), views=prefix.views,
                       label_kind=prefix.label_kind or "probs", temperature=prefix.temperature or 1.0,
                       mean=tuple(s.mean), std=tuple(s.std), dataset=s.dataset,
                       trainer_bundle=reader.trainer_bundle(), path=reader.path, budget=report,
                       formation_factor=prefix.formation_factor, stored_images=prefix.stored_images)


__all__ = ["BudgetLike", "file_facts", "load"]
