"""Build a TrainerBundle (runtime/bundle.py) for one architecture: graphs, initial parameters, metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import nn

from condenser.export.errors import ExportError
from condenser.export.train_step import (
    OPSET,
    export_inference,
    export_train_step,
    exportable_param_names,
    graph_names,
)
from condenser.models import Classifier, build_model
from runtime.bundle import SGDConfig, TrainerBundle, TrainerMeta, build_params


@dataclass(frozen=True)
class ExportSettings:
    """What `condenser export-trainer` exports. Defaults: the evaluation protocol's SGD (docs/multisize.md)."""

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
    # "stored": the seeded torch model's initial parameters, raw (4 bytes per element; torch parity);
    # "seeded": rules that a device builds them by at load time (docs/trainer.md, "Initial parameters")
    params: str = "stored"


PARAM_MODES = ("stored", "seeded")


def initial_model(settings: ExportSettings) -> Classifier:
    """The model whose parameters the bundle starts from: built under torch.manual_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return build_model(settings.arch, settings.in_shape, settings.num_classes, **settings.model_kwargs)


def _rule(model: nn.Module, name: str, p: torch.Tensor) -> dict[str, float] | None:
    """How a device rebuilds a fresh parameter: torch's default conv/linear init (kaiming_uniform with
    a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weight and bias), a fill for a constant
    tensor (norm affine parameters), None (stored) for anything else."""
    module = model.get_submodule(name.rpartition(".")[0])
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and name.rpartition(".")[2] in ("weight", "bias"):
        return {"uniform": 1.0 / math.sqrt(module.weight[0].numel())}
    flat = p.detach().reshape(-1)
    if flat.numel() and bool((flat == flat[0]).all()):
        return {"fill": float(flat[0])}
    return None


def _param_entries(model: nn.Module, mode: str) -> list[Any]:
    """The bundle's parameter entries: raw float32 bytes, or (mode "seeded") the rules of `_rule`."""
    entries: list[Any] = []
    for name, p in model.named_parameters():
        rule = _rule(model, name, p) if mode == "seeded" else None
        entries.append(rule if rule is not None else p.detach().cpu().numpy().astype("<f4").tobytes())
    return entries


def export_trainer(settings: ExportSettings, model: Classifier | None = None) -> TrainerBundle:
    """Export train-step and inference graphs; parameters from `model` if given, else from the seed."""
    if settings.batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {settings.batch_size}")
    if settings.params not in PARAM_MODES:
        raise ExportError(f"unknown params mode {settings.params!r}; known: {', '.join(PARAM_MODES)}")
    if settings.params == "seeded" and model is not None:
        raise ExportError("params='seeded' draws fresh parameters on the device; a given model's "
                          "parameters are exported with params='stored'")
    model = (model if model is not None else initial_model(settings)).float().train()
    names = exportable_param_names(model)
    shapes = [tuple(p.shape) for p in model.parameters()]
    gn = graph_names(names)
    meta = TrainerMeta(
        arch=settings.arch, in_shape=tuple(settings.in_shape), num_classes=settings.num_classes,
        batch_size=settings.batch_size, param_names=names, param_shapes=shapes,
        optimizer=settings.sgd, train_inputs=gn.train_inputs, train_outputs=gn.train_outputs,
        inference_inputs=gn.inference_inputs, inference_outputs=gn.inference_outputs,
        arch_kwargs=dict(settings.model_kwargs), seed=settings.seed, dataset=settings.dataset,
        mean=settings.mean, std=settings.std, opset=OPSET,
        producer={"torch": torch.__version__, "onnx": onnx.__version__})
    params, rules = build_params(meta, _param_entries(model, settings.params))
    return TrainerBundle(
        meta=meta,
        train_step=export_train_step(model, settings.batch_size, settings.in_shape, settings.num_classes,
                                     settings.sgd),
        inference=export_inference(model, settings.batch_size, settings.in_shape),
        params=params, param_rules=rules if any(r is not None for r in rules) else None)
