"""The trainer bundle: train-step and inference ONNX graphs, initial parameters and metadata.

One self-describing bytes blob, so it can be a standalone file or embedded (opaque) in an .mdc.
Only numpy and msgpack are needed to read it: a device never imports torch for this.

Layout (msgpack map, all arrays little-endian float32 in C order):
    {"format": "multisize-trainer", "version": 1,
     "meta": TrainerMeta as a map (optimizer nested as a map),
     "train_step": <ONNX model bytes>, "inference": <ONNX model bytes>,
     "params": [<raw bytes of parameter i>, ...]   # order and shapes = meta.param_names/param_shapes
    }
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from runtime.errors import TrainerError

FORMAT = "multisize-trainer"
VERSION = 1
_DTYPE = np.dtype("<f4")


class BundleError(TrainerError, ValueError):
    """A trainer bundle blob is malformed, truncated, of another format or an unknown version."""


@dataclass(frozen=True)
class SGDConfig:
    """PyTorch SGD semantics (no dampening, no nesterov), baked into the train-step graph:
    buf = momentum * buf + (grad + weight_decay * p);  p = p - lr * buf;  buffers start at zero."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    name: str = "sgd"


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
        if not isinstance(d, dict):
            raise BundleError("trainer bundle: 'meta' is not a map")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}  # unknown keys: forward compatible
        try:
            opt = kw["optimizer"]
            if not isinstance(opt, dict):
                raise BundleError("trainer bundle: meta.optimizer is not a map")
            if opt.get("name", "sgd") != "sgd":
                raise BundleError(f"trainer bundle: unsupported optimizer {opt.get('name')!r}")
            kw["optimizer"] = SGDConfig(momentum=float(opt["momentum"]),
                                        weight_decay=float(opt["weight_decay"]))
            kw["in_shape"] = tuple(int(s) for s in kw["in_shape"])
            kw["param_shapes"] = [tuple(int(s) for s in shape) for shape in kw["param_shapes"]]
            for key in ("mean", "std"):
                if kw.get(key) is not None:
                    kw[key] = tuple(float(v) for v in kw[key])
            meta = cls(**kw)
        except KeyError as exc:
            raise BundleError(f"trainer bundle: meta lacks key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"trainer bundle: malformed meta: {exc}") from None
        meta.validate()
        return meta

    def validate(self) -> None:
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


@dataclass
class TrainerBundle:
    """Everything a device needs to train and evaluate one architecture with onnxruntime alone."""

    meta: TrainerMeta
    train_step: bytes
    inference: bytes
    params: list[np.ndarray]

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
        arrays = []
        for name, shape, p in zip(self.meta.param_names, self.meta.param_shapes, self.params, strict=True):
            if tuple(p.shape) != tuple(shape):
                raise BundleError(
                    f"trainer bundle: parameter {name!r} has shape {p.shape}, meta says {shape}")
            arrays.append(np.ascontiguousarray(p, dtype=_DTYPE).tobytes())
        return msgpack.packb({"format": FORMAT, "version": VERSION, "meta": self.meta.to_dict(),
                              "train_step": bytes(self.train_step), "inference": bytes(self.inference),
                              "params": arrays}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> TrainerBundle:
        try:
            d = msgpack.unpackb(bytes(blob), raw=False, use_list=True)
        except Exception as exc:  # msgpack raises several unrelated types on garbage or truncation
            raise BundleError(
                f"trainer bundle: not a valid msgpack blob ({type(exc).__name__}: {exc})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"trainer bundle: not a {FORMAT!r} blob")
        version = d.get("version")
        if not isinstance(version, int) or version > VERSION or version < 1:
            raise BundleError(f"trainer bundle: unsupported version {version!r} (this reader: {VERSION})")
        meta = TrainerMeta.from_dict(d.get("meta"))
        for key in ("train_step", "inference"):
            if not isinstance(d.get(key), bytes) or not d[key]:
                raise BundleError(f"trainer bundle: {key!r} graph is missing or not bytes")
        raw = d.get("params")
        if not isinstance(raw, list) or len(raw) != len(meta.param_names):
            raise BundleError(f"trainer bundle: 'params' must list {len(meta.param_names)} arrays")
        params = []
        for name, shape, data in zip(meta.param_names, meta.param_shapes, raw, strict=True):
            expect = int(np.prod(shape, dtype=np.int64)) * _DTYPE.itemsize
            if not isinstance(data, bytes) or len(data) != expect:
                got = len(data) if isinstance(data, bytes) else type(data).__name__
                raise BundleError(f"trainer bundle: parameter {name!r} has {got} bytes, shape {shape} "
                                  f"needs {expect}")
            params.append(np.frombuffer(data, dtype=_DTYPE).reshape(shape).astype(np.float32))
        return cls(meta=meta, train_step=d["train_step"], inference=d["inference"], params=params)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file in the same directory, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(self.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainerBundle:
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise BundleError(f"trainer bundle: cannot read {path}: {exc}") from None
        try:
            return cls.from_bytes(blob)
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None


__all__ = ["FORMAT", "VERSION", "BundleError", "SGDConfig", "TrainerBundle", "TrainerMeta"]
