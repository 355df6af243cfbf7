"""The trainer bundle: train-step and inference ONNX graphs, initial parameters and metadata.

One self-describing bytes blob, so it can be a standalone file or embedded (opaque) in an .mdc.
Only numpy and msgpack are needed to read it: a device never imports torch for this.

Layout (msgpack map, all arrays little-endian float32 in C order):
    {"format": "multisize-trainer", "version": 1,
     "meta": TrainerMeta as a map (optimizer nested as a map),
     "train_step": <ONNX model bytes>, "inference": <ONNX model bytes>,
     "params": [<parameter i>, ...]   # order and shapes = meta.param_names/param_shapes
    }
Parameter i is its raw bytes, or a rule that builds it at load time (docs/trainer.md, "Initial
parameters"): {"fill": v} (every element v) or {"uniform": b} (U(-b, b) drawn from meta.seed), so a
freshly initialised network costs a few bytes per tensor instead of 4 per element.
A bundle read from a file is untrusted: every meta field is type- and range-checked and both graphs
pass runtime/onnx_check.py before anything runs them (docs/trainer.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """PyTorch SGD semantics (no dampening, no nesterov), baked into the train-step graph:
    buf = momentum * buf + (grad + weight_decay * p);  p = p - lr * buf;  buffers start at zero."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    name: str = "sgd"


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


def _optimizer(v: Any) -> SGDConfig:
    if not isinstance(v, dict):
        raise _bad("optimizer", "a map", v)
    if v.get("name", "sgd") != "sgd":
        raise BundleError(f"trainer bundle: unsupported optimizer {v.get('name')!r}")
    for key in ("momentum", "weight_decay"):
        if key not in v:
            raise BundleError(f"trainer bundle: meta.optimizer lacks key {key!r}")
    return SGDConfig(momentum=_finite(v["momentum"], "optimizer.momentum"),
                     weight_decay=_finite(v["weight_decay"], "optimizer.weight_decay"))


_REQUIRED = ("arch", "in_shape", "num_classes", "batch_size", "param_names", "param_shapes", "optimizer",
             "train_inputs", "train_outputs", "inference_inputs", "inference_outputs")


@dataclass(frozen=True)
class TrainerMeta:
    """What a device needs to drive the graphs: shapes, parameter order, optimizer, I/O names.

    Train-step inputs: lr (float32 scalar), x [B,C,H,W] float32 normalized, targets [B,K]
    probabilities, weights [B] (0 = padding; loss = sum(w*ce)/sum(w), so sum(w) must be > 0),
    then every parameter, then every momentum buffer (same order). Outputs: loss, new
    parameters, new momentum buffers. Inference inputs: x [B,C,H,W], then every parameter;
    output: logits [B,K]. Both graphs have the fixed batch size `batch_size`.
    """

    arch: str
    in_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    optimizer: SGDConfig
    train_inputs: list[str]
    train_outputs: list[str]
    inference_inputs: list[str]
    inference_outputs: list[str]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "soft_cross_entropy"
    seed: int | None = None
    dataset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    opset: int | None = None
    producer: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["in_shape"] = list(self.in_shape)
        d["param_shapes"] = [list(s) for s in self.param_shapes]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> TrainerMeta:
        """Type- and range-check every field (unknown keys are ignored: forward compatible)."""
        if not isinstance(d, dict):
            raise BundleError("trainer bundle: 'meta' is not a map")
        for key in _REQUIRED:
            if key not in d:
                raise BundleError(f"trainer bundle: meta lacks key {key!r}")
        shapes = d["param_shapes"]
        if not isinstance(shapes, list):
            raise _bad("param_shapes", "a list of shapes", shapes)
        in_shape = _shape(d["in_shape"], "in_shape", lo=1)
        meta = cls(
            arch=_str(d["arch"], "arch"), in_shape=in_shape,  # type: ignore[arg-type]
            num_classes=_int(d["num_classes"], "num_classes", 1, MAX_DIM),
            batch_size=_int(d["batch_size"], "batch_size", 1, MAX_DIM),
            param_names=_str_list(d["param_names"], "param_names"),
            param_shapes=[_shape(s, f"param_shapes[{i}]") for i, s in enumerate(shapes)],
            optimizer=_optimizer(d["optimizer"]),
            **{key: _str_list(d[key], key) for key in _REQUIRED[7:]},
            arch_kwargs=_scalar_map(d.get("arch_kwargs", {}), "arch_kwargs"),
            loss=_str(d.get("loss", "soft_cross_entropy"), "loss"),
            seed=_optional(d.get("seed"), _int, "seed", -(1 << 63)),
            dataset=_optional(d.get("dataset"), _str, "dataset"),
            mean=_floats(d.get("mean"), "mean"), std=_floats(d.get("std"), "std"),
            opset=_optional(d.get("opset"), _int, "opset", 1, 1 << 16),
            producer=_scalar_map(d.get("producer", {}), "producer"))
        meta.validate()
        return meta

    def validate(self) -> None:
        """Cross-field rules: shapes and graph input/output names must fit the parameter list."""
        n = len(self.param_names)
        if len(self.in_shape) != 3 or self.num_classes < 1 or self.batch_size < 1:
            raise BundleError(f"trainer bundle: bad in_shape/num_classes/batch_size "
                              f"{self.in_shape}/{self.num_classes}/{self.batch_size}")
        if len(self.param_shapes) != n:
            raise BundleError(f"trainer bundle: {n} param_names but {len(self.param_shapes)} param_shapes")
        for name, shape in zip(self.param_names, self.param_shapes, strict=True):
            if any(s < 0 for s in shape):
                raise BundleError(f"trainer bundle: parameter {name!r} has a negative size in {shape}")
        if len(self.train_inputs) != 4 + 2 * n or len(self.train_outputs) != 1 + 2 * n:
            raise BundleError(f"trainer bundle: train-step names do not fit {n} parameters")
        if len(self.inference_inputs) != 1 + n or len(self.inference_outputs) != 1:
            raise BundleError(f"trainer bundle: inference names do not fit {n} parameters")


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


