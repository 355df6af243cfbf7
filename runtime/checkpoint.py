"""Model checkpoints: a trained or half-trained runtime.Model as one msgpack file (docs/trainer.md).

A checkpoint holds what continuing a run bit-identically needs: parameters, optimizer state (SGD momentum,
AdamW's two moments) and state buffers (BatchNorm running statistics), as raw little-endian float32,
never pickle; the training settings, the network spec, the trainer bundle
the run used (so an onnx model loads without its .mdc file), and the loop position: global step, epoch,
batches done in that epoch, the epoch's record order and the numpy PCG64 state of the loop's one
generator (shuffling and view draws). Files are written with formats/atomic.py, so a run killed while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from formats.atomic import atomic_write_bytes
from runtime.backends.base import ModelSpec
from runtime.bundle import (
    DropoutSpec,
    LossConfig,
    OptimizerConfig,
    SGDConfig,
    dropout_from_list,
    loss_from_dict,
    optimizer_from_dict,
)
from runtime.config import TrainConfig
from runtime.errors import BundleError, CheckpointError, ConfigError

FORMAT = "multisize-model"
VERSION = 2  # 2: optimizer_state by slot and state buffers; version 1 files (SGD "momenta") still load
_F32 = np.dtype("<f4")
_I64 = np.dtype("<i8")
MAX_CHECKPOINT_BYTES = 1 << 32  # far above any device model; a larger file is refused before reading


@dataclass
class LoopState:
    """Where the training loop stands: enough to continue it bit-identically.

    `epoch` is the epoch in progress (== epochs when the run is complete), `batch` the batches of it
    already done, `order` that epoch's record permutation (None when `batch` is 0: the next epoch's
    is drawn from `rng`), `rng` numpy's PCG64 state after the last step, `epoch_loss` the sum of this
    epoch's step losses so far, `data` the fingerprint of the dataset (see `data_fingerprint`).
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    order: np.ndarray | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    epoch_loss: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, seed: int, data: dict[str, Any]) -> LoopState:
        """Step 0 of a run: the loop's generator is numpy's default_rng(seed)."""
        return cls(rng=np.random.default_rng(seed).bit_generator.state, data=data)

    def generator(self) -> np.random.Generator:
        """A generator in exactly the saved state."""
        g = np.random.Generator(np.random.PCG64())
        g.bit_generator.state = self.rng
        return g


@dataclass
class ModelState:
    """Everything a checkpoint file holds; runtime.train.Model converts to and from it."""

    backend: str
    spec: ModelSpec
    config: TrainConfig
    params: list[np.ndarray]
    slots: list[list[np.ndarray]]  # optimizer state, one list per slot of spec.optimizer.slots
    loop: LoopState
    buffers: list[np.ndarray] = field(default_factory=list)  # spec.buffer_names order
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    ipc: int | None = None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    bundle: bytes | None = None  # serialized runtime.bundle.TrainerBundle, when the run had one


# ---------------------------------------------------------------------------- data fingerprint


def data_fingerprint(ds: Any) -> dict[str, Any]:
    """What a resumed run must train on again: sizes, and CRC-32s of the pixels, labels and views."""
    crc = zlib.crc32(np.ascontiguousarray(ds.images, dtype=np.float32))  # buffers: no copy of the pixels
    crc = zlib.crc32(np.ascontiguousarray(ds.labels, dtype=np.int64), crc)
    if ds.views is not None:
        for name in ("crop", "flip", "mix_partner", "mix_box"):
            crc = zlib.crc32(np.ascontiguousarray(getattr(ds.views, name)), crc)
    return {"records": len(ds), "ipc": ds.ipc, "num_classes": ds.num_classes, "image_shape": list(ds.image_shape),
            "views": ds.num_views, "crc32": crc}


# ----------------------------------------------------------------------------------- writing


def _arrays(arrays: list[np.ndarray]) -> list[bytes]:
    return [np.ascontiguousarray(a, dtype=_F32).tobytes() for a in arrays]


