"""Build a TrainerBundle (runtime/bundle.py) for one architecture: graphs, initial parameters, metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx
import torch

from condenser.export.errors import ExportError
from condenser.export.train_step import (
    OPSET,
    export_inference,
    export_train_step,
    exportable_param_names,
    graph_names,
)
from condenser.models import Classifier, build_model
from runtime.bundle import SGDConfig, TrainerBundle, TrainerMeta


@dataclass(frozen=True)
class ExportSettings:
    """What `condenser export-trainer` exports. Defaults: the evaluation protocol's SGD (DESIGN.md)."""

    arch: str = "convnet"
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    batch_size: int = 64
    seed: int = 0
    sgd: SGDConfig = field(default_factory=SGDConfig)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def initial_model(settings: ExportSettings) -> Classifier:
    """The model whose parameters the bundle starts from: built under torch.manual_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return build_model(settings.arch, settings.in_shape, settings.num_classes, **settings.model_kwargs)


def export_trainer(settings: ExportSettings, model: Classifier | None = None) -> TrainerBundle:
    """Export train-step and inference graphs; parameters from `model` if given, else from the seed."""
    if settings.batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {settings.batch_size}")
    model = (model if model is not None else initial_model(settings)).float().train()
    names = exportable_param_names(model)
    params = [p.detach().cpu().numpy().astype("float32") for p in model.parameters()]
    gn = graph_names(names)
    meta = TrainerMeta(
        arch=settings.arch, in_shape=tuple(settings.in_shape), num_classes=settings.num_classes,
        batch_size=settings.batch_size, param_names=names, param_shapes=[tuple(p.shape) for p in params],
        optimizer=settings.sgd, train_inputs=gn.train_inputs, train_outputs=gn.train_outputs,
        inference_inputs=gn.inference_inputs, inference_outputs=gn.inference_outputs,
        arch_kwargs=dict(settings.model_kwargs), seed=settings.seed, dataset=settings.dataset,
        mean=settings.mean, std=settings.std, opset=OPSET,
        producer={"torch": torch.__version__, "onnx": onnx.__version__})
    return TrainerBundle(
        meta=meta,
        train_step=export_train_step(model, settings.batch_size, settings.in_shape, settings.num_classes,
                                     settings.sgd),
        inference=export_inference(model, settings.batch_size, settings.in_shape),
        params=params)
