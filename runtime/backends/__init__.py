"""Training backends. `onnx` needs only onnxruntime; `torch` is imported lazily, on request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.backends.base import ModelSpec, Trainer, dropout_noise
from runtime.bundle import TrainerBundle
from runtime.config import BACKENDS
from runtime.errors import BackendError, TrainerError


def make_trainer(backend: str, spec: ModelSpec, bundle: TrainerBundle | None,
                 params: Sequence[np.ndarray] | None, seed: int = 0, threads: int | None = None,
                 buffers: Sequence[np.ndarray] | None = None) -> Trainer:
    """Build the backend's trainer; `params` / `buffers` None mean the backend's own initialisation (the
    bundle's buffers for onnx). `seed` also seeds the dropout noise of every step."""
    if backend == "onnx":
        if bundle is None:
            raise TrainerError("backend 'onnx' needs a trainer bundle: the file embeds none; export one with "
                               "`condenser export-trainer` and pass trainer=PATH (or use backend='torch')")
        from runtime.backends.onnx_backend import OnnxTrainer

        return OnnxTrainer(bundle, params=params, threads=threads, seed=seed, buffers=buffers)
    if backend == "torch":
        from runtime.backends.torch_backend import TorchTrainer

        return TorchTrainer(spec, params=params, seed=seed, threads=threads, buffers=buffers)
    raise BackendError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


__all__ = ["ModelSpec", "Trainer", "dropout_noise", "make_trainer"]
