"""Training with PyTorch: the same network (runtime/models.py), loss and SGD update as the onnx graph.

Imported only when backend="torch" is asked for. It needs torch and nothing of the condenser: the
network is built from the bundle's spec by runtime/models.py, the definition the condenser exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from runtime.backends.base import ModelSpec
from runtime.errors import BackendError, TrainerError


def _import_torch() -> tuple[Any, Any]:
    """torch and runtime/models.py's builder, or a BackendError when torch is not installed."""
    try:
        import torch

        from runtime.models import build_model
    except ImportError as exc:
        raise BackendError("the torch backend needs torch (pip install torch); "
                           "use backend='onnx' on a torch-free device") from exc
    return torch, build_model


class TorchTrainer:
    """torch.optim.SGD on a runtime/models.py network; padding rows (weight 0) are dropped before the forward pass,
    which leaves sum(w*ce)/sum(w) unchanged because every supported norm is per sample."""

    backend = "torch"

    def __init__(self, spec: ModelSpec, params: Sequence[np.ndarray] | None = None, seed: int = 0,
                 threads: int | None = None):
        torch, build_model = _import_torch()
        self._torch = torch
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
            torch.manual_seed(seed)
            self.model = build_model(spec.arch, spec.in_shape, spec.num_classes, **spec.arch_kwargs)
        names = [n for n, _ in self.model.named_parameters()]
        if spec.param_names and tuple(names) != tuple(spec.param_names):
            raise TrainerError(f"torch model {spec.arch!r} has parameters {names[:3]}..., "
                               f"the trainer bundle {list(spec.param_names[:3])}...: not the same network")
        self.spec = spec if spec.param_names else replace(spec, param_names=tuple(names))
        if params is not None:
            self.set_params(list(params))
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=spec.momentum,
                                   weight_decay=spec.weight_decay)

    def set_params(self, params: list[np.ndarray]) -> None:
        torch = self._torch
        plist = list(self.model.parameters())
        if len(params) != len(plist):
            raise TrainerError(f"expected {len(plist)} parameter arrays, got {len(params)}")
        with torch.no_grad():
            for p, v in zip(plist, params, strict=True):
                if tuple(p.shape) != tuple(v.shape):
                    raise TrainerError(f"parameter shape {tuple(v.shape)} does not fit {tuple(p.shape)}")
                p.copy_(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)))

    def get_params(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self.model.parameters()]

    def step(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
        torch = self._torch
        keep = weights > 0
        if not keep.all():
            x, targets, weights = x[keep], targets[keep], weights[keep]
        xt, tt, wt = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                      for a in (x, targets, weights))
        for group in self.opt.param_groups:
            group["lr"] = float(lr)
        from runtime.torch_losses import soft_cross_entropy

        logits = self.model(xt)
        loss = soft_cross_entropy(logits, tt, wt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        torch = self._torch
        self.model.eval()
        try:
            with torch.no_grad():
                out = [self.model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], np.float32)))
                       .numpy() for i in range(0, x.shape[0], batch_size)]
        finally:
            self.model.train()
        if not out:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return np.concatenate(out)


__all__ = ["TorchTrainer"]