def _read_rule(name: str, rule: dict[Any, Any]) -> tuple[str, float]:
    """A parameter rule {"fill": v} or {"uniform": b}, b > 0, both finite."""
    if len(rule) != 1 or next(iter(rule)) not in _RULES:
        raise BundleError(f"trainer bundle: parameter {name!r} has rule {_short_repr(rule)}; known rules: "
                          "{'fill': v}, {'uniform': b}")
    kind, value = next(iter(rule.items()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            kind == "uniform" and value <= 0):
        want = "a positive finite bound" if kind == "uniform" else "a finite value"
        raise BundleError(f"trainer bundle: parameter {name!r}: {kind} must be {want}, got {_short_repr(value)}")
    return kind, float(value)


def build_params(meta: TrainerMeta, raw: list[Any]) -> tuple[list[np.ndarray], list[dict[str, float] | None]]:
    """The parameter arrays of a bundle from its entries (raw bytes, or rules that build them) and the rules
    (None = raw): the one place where rules become arrays, for readers and the exporter alike."""
    rules: list[dict[str, float] | None] = []
    built = 0
    for name, shape, data in zip(meta.param_names, meta.param_shapes, raw, strict=True):
        if not isinstance(data, dict):  # raw bytes; _read_param names anything else
            rules.append(None)
            continue
        kind, value = _read_rule(name, data)
        rules.append({kind: value})
        built += math.prod(shape)
        if built > MAX_GENERATED_ELEMENTS:
            raise BundleError(f"trainer bundle: parameter rules build more than {MAX_GENERATED_ELEMENTS} elements")
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


def _param_nbytes(shape: tuple[int, ...]) -> int:
    """Exact byte size in Python integers (np.prod would wrap around on a crafted shape)."""
    return math.prod(shape) * _DTYPE.itemsize


def _read_param(name: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    expect = _param_nbytes(shape)
    if not isinstance(data, bytes) or len(data) != expect:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise BundleError(f"trainer bundle: parameter {name!r} has {got} bytes, shape {shape} needs {expect}")
    array = np.frombuffer(data, dtype=_DTYPE).reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise BundleError(f"trainer bundle: parameter {name!r} holds NaN or inf")
    return array


@dataclass
class TrainerBundle:
    """Everything a device needs to train and evaluate one architecture with onnxruntime alone.

    Both graphs are checked on construction (runtime/onnx_check.py), so no bundle that exists can hand
    onnxruntime an op, external file reference or subgraph that the exporter does not write.
    """

    meta: TrainerMeta
    train_step: bytes
    inference: bytes
    params: list[np.ndarray]
    # per parameter, the rule that builds it at load time ({"fill": v} / {"uniform": b}), None = stored raw;
    # `params` always holds the arrays (built by the rules: runtime.bundle.uniform_params)
    param_rules: list[dict[str, float] | None] | None = None

    def __post_init__(self) -> None:
        check_model(self.train_step, "train-step")
        check_model(self.inference, "inference")

    def initial_params(self) -> list[np.ndarray]:
        """Fresh float32 copies of the initial parameters (a run mutates its own state)."""
        return [np.array(p, dtype=np.float32, copy=True) for p in self.params]

    def initial_momenta(self) -> list[np.ndarray]:
        """Zero momentum buffers; with zeros the first update equals PyTorch's buf = grad."""
        return [np.zeros(s, dtype=np.float32) for s in self.meta.param_shapes]

    def to_bytes(self) -> bytes:
        if len(self.params) != len(self.meta.param_names):
            raise BundleError(f"trainer bundle: {len(self.params)} arrays for "
                              f"{len(self.meta.param_names)} parameter names")
        rules = self.param_rules or [None] * len(self.params)
        if len(rules) != len(self.params):
            raise BundleError(f"trainer bundle: {len(rules)} parameter rules for {len(self.params)} parameters")
        arrays: list[Any] = []
        for name, shape, p, rule in zip(self.meta.param_names, self.meta.param_shapes, self.params, rules,
                                        strict=True):
            if tuple(p.shape) != tuple(shape):
                raise BundleError(
                    f"trainer bundle: parameter {name!r} has shape {p.shape}, meta says {shape}")
            arrays.append(np.ascontiguousarray(p, dtype=_DTYPE).tobytes() if rule is None else dict(rule))
        return msgpack.packb({"format": FORMAT, "version": VERSION, "meta": self.meta.to_dict(),
                              "train_step": bytes(self.train_step), "inference": bytes(self.inference),
                              "params": arrays}, use_bin_type=True)

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
        params, rules = build_params(meta, raw)
        return cls(meta=meta, train_step=d["train_step"], inference=d["inference"], params=params,
                   param_rules=rules if any(r is not None for r in rules) else None)

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


__all__ = ["FORMAT", "MAX_GENERATED_ELEMENTS", "VERSION", "BundleError", "SGDConfig", "TrainerBundle", "TrainerMeta",
           "build_params", "uniform_params"]
