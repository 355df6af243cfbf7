"""The trainer bundle: train-step and inference ONNX graphs, initial parameters and metadata.

One self-describing bytes blob, so it can be a standalone file or embedded (opaque) in an .mdc.
Only numpy and msgpack are needed to read it: a device never imports torch for this.

Layout (msgpack map, all arrays little-endian float32 in C order):
    {"format": "multisize-trainer", "version": 1,
     "meta": TrainerMeta as a map (optimizer nested as a map),
     "train_step": <ONNX model bytes>, "inference": <ONNX model bytes>,
     "params": [<parameter i>, ...],  # order and shapes = meta.param_names/param_shapes
     "buffers": [<buffer i>, ...]     # only with state buffers: meta.buffer_names/buffer_shapes
    }
Parameter i is its raw bytes, or a rule that builds it at load time (docs/trainer.md, "Initial
parameters"): {"fill": v} (every element v) or {"uniform": b} (U(-b, b) drawn from meta.seed), so a
freshly initialised network costs a few bytes per tensor instead of 4 per element.
A bundle read from a file is untrusted: every meta field is type- and range-checked and both graphs
pass runtime/onnx_check.py before anything runs them (docs/trainer.md).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import numpy as np

from formats.atomic import atomic_write
from runtime.errors import BundleError
from runtime.onnx_check import check_model

FORMAT = "multisize-trainer"
VERSION = 1
_DTYPE = np.dtype("<f4")
MAX_DIM = 1 << 31  # any one size in a shape; the parameter bytes must match the shapes exactly anyway
MAX_NDIM = 8
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class SGDConfig:
    """PyTorch SGD semantics (no dampening), baked into the train-step graph; buffers start at zero:
    g = grad + weight_decay * p;  buf = momentum * buf + g;  p = p - lr * (g + momentum * buf if nesterov
    else buf)."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    name: str = "sgd"
    nesterov: bool = False

    slots: ClassVar[tuple[str, ...]] = ("momentum",)
    takes_step: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"momentum": self.momentum, "weight_decay": self.weight_decay, "name": self.name}
        if self.nesterov:  # written only when set, so a plain-SGD bundle keeps its bytes
            d["nesterov"] = True
        return d


