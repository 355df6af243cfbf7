"""Build a TrainerBundle (runtime/bundle.py) for one network: graphs, initial parameters and state, metadata.

The network is a registered architecture (`arch="convnet"`), a user's factory ("pkg.module:function",
or the callable itself), or a torch module instance; docs/trainer.md, "Your own model".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
import torch
from torch import nn

from condenser.export.errors import ExportError
from condenser.export.train_step import OPSET, StepPlan, export_inference, export_train_step, plan_step
from condenser.models import build_model
from runtime.bundle import (
    LossConfig,
    OptimizerConfig,
    SGDConfig,
    TrainerBundle,
    TrainerMeta,
    build_buffers,
    build_params,
)
from runtime.errors import BundleError, TrainerError
from runtime.user_models import build_user_model, factory_arguments, factory_name, is_factory


@dataclass(frozen=True)
class ExportSettings:
    """What `condenser export-trainer` exports. Defaults: the evaluation protocol's SGD (docs/multisize.md).

    arch: a registered model name, or a factory "pkg.module:function" called with `model_kwargs` (plus
    in_shape / num_classes when its signature names them). optimizer and loss are baked into the train
    step (the learning rate, and AdamW's step count, are inputs); dropout "seeded" takes each nn.Dropout's
    noise as an input that the runtime draws, "off" makes nn.Dropout the identity in the train step.
    """

    arch: str = "convnet"
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    batch_size: int = 64
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=SGDConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dropout: str = "seeded"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # "stored": the seeded torch model's initial parameters, raw (4 bytes per element; torch parity);
    # "seeded": rules that a device builds them by at load time (docs/trainer.md, "Initial parameters")
    params: str = "stored"


PARAM_MODES = ("stored", "seeded")
ModelSource = ExportSettings | nn.Module | str | Callable[..., nn.Module]


def initial_model(settings: ExportSettings) -> nn.Module:
    """The model whose parameters the bundle starts from: built under torch.manual_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if not is_factory(settings.arch):
            return build_model(settings.arch, settings.in_shape, settings.num_classes, **settings.model_kwargs)
        try:
            return build_user_model(settings.arch, settings.in_shape, settings.num_classes, settings.model_kwargs)
        except TrainerError as exc:
            raise ExportError(str(exc)) from None


def _rule(model: nn.Module, name: str, p: torch.Tensor) -> dict[str, float] | None:
    """How a device rebuilds a fresh parameter: torch's default conv/linear init (kaiming_uniform with
    a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weight and bias) when the values lie in that
    range (a factory's own init, normal say, does not, and is stored), a fill for a constant tensor (norm
    affine parameters), None (stored) for anything else."""
    module = model.get_submodule(name.rpartition(".")[0])
    flat = p.detach().reshape(-1)
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and name.rpartition(".")[2] in ("weight", "bias"):
        bound = 1.0 / math.sqrt(module.weight[0].numel())
        if not flat.numel() or float(flat.abs().max()) <= bound * (1 + 1e-6):  # float32 rounding of the bound
            return {"uniform": bound}
    return _fill_rule(name, p)


def _entries(tensors: list[tuple[str, torch.Tensor]], rule: Callable[[str, torch.Tensor], Any] | None) -> list[Any]:
    """Bundle entries: raw float32 bytes, or (with `rule`) the rule that rebuilds the tensor when it has one."""
    out: list[Any] = []
    for name, t in tensors:
        r = rule(name, t) if rule is not None else None
        out.append(r if r is not None else t.detach().cpu().float().numpy().astype("<f4").tobytes())
    return out


def _fill_rule(_name: str, t: torch.Tensor) -> dict[str, float] | None:
    flat = t.detach().reshape(-1)
    return {"fill": float(flat[0])} if flat.numel() and bool((flat == flat[0]).all()) else None


def _resolve(source: ModelSource, settings: ExportSettings | None,
             changes: dict[str, Any]) -> tuple[ExportSettings, nn.Module]:
    """The settings and the model to export, from any of the sources `export_trainer` takes."""
    if isinstance(source, ExportSettings):
        if settings is not None:
            raise ExportError("pass the settings once: export_trainer(settings) or export_trainer(model, settings)")
        s = replace(source, **changes)
        return s, initial_model(s)
    named = settings is not None or "arch" in changes
    s = replace(settings or ExportSettings(), **changes)
    if isinstance(source, nn.Module):
        if s.params == "seeded":
            raise ExportError("params='seeded' draws fresh parameters on the device; a given model's "
                              "parameters are exported with params='stored'")
        return (s if named else replace(s, arch=type(source).__qualname__)), source
    if isinstance(source, str):
        s = replace(s, arch=source)
        return s, initial_model(s)
    if callable(source):
        s = replace(s, arch=factory_name(source) or getattr(source, "__qualname__", type(source).__name__))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            model = source(**factory_arguments(source, s.in_shape, s.num_classes, s.model_kwargs))
        if not isinstance(model, nn.Module):
            raise ExportError(f"the model factory returned a {type(model).__name__}, not a torch.nn.Module")
        return s, model
    raise ExportError(f"cannot export a {type(source).__name__}: pass ExportSettings, a torch module, a factory "
                      "or 'pkg.module:factory'")


def _check_settings(s: ExportSettings) -> None:
    if s.batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {s.batch_size}")
    if s.params not in PARAM_MODES:
        raise ExportError(f"unknown params mode {s.params!r}; known: {', '.join(PARAM_MODES)}")


def _meta(s: ExportSettings, plan: StepPlan, model: nn.Module) -> TrainerMeta:
    io = plan.io
    buffers = dict(model.named_buffers())
    producer = {"torch": torch.__version__, "onnx": onnx.__version__}
    if s.dropout == "off" and any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        producer["dropout"] = "off: nn.Dropout is the identity in the train step"
    return TrainerMeta(
        arch=s.arch, in_shape=tuple(s.in_shape), num_classes=s.num_classes, batch_size=s.batch_size,
        param_names=plan.param_names, param_shapes=[tuple(p.shape) for p in model.parameters()],
        optimizer=s.optimizer, train_inputs=io.train_inputs, train_outputs=io.train_outputs,
        inference_inputs=io.inference_inputs, inference_outputs=io.inference_outputs,
        arch_kwargs=dict(s.model_kwargs), loss=s.loss, seed=s.seed, dataset=s.dataset, mean=s.mean, std=s.std,
        opset=OPSET, producer=producer, buffer_names=plan.buffer_names,
        buffer_shapes=[tuple(buffers[b].shape) for b in plan.buffer_names], dropout=plan.dropout)


def export_trainer(source: ModelSource, settings: ExportSettings | None = None, /, **changes: Any) -> TrainerBundle:
    """Export train-step and inference graphs of a network, with its initial parameters and state.

    source: an ExportSettings (its `arch`, built under its seed: what `condenser build` embeds); a factory
    string "pkg.module:function" or the callable (built under the seed); or a torch module, whose current
    parameters and buffers are the initial ones (stored raw). settings / changes: ExportSettings fields,
    e.g. export_trainer("mypkg.nets:small_cnn", in_shape=(3, 32, 32), num_classes=10,
    optimizer=AdamWConfig(), loss=LossConfig("kl_divergence", temperature=4.0)).
    """
    s, model = _resolve(source, settings, changes)
    _check_settings(s)
    model = model.float()
    plan = plan_step(model, s.batch_size, s.in_shape, s.num_classes, s.optimizer, s.loss, s.dropout)
    meta = _meta(s, plan, model)
    buffers = dict(model.named_buffers())
    seeded = s.params == "seeded"
    params, rules = build_params(meta, _entries(list(model.named_parameters()),
                                                (lambda n, p: _rule(model, n, p)) if seeded else None))
    state, state_rules = build_buffers(meta, _entries([(b, buffers[b]) for b in plan.buffer_names],
                                                      _fill_rule if seeded else None))
    train_step = export_train_step(model, plan)
    inference = export_inference(model, plan)
    try:
        return TrainerBundle(meta=meta, train_step=train_step, inference=inference, params=params,
                             param_rules=rules if any(r is not None for r in rules) else None, buffers=state,
                             buffer_rules=state_rules if any(r is not None for r in state_rules) else None)
    except BundleError as exc:  # the exporter emitted what a device refuses: name it as an export failure
        raise ExportError(f"the exported graphs would be refused by a device: {exc}") from None
