"""Training with PyTorch: the same network, loss and optimizer update as the onnx graph.

Imported only when backend="torch" is asked for. It needs torch and nothing of the condenser: a
registered network comes from runtime/models.py (the definition the condenser exports), a user's own
from its factory "pkg.module:function" (runtime/user_models.py), which must be importable here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from runtime.backends.base import ModelSpec, check_arrays, dropout_noise
from runtime.bundle import SGDConfig
from runtime.errors import BackendError, TrainerError


def _import_torch() -> Any:
    """torch, or a BackendError when it is not installed."""
    try:
        import torch
    except ImportError as exc:
        raise BackendError("the torch backend needs torch (pip install torch); "
                           "use backend='onnx' on a torch-free device") from exc
    return torch


def build_network(spec: ModelSpec) -> Any:
    """The torch module a spec names: a runtime/models.py architecture or a user's factory."""
    from runtime.user_models import build_user_model, is_factory

    if is_factory(spec.arch):
        return build_user_model(spec.arch, spec.in_shape, spec.num_classes, spec.arch_kwargs)
    from runtime.models import ARCHS, ModelSpecError, build_model

    if spec.arch not in ARCHS and spec.param_names:
        raise ModelSpecError(f"model {spec.arch!r} was exported from a module instance, so the torch backend "
                             "cannot rebuild it: export it from a factory (--model pkg.module:factory) or "
                             "train with backend='onnx'")
    return build_model(spec.arch, spec.in_shape, spec.num_classes, **spec.arch_kwargs)


def _optimizer(torch: Any, model: Any, spec: ModelSpec) -> Any:
    opt = spec.optimizer
    if isinstance(opt, SGDConfig):
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=opt.momentum, weight_decay=opt.weight_decay,
                               nesterov=opt.nesterov)
    return torch.optim.AdamW(model.parameters(), lr=0.01, betas=opt.betas, eps=opt.eps,
                             weight_decay=opt.weight_decay)