@dataclass(frozen=True)
class AdamWConfig:
    """PyTorch AdamW semantics, baked into the graph except lr and the step count t (1-based), both inputs:
    p = p * (1 - lr * wd);  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    name: str = "adamw"

    slots: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")
    takes_step: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight_decay": self.weight_decay, "betas": list(self.betas), "eps": self.eps}


OptimizerConfig = SGDConfig | AdamWConfig
OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("soft_cross_entropy", "kl_divergence", "hard_cross_entropy")
TARGET_KINDS = ("probs", "index")


@dataclass(frozen=True)
class LossConfig:
    """The loss of the train step, per sample, then weighted: sum(w * l) / sum(w).

    soft_cross_entropy: -sum(t * log_softmax(z)); kl_divergence: T^2 * KL(t || softmax(z / T)) (the
    distillation loss of SRe2L, section 3.3); hard_cross_entropy: -log_softmax(z)[y], y the argmax of the
    target row (targets "probs", [B, K]) or the class index itself (targets "index", int64 [B]).
    """

    name: str = "soft_cross_entropy"
    temperature: float = 1.0
    targets: str = "probs"

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise BundleError(f"unknown loss {self.name!r}; known: {', '.join(LOSSES)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise BundleError(f"loss temperature must be a positive finite number, got {self.temperature!r}")
        if self.temperature != 1.0 and self.name != "kl_divergence":
            raise BundleError(f"a temperature applies to kl_divergence only, not {self.name}")
        if self.targets not in TARGET_KINDS or (self.targets == "index" and self.name != "hard_cross_entropy"):
            raise BundleError(f"targets {self.targets!r}: 'index' is for hard_cross_entropy only; known: "
                              f"{', '.join(TARGET_KINDS)}")

    def settings(self) -> dict[str, Any]:
        """The non-default settings, as meta.loss_settings stores them."""
        d: dict[str, Any] = {}
        if self.name == "kl_divergence":
            d["temperature"] = self.temperature
        if self.targets != "probs":
            d["targets"] = self.targets
        return d


@dataclass(frozen=True)
class DropoutSpec:
    """One nn.Dropout of the model: its module path, drop probability and per-sample input shape. The train
    step takes its noise, uniform [0, 1) float32 [B, *shape], as the input `noise:<module>`, and keeps an
    element where noise >= p (scaled by 1 / (1 - p)); the runtime draws the noise (backends/base.py)."""

    module: str
    p: float
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """The map meta.dropout (and a checkpoint's spec) stores; dropout_from_list reads it back."""
        return {"module": self.module, "p": self.p, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of the two graphs, grouped by role (concatenated: positional order).

    train inputs: lr, x, targets, weights, [step], noise:<m>..., param:<n>..., <slot>:<n>... per optimizer
    slot, buffer:<b>...; train outputs: loss, new_param:..., new_<slot>:..., new_buffer:...;
    inference: x, param:..., buffer:... -> logits.
    """

    data: list[str]
    step: list[str]
    noise: list[str]
    params: list[str]
    slots: list[list[str]]
    buffers: list[str]
    new_params: list[str]
    new_slots: list[list[str]]
    new_buffers: list[str]

    @property
    def train_inputs(self) -> list[str]:
        return [*self.data, *self.step, *self.noise, *self.params, *sum(self.slots, []), *self.buffers]

    @property
    def train_outputs(self) -> list[str]:
        return ["loss", *self.new_params, *sum(self.new_slots, []), *self.new_buffers]

    @property
    def inference_inputs(self) -> list[str]:
        return ["x", *self.params, *self.buffers]

    @property
    def inference_outputs(self) -> list[str]:
        return ["logits"]


def graph_io(param_names: Sequence[str], buffer_names: Sequence[str] = (),
             optimizer: OptimizerConfig | None = None, dropout: Sequence[DropoutSpec] = ()) -> GraphIO:
    """The names the exporter gives the graphs' inputs and outputs; a reader requires exactly these."""
    optimizer = optimizer if optimizer is not None else SGDConfig()
    return GraphIO(
        data=["lr", "x", "targets", "weights"], step=["step"] if optimizer.takes_step else [],
        noise=[f"noise:{d.module}" for d in dropout], params=[f"param:{n}" for n in param_names],
        slots=[[f"{slot}:{n}" for n in param_names] for slot in optimizer.slots],
        buffers=[f"buffer:{b}" for b in buffer_names], new_params=[f"new_param:{n}" for n in param_names],
        new_slots=[[f"new_{slot}:{n}" for n in param_names] for slot in optimizer.slots],
        new_buffers=[f"new_buffer:{b}" for b in buffer_names])


# ------------------------------------------------------------------------ typed meta fields
# A bundle comes from a downloaded file: each reader checks one field's type and range and names it.


def _bad(name: str, want: str, got: Any) -> BundleError:
    shown = repr(got) if len(repr(got)) <= 60 else f"a {type(got).__name__}"
    return BundleError(f"trainer bundle: meta.{name} must be {want}, got {shown}")


def _int(v: Any, name: str, lo: int, hi: int = 1 << 63) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(name, f"an int in {lo}..{hi}", v)
    return v


def _finite(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, "a finite number", v)
    return float(v)


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise _bad(name, "a string", v)
    return v


def _str_list(v: Any, name: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad(name, "a list of strings", v)
    if len(set(v)) != len(v):
        raise BundleError(f"trainer bundle: meta.{name} repeats a name")
    return list(v)


def _shape(v: Any, name: str, lo: int = 0) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > MAX_NDIM:
        raise _bad(name, f"a list of at most {MAX_NDIM} sizes", v)
    return tuple(_int(s, name, lo, MAX_DIM) for s in v)


def _shapes(v: Any, name: str) -> list[tuple[int, ...]]:
    if not isinstance(v, list):
        raise _bad(name, "a list of shapes", v)
    return [_shape(x, f"{name}[{i}]") for i, x in enumerate(v)]


def _floats(v: Any, name: str) -> tuple[float, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise _bad(name, "a list of numbers or nil", v)
    return tuple(_finite(x, name) for x in v)


def _scalar_map(v: Any, name: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, _SCALARS) for k, x in v.items()):
        raise _bad(name, "a map of string keys to scalars", v)
    return dict(v)


def _optional(v: Any, read: Any, name: str, *args: Any) -> Any:
    return None if v is None else read(v, name, *args)


def _require(v: dict[str, Any], keys: tuple[str, ...], name: str) -> None:
    for key in keys:
        if key not in v:
            raise BundleError(f"trainer bundle: meta.{name} lacks key {key!r}")


def _fraction(v: Any, name: str) -> float:
    x = _finite(v, name)
    if not 0.0 <= x < 1.0:
        raise _bad(name, "a number in [0, 1)", v)
    return x


def optimizer_from_dict(v: Any) -> OptimizerConfig:
    """The optimizer map of meta (or of a checkpoint's spec), type- and range-checked."""
    if not isinstance(v, dict):
        raise _bad("optimizer", "a map", v)
    name = v.get("name", "sgd")
    if name == "sgd":
        _require(v, ("momentum", "weight_decay"), "optimizer")
        nesterov = v.get("nesterov", False)
        if not isinstance(nesterov, bool):
            raise _bad("optimizer.nesterov", "a bool", nesterov)
        return SGDConfig(momentum=_finite(v["momentum"], "optimizer.momentum"),
                         weight_decay=_finite(v["weight_decay"], "optimizer.weight_decay"), nesterov=nesterov)
    if name == "adamw":
        _require(v, ("weight_decay", "betas", "eps"), "optimizer")
        betas = v["betas"]
        if not isinstance(betas, list) or len(betas) != 2:
            raise _bad("optimizer.betas", "a list of 2 numbers", betas)
        eps = _finite(v["eps"], "optimizer.eps")
        if eps <= 0:
            raise _bad("optimizer.eps", "a positive number", eps)
        return AdamWConfig(weight_decay=_finite(v["weight_decay"], "optimizer.weight_decay"), eps=eps,
                           betas=(_fraction(betas[0], "optimizer.betas"), _fraction(betas[1], "optimizer.betas")))
    raise BundleError(f"trainer bundle: unsupported optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def loss_from_dict(name: Any, settings: Any) -> LossConfig:
    """meta.loss and meta.loss_settings as a LossConfig."""
    name = _str(name, "loss")
    if not isinstance(settings, dict):
        raise _bad("loss_settings", "a map", settings)
    temperature = _finite(settings.get("temperature", 1.0), "loss_settings.temperature")
    targets = _str(settings.get("targets", "probs"), "loss_settings.targets")
    try:
        return LossConfig(name=name, temperature=temperature, targets=targets)
    except BundleError as exc:
        raise BundleError(f"trainer bundle: meta.loss: {exc}") from None


def dropout_from_list(v: Any) -> list[DropoutSpec]:
    """meta.dropout as DropoutSpecs."""
    if not isinstance(v, list):
        raise _bad("dropout", "a list of maps", v)
    out = []
    for i, d in enumerate(v):
        where = f"dropout[{i}]"
        if not isinstance(d, dict):
            raise _bad(where, "a map", d)
        _require(d, ("module", "p", "shape"), where)
        p = _fraction(d["p"], f"{where}.p")
        out.append(DropoutSpec(module=_str(d["module"], f"{where}.module"), p=p,
                               shape=_shape(d["shape"], f"{where}.shape", lo=1)))
    if len({d.module for d in out}) != len(out):
        raise BundleError("trainer bundle: meta.dropout repeats a module")
    return out


_REQUIRED = ("arch", "in_shape", "num_classes", "batch_size", "param_names", "param_shapes", "optimizer",
             "train_inputs", "train_outputs", "inference_inputs", "inference_outputs")


@dataclass(frozen=True)
class TrainerMeta:
    """What a device needs to drive the graphs: shapes, parameter and state order, optimizer, loss, I/O names.

    Train-step inputs (names: `graph_io`): lr (float32 scalar), x [B,C,H,W] float32 normalized, targets
    [B,K] probabilities (int64 [B] class indices for loss targets "index"), weights [B] (0 = padding; loss
    = sum(w*l)/sum(w), so sum(w) must be > 0), step (AdamW only: float32, the 1-based count of this
    update), one noise input per dropout module, then every parameter, every optimizer slot (same order) and
    every state buffer (BatchNorm running statistics). Outputs: loss, new parameters, new slots, new
    buffers. Inference inputs: x [B,C,H,W], every parameter, every buffer; output: logits [B,K]. Both
    graphs have the fixed batch size `batch_size`. `arch` is a runtime/models.py name or, for a user's
    model, the factory "pkg.module:function" that builds it (called with `arch_kwargs`).
    """

    arch: str
    in_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    optimizer: OptimizerConfig
    train_inputs: list[str]
    train_outputs: list[str]
    inference_inputs: list[str]
    inference_outputs: list[str]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int | None = None
    dataset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    opset: int | None = None
    producer: dict[str, str] = field(default_factory=dict)
    buffer_names: list[str] = field(default_factory=list)
    buffer_shapes: list[tuple[int, ...]] = field(default_factory=list)
    dropout: list[DropoutSpec] = field(default_factory=list)

    @property
    def io(self) -> GraphIO:
        return graph_io(self.param_names, self.buffer_names, self.optimizer, self.dropout)

    def to_dict(self) -> dict[str, Any]:
        """The meta map; keys that hold their default (no buffers, no dropout, default loss settings) are
        left out, so a bundle without them has the bytes it had before they existed."""
        d: dict[str, Any] = {
            "arch": self.arch, "in_shape": list(self.in_shape), "num_classes": self.num_classes,
            "batch_size": self.batch_size, "param_names": list(self.param_names),
            "param_shapes": [list(s) for s in self.param_shapes], "optimizer": self.optimizer.to_dict(),
            "train_inputs": list(self.train_inputs), "train_outputs": list(self.train_outputs),
            "inference_inputs": list(self.inference_inputs), "inference_outputs": list(self.inference_outputs),
            "arch_kwargs": dict(self.arch_kwargs), "loss": self.loss.name, "seed": self.seed,
            "dataset": self.dataset, "mean": self.mean, "std": self.std, "opset": self.opset,
            "producer": dict(self.producer)}
        if self.loss.settings():
            d["loss_settings"] = self.loss.settings()
        if self.buffer_names:
            d["buffer_names"] = list(self.buffer_names)
            d["buffer_shapes"] = [list(s) for s in self.buffer_shapes]
        if self.dropout:
            d["dropout"] = [x.to_dict() for x in self.dropout]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> TrainerMeta:
        """Type- and range-check every field (unknown keys are ignored: forward compatible)."""
        if not isinstance(d, dict):
            raise BundleError("trainer bundle: 'meta' is not a map")
        for key in _REQUIRED:
            if key not in d:
                raise BundleError(f"trainer bundle: meta lacks key {key!r}")
        in_shape = _shape(d["in_shape"], "in_shape", lo=1)
        meta = cls(
            arch=_str(d["arch"], "arch"), in_shape=in_shape,  # type: ignore[arg-type]
            num_classes=_int(d["num_classes"], "num_classes", 1, MAX_DIM),
            batch_size=_int(d["batch_size"], "batch_size", 1, MAX_DIM),
            param_names=_str_list(d["param_names"], "param_names"),
            param_shapes=_shapes(d["param_shapes"], "param_shapes"),
            optimizer=optimizer_from_dict(d["optimizer"]),
            **{key: _str_list(d[key], key) for key in _REQUIRED[7:]},
            arch_kwargs=_scalar_map(d.get("arch_kwargs", {}), "arch_kwargs"),
            loss=loss_from_dict(d.get("loss", "soft_cross_entropy"), d.get("loss_settings", {})),
            seed=_optional(d.get("seed"), _int, "seed", -(1 << 63)),
            dataset=_optional(d.get("dataset"), _str, "dataset"),
            mean=_floats(d.get("mean"), "mean"), std=_floats(d.get("std"), "std"),
            opset=_optional(d.get("opset"), _int, "opset", 1, 1 << 16),
            producer=_scalar_map(d.get("producer", {}), "producer"),
            buffer_names=_str_list(d.get("buffer_names", []), "buffer_names"),
            buffer_shapes=_shapes(d.get("buffer_shapes", []), "buffer_shapes"),
            dropout=dropout_from_list(d.get("dropout", [])))
        meta.validate()
        return meta

    def validate(self) -> None:
        """Cross-field rules: shapes and graph input/output names must fit the parameters and buffers."""
        n = len(self.param_names)
        if len(self.in_shape) != 3 or self.num_classes < 1 or self.batch_size < 1:
            raise BundleError(f"trainer bundle: bad in_shape/num_classes/batch_size "
                              f"{self.in_shape}/{self.num_classes}/{self.batch_size}")
        if len(self.param_shapes) != n:
            raise BundleError(f"trainer bundle: {n} param_names but {len(self.param_shapes)} param_shapes")
        if len(self.buffer_shapes) != len(self.buffer_names):
            raise BundleError(f"trainer bundle: {len(self.buffer_names)} buffer_names but "
                              f"{len(self.buffer_shapes)} buffer_shapes")
        for name, shape in zip(self.param_names, self.param_shapes, strict=True):
            if any(s < 0 for s in shape):
                raise BundleError(f"trainer bundle: parameter {name!r} has a negative size in {shape}")
        io = self.io
        if self.train_inputs != io.train_inputs or self.train_outputs != io.train_outputs:
            raise BundleError(f"trainer bundle: train-step names do not fit {n} parameters, "
                              f"{len(self.buffer_names)} buffers, {len(self.dropout)} dropout inputs and "
                              f"optimizer {self.optimizer.name!r}")
        if self.inference_inputs != io.inference_inputs or self.inference_outputs != io.inference_outputs:
            raise BundleError(f"trainer bundle: inference names do not fit {n} parameters and "
                              f"{len(self.buffer_names)} buffers")


MAX_GENERATED_ELEMENTS = 64 << 20  # parameter elements that rules may build: bounds memory before allocating
_RULES = ("fill", "uniform")


def uniform_params(seed: int, shapes: list[tuple[int, ...]], bounds: list[float]) -> list[np.ndarray]:
    """U(-b, b) float32 arrays, one per (shape, bound), drawn in order from one portable stream.

    The stream is PCG64 seeded with `seed` (mod 2**64) through numpy's SeedSequence, read as raw 64-bit
    words (each word's top 53 bits give u in [0, 1), the value is b * (2u - 1)): numpy keeps bit
    generator streams stable across versions and machines, unlike its distribution methods.
    """
    bits = np.random.PCG64(int(seed) % (1 << 64))
    out = []
    for shape, bound in zip(shapes, bounds, strict=True):
        words = bits.random_raw(math.prod(shape))
        u = (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        out.append((bound * (2.0 * u - 1.0)).astype(np.float32).reshape(shape))
    return out


def _short_repr(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _read_rule(name: str, rule: dict[Any, Any], what: str = "parameter",
               kinds: tuple[str, ...] = _RULES) -> tuple[str, float]:
    """A rule {"fill": v} or {"uniform": b}, b > 0, both finite; buffers take fill rules only."""
    if len(rule) != 1 or next(iter(rule)) not in kinds:
        known = ", ".join({"fill": "{'fill': v}", "uniform": "{'uniform': b}"}[k] for k in kinds)
        raise BundleError(f"trainer bundle: {what} {name!r} has rule {_short_repr(rule)}; known rules: {known}")
    kind, value = next(iter(rule.items()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            kind == "uniform" and value <= 0):
        want = "a positive finite bound" if kind == "uniform" else "a finite value"
        raise BundleError(f"trainer bundle: {what} {name!r}: {kind} must be {want}, got {_short_repr(value)}")
    return kind, float(value)


Rule = dict[str, float] | None


def _read_rules(names: Sequence[str], shapes: Sequence[tuple[int, ...]], raw: list[Any], what: str,
                kinds: tuple[str, ...]) -> list[Rule]:
    """Each entry's rule (None = raw bytes), with the elements the rules build capped before allocating."""
    rules: list[Rule] = []
    built = 0
    for name, shape, data in zip(names, shapes, raw, strict=True):
        if not isinstance(data, dict):  # raw bytes; _read_param names anything else
            rules.append(None)
            continue
        kind, value = _read_rule(name, data, what, kinds)
        rules.append({kind: value})
        built += math.prod(shape)
        if built > MAX_GENERATED_ELEMENTS:
            raise BundleError(f"trainer bundle: {what} rules build more than {MAX_GENERATED_ELEMENTS} elements")
    return rules


def build_params(meta: TrainerMeta, raw: list[Any]) -> tuple[list[np.ndarray], list[Rule]]:
    """The parameter arrays of a bundle from its entries (raw bytes, or rules that build them) and the rules
    (None = raw): the one place where rules become arrays, for readers and the exporter alike."""
    rules = _read_rules(meta.param_names, meta.param_shapes, raw, "parameter", _RULES)
    drawn = [i for i, r in enumerate(rules) if r is not None and "uniform" in r]
    if drawn and meta.seed is None:
        raise BundleError("trainer bundle: a parameter is drawn by a 'uniform' rule, but meta.seed is nil")
    draws = iter(uniform_params(meta.seed or 0, [meta.param_shapes[i] for i in drawn],
                                [rules[i]["uniform"] for i in drawn]))
    params = []
    for name, shape, data, rule in zip(meta.param_names, meta.param_shapes, raw, rules, strict=True):
        if rule is None:
            params.append(_read_param(name, shape, data))
        elif "fill" in rule:
            params.append(np.full(shape, rule["fill"], dtype=np.float32))
        else:
            params.append(next(draws))
    return params, rules


def build_buffers(meta: TrainerMeta, raw: list[Any]) -> tuple[list[np.ndarray], list[Rule]]:
    """The state buffers (BatchNorm running mean / variance) from raw bytes or fill rules."""
    rules = _read_rules(meta.buffer_names, meta.buffer_shapes, raw, "buffer", ("fill",))
    arrays = [_read_param(name, shape, data, "buffer") if rule is None else
              np.full(shape, rule["fill"], dtype=np.float32)
              for name, shape, data, rule in zip(meta.buffer_names, meta.buffer_shapes, raw, rules, strict=True)]
    return arrays, rules


def _param_nbytes(shape: tuple[int, ...]) -> int:
    """Exact byte size in Python integers (np.prod would wrap around on a crafted shape)."""
    return math.prod(shape) * _DTYPE.itemsize


def _read_param(name: str, shape: tuple[int, ...], data: Any, what: str = "parameter") -> np.ndarray:
    expect = _param_nbytes(shape)
    if not isinstance(data, bytes) or len(data) != expect:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise BundleError(f"trainer bundle: {what} {name!r} has {got} bytes, shape {shape} needs {expect}")
    array = np.frombuffer(data, dtype=_DTYPE).reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise BundleError(f"trainer bundle: {what} {name!r} holds NaN or inf")
    return array


def _entries(names: Sequence[str], shapes: Sequence[tuple[int, ...]], arrays: Sequence[np.ndarray],
             rules: Sequence[Rule] | None, what: str) -> list[Any]:
    """The blob entries of one kind: raw float32 bytes, or the rule that builds the array."""
    rules = rules or [None] * len(arrays)
    if not len(arrays) == len(rules) == len(names):
        raise BundleError(f"trainer bundle: {len(arrays)} arrays and {len(rules)} rules for {len(names)} {what}s")
    out: list[Any] = []
    for name, shape, a, rule in zip(names, shapes, arrays, rules, strict=True):
        if tuple(a.shape) != tuple(shape):
            raise BundleError(f"trainer bundle: {what} {name!r} has shape {a.shape}, meta says {shape}")
        out.append(np.ascontiguousarray(a, dtype=_DTYPE).tobytes() if rule is None else dict(rule))
    return out


def _some(rules: list[Rule]) -> list[Rule] | None:
    return rules if any(r is not None for r in rules) else None


@dataclass
class TrainerBundle:
    """Everything a device needs to train and evaluate one network with onnxruntime alone.

    Both graphs are checked on construction (runtime/onnx_check.py), so no bundle that exists can hand
    onnxruntime an op, external file reference or subgraph that the exporter does not write.
    """

    meta: TrainerMeta
    train_step: bytes
    inference: bytes
    params: list[np.ndarray]
    # per parameter, the rule that builds it at load time ({"fill": v} / {"uniform": b}), None = stored raw;
    # `params` always holds the arrays (built by the rules: runtime.bundle.uniform_params)
    param_rules: list[Rule] | None = None
    # initial state buffers (meta.buffer_names order; BatchNorm running statistics) and their fill rules
    buffers: list[np.ndarray] = field(default_factory=list)
    buffer_rules: list[Rule] | None = None

    def __post_init__(self) -> None:
        check_model(self.train_step, "train-step")
        check_model(self.inference, "inference")

    def initial_params(self) -> list[np.ndarray]:
        """Fresh float32 copies of the initial parameters (a run mutates its own state)."""
        return [np.array(p, dtype=np.float32, copy=True) for p in self.params]

    def initial_buffers(self) -> list[np.ndarray]:
        """Fresh copies of the initial state buffers."""
        return [np.array(b, dtype=np.float32, copy=True) for b in self.buffers]

    def initial_momenta(self) -> list[np.ndarray]:
        """Zero momentum buffers; with zeros the first update equals PyTorch's buf = grad."""
        return [np.zeros(s, dtype=np.float32) for s in self.meta.param_shapes]

    def initial_slots(self) -> list[list[np.ndarray]]:
        """Zero optimizer state, one list per slot of `meta.optimizer.slots` (torch starts from zeros too)."""
        return [self.initial_momenta() for _ in self.meta.optimizer.slots]

    def to_bytes(self) -> bytes:
        m = self.meta
        doc: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "meta": m.to_dict(), "train_step": bytes(self.train_step),
            "inference": bytes(self.inference),
            "params": _entries(m.param_names, m.param_shapes, self.params, self.param_rules, "parameter")}
        if m.buffer_names:  # absent without buffers: a plain bundle keeps its bytes
            doc["buffers"] = _entries(m.buffer_names, m.buffer_shapes, self.buffers, self.buffer_rules, "buffer")
        return msgpack.packb(doc, use_bin_type=True)

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> TrainerBundle:
        """Parse an untrusted blob; every malformed field is a BundleError that names it."""
        d = _unpack(blob)
        meta = TrainerMeta.from_dict(d.get("meta"))
        for key in ("train_step", "inference"):
            if not isinstance(d.get(key), bytes) or not d[key]:
                raise BundleError(f"trainer bundle: {key!r} graph is missing or not bytes")
        raw = d.get("params")
        if not isinstance(raw, list) or len(raw) != len(meta.param_names):
            raise BundleError(f"trainer bundle: 'params' must list {len(meta.param_names)} arrays")
        raw_buffers = d.get("buffers", [])
        if not isinstance(raw_buffers, list) or len(raw_buffers) != len(meta.buffer_names):
            raise BundleError(f"trainer bundle: 'buffers' must list {len(meta.buffer_names)} arrays")
        params, rules = build_params(meta, raw)
        buffers, buffer_rules = build_buffers(meta, raw_buffers)
        return cls(meta=meta, train_step=d["train_step"], inference=d["inference"], params=params,
                   param_rules=_some(rules), buffers=buffers, buffer_rules=_some(buffer_rules))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with the project's one helper (formats/atomic.py: mkstemp, fsync, rename)."""
        blob = self.to_bytes()
        atomic_write(path, lambda f: f.write(blob))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainerBundle:
        """Read a bundle file; only a regular file is opened (a FIFO or device would block or never end)."""
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise BundleError(f"trainer bundle: {path} is not a regular file")
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise BundleError(f"trainer bundle: cannot read {path}: {exc}") from None
        try:
            return cls.from_bytes(blob)
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None


def _unpack(blob: Any) -> dict[str, Any]:
    """The outer map of a bundle blob, with its format and version checked."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise BundleError(f"trainer bundle: expected bytes, got {type(blob).__name__}")
    try:
        d = msgpack.unpackb(bytes(blob), raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage or truncation
        raise BundleError(f"trainer bundle: not a valid msgpack blob ({type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise BundleError(f"trainer bundle: not a {FORMAT!r} blob")
    version = d.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise BundleError(f"trainer bundle: unsupported version {version!r} (this reader: {VERSION})")
    return d


__all__ = ["FORMAT", "LOSSES", "MAX_GENERATED_ELEMENTS", "OPTIMIZERS", "VERSION", "AdamWConfig", "BundleError",
           "DropoutSpec", "GraphIO", "LossConfig", "OptimizerConfig", "SGDConfig", "TrainerBundle", "TrainerMeta",
           "build_buffers", "build_params", "dropout_from_list", "graph_io", "loss_from_dict", "optimizer_from_dict",
           "uniform_params"]