def _rng_out(state: dict[str, Any]) -> dict[str, Any]:
    """PCG64's 128-bit state and increment do not fit msgpack integers: write them as decimal strings."""
    inner = state["state"]
    return {"bit_generator": state["bit_generator"], "state": str(inner["state"]), "inc": str(inner["inc"]),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    return {"arch": spec.arch, "in_shape": list(spec.in_shape), "num_classes": spec.num_classes,
            "arch_kwargs": dict(spec.arch_kwargs), "optimizer": spec.optimizer.to_dict(),
            "loss": {"name": spec.loss.name, **spec.loss.settings()}, "batch_size": spec.batch_size,
            "param_names": list(spec.param_names), "buffer_names": list(spec.buffer_names),
            "dropout": None if spec.dropout is None else [d.to_dict() for d in spec.dropout]}


def to_bytes(s: ModelState) -> bytes:
    loop = s.loop
    doc = {
        "format": FORMAT, "version": VERSION, "backend": s.backend, "spec": spec_to_dict(s.spec),
        "config": asdict(s.config), "shapes": [list(p.shape) for p in s.params], "params": _arrays(s.params),
        "optimizer_state": {name: _arrays(a) for name, a in zip(s.spec.optimizer.slots, s.slots, strict=True)},
        "buffer_shapes": [list(b.shape) for b in s.buffers], "buffers": _arrays(s.buffers),
        "mean": None if s.mean is None else list(s.mean), "std": None if s.std is None else list(s.std),
        "ipc": s.ipc, "losses": [float(v) for v in s.losses], "seconds": float(s.seconds),
        "loop": {"step": loop.step, "epoch": loop.epoch, "batch": loop.batch, "epoch_loss": float(loop.epoch_loss),
                 "order": None if loop.order is None else np.ascontiguousarray(loop.order, _I64).tobytes(),
                 "rng": _rng_out(loop.rng), "data": loop.data},
        "bundle": s.bundle,
    }
    return msgpack.packb(doc, use_bin_type=True)


def save(s: ModelState, path: str | os.PathLike[str]) -> None:
    """Write atomically: a reader (or a run killed meanwhile) sees the old checkpoint or the new one."""
    atomic_write_bytes(path, to_bytes(s))


# ----------------------------------------------------------------------------------- reading


def _bad(field_name: str, want: str) -> CheckpointError:
    return CheckpointError(f"checkpoint: {field_name} must be {want}")


def _get(d: dict[str, Any], key: str, kinds: tuple[type, ...], want: str, where: str = "") -> Any:
    v = d.get(key)
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise _bad(where + key, want)
    return v


def _int(d: dict[str, Any], key: str, where: str = "", lo: int = 0) -> int:
    v = _get(d, key, (int,), f"an integer >= {lo}", where)
    if v < lo:
        raise _bad(where + key, f"an integer >= {lo}")
    return v


def _float(d: dict[str, Any], key: str, where: str = "") -> float:
    v = _get(d, key, (int, float), "a finite number", where)
    if not math.isfinite(v):
        raise _bad(where + key, "a finite number")
    return float(v)


def _floats(v: Any, name: str) -> tuple[float, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise _bad(name, "a list of numbers or nil")
    return tuple(float(x) for x in v)


def _read_arrays(raw: Any, shapes: list[tuple[int, ...]], name: str) -> list[np.ndarray]:
    if not isinstance(raw, list) or len(raw) != len(shapes):
        raise _bad(name, f"a list of {len(shapes)} arrays")
    out = []
    for i, (data, shape) in enumerate(zip(raw, shapes, strict=True)):
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * 4:
            raise CheckpointError(f"checkpoint: {name}[{i}] does not hold the float32 bytes of shape {shape}")
        a = np.frombuffer(data, dtype=_F32).reshape(shape).astype(np.float32)
        if not np.isfinite(a).all():
            raise CheckpointError(f"checkpoint: {name}[{i}] holds NaN or inf")
        out.append(a)
    return out


def _shapes(v: Any, name: str = "shapes") -> list[tuple[int, ...]]:
    ok = isinstance(v, list) and all(isinstance(s, list) and len(s) <= 8 and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in s) for s in v)
    if not ok:
        raise _bad(name, "a list of shapes")
    return [tuple(s) for s in v]


def _names(d: dict[str, Any], key: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not (isinstance(v, list) and all(isinstance(n, str) for n in v)):
        raise _bad(f"spec.{key}", "a list of strings")
    return tuple(v)


def _spec_optimizer(d: dict[str, Any], version: int) -> OptimizerConfig:
    """spec.optimizer (version 1: spec.momentum and spec.weight_decay of SGD)."""
    if version == 1:
        return SGDConfig(momentum=_float(d, "momentum", "spec."), weight_decay=_float(d, "weight_decay", "spec."))
    try:
        return optimizer_from_dict(d.get("optimizer"))
    except BundleError as exc:
        raise CheckpointError(f"checkpoint: spec: {exc}") from None


def _spec_loss(d: dict[str, Any]) -> LossConfig:
    loss = d.get("loss", {"name": "soft_cross_entropy"})
    if not isinstance(loss, dict):
        raise _bad("spec.loss", "a map")
    try:
        return loss_from_dict(loss.get("name"), {k: v for k, v in loss.items() if k != "name"})
    except BundleError as exc:
        raise CheckpointError(f"checkpoint: spec: {exc}") from None


def _spec_dropout(v: Any) -> tuple[DropoutSpec, ...] | None:
    if v is None:
        return None
    try:
        return tuple(dropout_from_list(v))
    except BundleError as exc:
        raise CheckpointError(f"checkpoint: spec: {exc}") from None


def _spec(d: Any, version: int) -> ModelSpec:
    if not isinstance(d, dict):
        raise _bad("spec", "a map")
    in_shape = d.get("in_shape")
    if not (isinstance(in_shape, list) and len(in_shape) == 3 and all(isinstance(s, int) for s in in_shape)):
        raise _bad("spec.in_shape", "3 integers")
    batch = d.get("batch_size")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise _bad("spec.batch_size", "a positive integer or nil")
    kwargs = d.get("arch_kwargs", {})
    if not isinstance(kwargs, dict):
        raise _bad("spec.arch_kwargs", "a map")
    return ModelSpec(arch=_get(d, "arch", (str,), "a string", "spec."), in_shape=tuple(in_shape),
                     num_classes=_int(d, "num_classes", "spec.", lo=1), arch_kwargs=dict(kwargs),
                     optimizer=_spec_optimizer(d, version), loss=_spec_loss(d), batch_size=batch,
                     param_names=_names(d, "param_names"), buffer_names=_names(d, "buffer_names"),
                     dropout=_spec_dropout(d.get("dropout")))


def _config(d: Any) -> TrainConfig:
    if not isinstance(d, dict):
        raise _bad("config", "a map")
    known = {f.name for f in fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in d.items() if k in known}).validate()
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: config: {exc}") from None


def _rng_in(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict) or d.get("bit_generator") != "PCG64":
        raise _bad("loop.rng", "a PCG64 generator state")
    try:
        state = {"bit_generator": "PCG64", "state": {"state": int(d["state"]), "inc": int(d["inc"])},
                 "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}
        np.random.PCG64().state = state  # numpy checks the ranges
    except (KeyError, TypeError, ValueError):
        raise _bad("loop.rng", "a PCG64 generator state") from None
    return state


def _loop(d: Any) -> LoopState:
    if not isinstance(d, dict):
        raise _bad("loop", "a map")
    order = d.get("order")
    if order is not None:
        if not isinstance(order, bytes) or len(order) % 8:
            raise _bad("loop.order", "int64 bytes or nil")
        order = np.frombuffer(order, dtype=_I64).astype(np.int64)
        if not np.array_equal(np.sort(order), np.arange(order.size)):
            raise _bad("loop.order", "a permutation of the records")
    data = d.get("data", {})
    if not isinstance(data, dict):
        raise _bad("loop.data", "a map")
    return LoopState(step=_int(d, "step", "loop."), epoch=_int(d, "epoch", "loop."), batch=_int(d, "batch", "loop."),
                     order=order, rng=_rng_in(d.get("rng")), epoch_loss=_float(d, "epoch_loss", "loop."),
                     data=data)


def _slots(d: dict[str, Any], spec: ModelSpec, shapes: list[tuple[int, ...]], version: int) -> list[list[np.ndarray]]:
    """The optimizer state by slot (version 1: the SGD momentum buffers under "momenta")."""
    if version == 1:
        return [_read_arrays(d.get("momenta"), shapes, "momenta")]
    state = d.get("optimizer_state")
    if not isinstance(state, dict) or sorted(state) != sorted(spec.optimizer.slots):
        raise _bad("optimizer_state", f"a map of the slots {list(spec.optimizer.slots)}")
    return [_read_arrays(state[name], shapes, f"optimizer_state.{name}") for name in spec.optimizer.slots]


def _buffers(d: dict[str, Any], spec: ModelSpec, version: int) -> list[np.ndarray]:
    if version == 1:
        return []
    shapes = _shapes(d.get("buffer_shapes"), "buffer_shapes")
    if len(shapes) != len(spec.buffer_names):
        raise CheckpointError(f"checkpoint: {len(spec.buffer_names)} buffer names but {len(shapes)} buffer shapes")
    return _read_arrays(d.get("buffers"), shapes, "buffers")


def from_bytes(blob: bytes) -> ModelState:
    """Parse a checkpoint; every malformed field is a CheckpointError that names it."""
    try:
        d = msgpack.unpackb(blob, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage or truncation
        raise CheckpointError(f"checkpoint: not a valid msgpack file ({type(exc).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: not a {FORMAT!r} file")
    version = d.get("version")
    if isinstance(version, bool) or version not in (1, VERSION):
        raise CheckpointError(f"checkpoint: unsupported version {version!r} (this reader: 1..{VERSION})")
    shapes = _shapes(d.get("shapes"))
    spec = _spec(d.get("spec"), version)
    if spec.param_names and len(spec.param_names) != len(shapes):
        raise CheckpointError(f"checkpoint: {len(spec.param_names)} parameter names but {len(shapes)} shapes")
    bundle = d.get("bundle")
    if bundle is not None and not isinstance(bundle, bytes):
        raise _bad("bundle", "bytes or nil")
    losses = d.get("losses")
    if not isinstance(losses, list) or not all(isinstance(v, float) for v in losses):
        raise _bad("losses", "a list of numbers")
    ipc = d.get("ipc")
    if ipc is not None and (not isinstance(ipc, int) or ipc < 1):
        raise _bad("ipc", "a positive integer or nil")
    loop = _loop(d.get("loop"))
    return ModelState(backend=_get(d, "backend", (str,), "a string"), spec=spec, config=_config(d.get("config")),
                      params=_read_arrays(d.get("params"), shapes, "params"),
                      slots=_slots(d, spec, shapes, version), loop=loop, buffers=_buffers(d, spec, version),
                      mean=_floats(d.get("mean"), "mean"), std=_floats(d.get("std"), "std"), ipc=ipc,
                      losses=list(losses), seconds=_float(d, "seconds"), bundle=bundle)


def load(path: str | os.PathLike[str]) -> ModelState:
    """Read a checkpoint file; errors name the path and the field."""
    try:
        size = os.stat(path).st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, more than the {MAX_CHECKPOINT_BYTES} cap of a checkpoint")
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        return from_bytes(blob)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


__all__ = ["FORMAT", "VERSION", "CheckpointError", "LoopState", "ModelState", "data_fingerprint", "from_bytes",
           "load", "save", "spec_to_dict", "to_bytes"]
