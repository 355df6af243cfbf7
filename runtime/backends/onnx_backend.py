"""Training with onnxruntime alone: the bundle's train-step graph maps (params, optimizer state, buffers,
batch) to new ones."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.backends.base import ModelSpec, check_arrays, dropout_noise
from runtime.bundle import TrainerBundle
from runtime.errors import BackendError, TrainerError
from runtime.onnx_check import check_model


def _options(ort: Any, threads: int | None, empty_dir: str) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # The static memory pattern preallocates every intermediate of the train step at once; without it
    # the arena reuses freed buffers: peak RSS 397 -> 237 MB for convnet-128 at batch 64, same speed.
    so.enable_mem_pattern = False
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    # Second line of defence behind runtime/onnx_check.py: parse the bytes as an ONNX protobuf only (never
    # as an ORT-format flatbuffer), and resolve any external tensor data inside an empty directory, not the
    # working directory, so a graph that slipped past the check still cannot read a local file.
    so.add_session_config_entry("session.load_model_format", "ONNX")
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", empty_dir)
    return so


def _session(model: bytes, threads: int | None, what: str) -> Any:
    """An onnxruntime session for a graph that has passed the exporter allow-list (BundleError if not)."""
    check_model(model, what)
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency of the runtime extra
        raise BackendError("the onnx backend needs onnxruntime: pip install onnxruntime") from exc
    with tempfile.TemporaryDirectory(prefix="multisize-ort-") as empty_dir:
        try:
            return ort.InferenceSession(model, _options(ort, threads, empty_dir),
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise TrainerError(f"onnxruntime cannot load the trainer's {what} graph: {exc}") from exc


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    pad = np.zeros((rows - a.shape[0], *a.shape[1:]), dtype=a.dtype)
    return np.concatenate([a, pad])


class OnnxTrainer:
    """Holds parameters, optimizer slots and state buffers as numpy arrays and feeds them through the graph
    each step, with the inputs the runtime draws: lr, AdamW's step count and each dropout's noise."""

    backend = "onnx"

    def __init__(self, bundle: TrainerBundle, params: Sequence[np.ndarray] | None = None,
                 threads: int | None = None, seed: int = 0, buffers: Sequence[np.ndarray] | None = None):
        self.bundle = bundle
        self.spec = ModelSpec.from_bundle(bundle)
        self.meta = bundle.meta
        self.io = bundle.meta.io
        self._seed = seed
        self._threads = threads
        self._train = _session(bundle.train_step, threads, "train-step")
        self._infer = None
        self.set_params(bundle.initial_params() if params is None else list(params))
        self.set_buffers(bundle.initial_buffers() if buffers is None else list(buffers))
        self._slots = bundle.initial_slots()

    def set_params(self, params: list[np.ndarray]) -> None:
        self._params = check_arrays(params, self.meta.param_names, self.meta.param_shapes, "parameter")

    def get_params(self) -> list[np.ndarray]:
        return [p.copy() for p in self._params]

    def set_buffers(self, buffers: list[np.ndarray]) -> None:
        self._buffers = check_arrays(buffers, self.meta.buffer_names, self.meta.buffer_shapes, "buffer")

    def get_buffers(self) -> list[np.ndarray]:
        return [b.copy() for b in self._buffers]

    def set_slots(self, slots: list[list[np.ndarray]]) -> None:
        if len(slots) != len(self.meta.optimizer.slots):
            raise TrainerError(f"expected {len(self.meta.optimizer.slots)} optimizer slots, got {len(slots)}")
        self._slots = [check_arrays(s, self.meta.param_names, self.meta.param_shapes, f"{name} slot")
                       for name, s in zip(self.meta.optimizer.slots, slots, strict=True)]

    def get_slots(self) -> list[list[np.ndarray]]:
        return [[a.copy() for a in s] for s in self._slots]

    def _feeds(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray,
               step: int) -> dict[str, np.ndarray]:
        io, b = self.io, self.meta.batch_size
        if self.meta.loss.targets == "index":  # hard labels as class indices: the argmax of each target row
            targets = np.asarray(targets).argmax(axis=-1).astype(np.int64)
        feeds = dict(zip(io.data, (np.asarray(lr, dtype=np.float32), x, targets, weights), strict=True))
        if io.step:
            feeds[io.step[0]] = np.asarray(step + 1, dtype=np.float32)
        for i, (name, d) in enumerate(zip(io.noise, self.meta.dropout, strict=True)):
            feeds[name] = dropout_noise(self._seed, step, i, (b, *d.shape))
        feeds.update(zip(io.params, self._params, strict=True))
        for names, arrays in zip(io.slots, self._slots, strict=True):
            feeds.update(zip(names, arrays, strict=True))
        feeds.update(zip(io.buffers, self._buffers, strict=True))
        return feeds

    def step(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray, step: int = 0) -> float:
        b = self.meta.batch_size
        if x.shape[0] != b:
            raise TrainerError(f"the train-step graph takes batches of exactly {b} rows, got {x.shape[0]}")
        out = self._train.run(self.meta.train_outputs, self._feeds(lr, x, targets, weights, step))
        n, k = len(self._params), len(self._slots)
        self._params = out[1:1 + n]
        self._slots = [out[1 + n * (i + 1):1 + n * (i + 2)] for i in range(k)]
        self._buffers = out[1 + n * (k + 1):]
        return float(out[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self._infer is None:
            self._infer = _session(self.bundle.inference, self._threads, "inference")
        b = self.meta.batch_size
        x_name, p_names = self.meta.inference_inputs[0], self.meta.inference_inputs[1:]
        feeds = dict(zip(p_names, [*self._params, *self._buffers], strict=True))
        chunks = []
        for i in range(0, x.shape[0], b):
            part = np.ascontiguousarray(x[i:i + b], dtype=np.float32)
            feeds[x_name] = _pad_rows(part, b)
            chunks.append(self._infer.run(self.meta.inference_outputs, feeds)[0][: part.shape[0]])
        if not chunks:
            return np.zeros((0, self.meta.num_classes), dtype=np.float32)
        return np.concatenate(chunks)


__all__ = ["OnnxTrainer"]