class TorchTrainer:
    """torch.optim.SGD / AdamW on the spec's network. Padding rows (weight 0) are dropped before the forward
    pass, which leaves sum(w*l)/sum(w) unchanged and gives BatchNorm the statistics of the real rows, as
    the graph's masked BatchNorm computes them; dropout takes the same noise as the graph (`dropout_noise`)."""

    backend = "torch"

    def __init__(self, spec: ModelSpec, params: Sequence[np.ndarray] | None = None, seed: int = 0,
                 threads: int | None = None, buffers: Sequence[np.ndarray] | None = None):
        torch = self._torch = _import_torch()
        from runtime import torch_step

        self._step_fns = torch_step
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
            torch.manual_seed(seed)
            self.model = build_network(spec)
        self.spec = self._checked_spec(spec)
        self._seed = seed
        if params is not None:
            self.set_params(list(params))
        if buffers is not None:
            self.set_buffers(list(buffers))
        self.model.train()
        self.opt = _optimizer(torch, self.model, self.spec)
        self._dropout = self._dropout_modules()

    def _checked_spec(self, spec: ModelSpec) -> ModelSpec:
        """The spec with the model's parameter and buffer names; a bundle's names must be the model's."""
        names = tuple(n for n, _ in self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        if spec.param_names and names != tuple(spec.param_names):
            raise TrainerError(f"torch model {spec.arch!r} has parameters {list(names[:3])}..., "
                               f"the trainer bundle {list(spec.param_names[:3])}...: not the same network")
        missing = [b for b in spec.buffer_names if b not in buffers]
        if missing:
            raise TrainerError(f"torch model {spec.arch!r} has no buffer {missing[0]!r} of the trainer bundle")
        if not spec.param_names:
            spec = replace(spec, param_names=names, buffer_names=tuple(self._step_fns.state_buffers(self.model)))
        return spec

    def _dropout_modules(self) -> list[tuple[int, str, Any]]:
        """(noise index, path, module) of the dropouts that train with noise; other nn.Dropout are identity."""
        found = self._step_fns.dropout_modules(self.model)
        if self.spec.dropout is None:
            return [(i, name, m) for i, (name, m) in enumerate(found)]
        index = {d.module: i for i, d in enumerate(self.spec.dropout)}
        return [(index[name], name, m) if name in index else (-1, name, m) for name, m in found]

    # ------------------------------------------------------------------------------------ state
    def set_params(self, params: list[np.ndarray]) -> None:
        plist = list(self.model.parameters())
        arrays = check_arrays(params, self.spec.param_names or [str(i) for i in range(len(plist))],
                              [tuple(p.shape) for p in plist], "parameter")
        with self._torch.no_grad():
            for p, v in zip(plist, arrays, strict=True):
                p.copy_(self._torch.from_numpy(v))

    def get_params(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self.model.parameters()]

    def _buffer_tensors(self) -> list[Any]:
        buffers = dict(self.model.named_buffers())
        return [buffers[b] for b in self.spec.buffer_names]

    def set_buffers(self, buffers: list[np.ndarray]) -> None:
        tensors = self._buffer_tensors()
        arrays = check_arrays(buffers, self.spec.buffer_names, [tuple(t.shape) for t in tensors], "buffer")
        with self._torch.no_grad():
            for t, v in zip(tensors, arrays, strict=True):
                t.copy_(self._torch.from_numpy(v))

    def get_buffers(self) -> list[np.ndarray]:
        return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in self._buffer_tensors()]

    def _state_key(self, slot: str) -> str:
        return {"momentum": "momentum_buffer"}.get(slot, slot)

    def get_slots(self) -> list[list[np.ndarray]]:
        out = []
        for slot in self.spec.optimizer.slots:
            key = self._state_key(slot)
            out.append([np.zeros(tuple(p.shape), np.float32) if key not in self.opt.state.get(p, {}) else
                        self.opt.state[p][key].detach().cpu().numpy().astype(np.float32, copy=True)
                        for p in self.model.parameters()])
        return out

    def set_slots(self, slots: list[list[np.ndarray]]) -> None:
        """Saved optimizer state into torch's; SGD then continues exactly as the onnx graph does (with a
        zero buffer its first update is the gradient, as with no buffer), AdamW gets its step per call."""
        plist = list(self.model.parameters())
        if len(slots) != len(self.spec.optimizer.slots):
            raise TrainerError(f"expected {len(self.spec.optimizer.slots)} optimizer slots, got {len(slots)}")
        for slot, arrays in zip(self.spec.optimizer.slots, slots, strict=True):
            arrays = check_arrays(arrays, self.spec.param_names, [tuple(p.shape) for p in plist], f"{slot} slot")
            for p, a in zip(plist, arrays, strict=True):
                self.opt.state[p][self._state_key(slot)] = self._torch.from_numpy(a)

    # ------------------------------------------------------------------------------------- step
    def _adamw_step(self, step: int) -> None:
        """AdamW reads its bias correction from state['step'], which it increments first: set it to `step`."""
        torch = self._torch
        for p in self.model.parameters():
            state = self.opt.state[p]
            if "exp_avg" not in state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            state["step"] = torch.tensor(float(step), dtype=torch.float32)

    def _forwards(self, keep: np.ndarray, step: int, rows: int) -> dict[Any, Any]:
        torch, fns = self._torch, self._step_fns
        out = {}
        for index, _name, m in self._dropout:
            if index < 0:
                out[m] = lambda x: x
                continue

            def forward(x, m=m, index=index):
                noise = dropout_noise(self._seed, step, index, (rows, *x.shape[1:]))[keep]
                return fns.seeded_dropout(x, torch.from_numpy(noise), m.p)
            out[m] = forward
        return out

    def step(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray, step: int = 0) -> float:
        torch = self._torch
        keep = weights > 0
        rows = x.shape[0]
        x, targets, weights = x[keep], targets[keep], weights[keep]
        xt, tt, wt = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, targets, weights))
        for group in self.opt.param_groups:
            group["lr"] = float(lr)
        if not isinstance(self.spec.optimizer, SGDConfig):
            self._adamw_step(step)
        with self._step_fns.forwards_replaced(self._forwards(keep, step, rows)):
            logits = self.model(xt)
        loss = self._step_fns.student_loss(logits, tt, wt, self.spec.loss)
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


__all__ = ["TorchTrainer", "build_network"]
