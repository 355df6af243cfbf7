"""`gm`: IDC-style gradient matching (the multisize paper's base method, mdc.md §2.2).

Per class, the loss is sum over conv layers of ||grad_W CE(real) - grad_W CE(syn)||^2 (4-D conv
weights only; biases, norms and the head are not matched; "mse" in the reference code is this
unnormalised squared L2). The network is re-initialised every outer loop and trained on real data
(n_data samples, batches of 64, per-sample DSA + CutMix, SGD 0.01/0.9/5e-4) after every inner step.

Classes can be batched with `torch.func.vmap` (one fused forward/backward for all classes: GPU
friendly) or looped (less memory; faster on CPU, where vmap's grouped convolutions are slow).
Both give the same loss; `class_batched=None` picks vmap on CUDA only. Matching runs in float32
even under AMP: the double backward of a squared gradient difference is precision sensitive.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from condenser.augment import DSA, DSAConfig, cutmix
from condenser.methods.base import Generators, MethodConfigError, StepContext, as_class_batch, siamese_per_class
from condenser.training import soft_cross_entropy


@dataclass(frozen=True)
class GMSettings:
    lr_base: float = 5e-3  # image lr at IPC 10, 32x32, [0,1] pixels (IDC)
    net_lr: float = 0.01
    net_momentum: float = 0.9
    net_weight_decay: float = 5e-4
    net_batch: int = 64
    n_data: int = 2000  # real samples the network trains on after each inner step
    train_strategy: str = "color_crop"  # per-sample DSA for the network update (cutout off under CutMix)
    cutmix_p: float = 0.5
    cutmix_beta: float = 1.0
    matching_strategy: str = "color_crop_cutout"
    class_batched: bool | None = None  # vmap over classes; None = on CUDA only


def make_settings(cls: type, settings: dict[str, Any], method: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise MethodConfigError(f"method {method!r}: unknown settings {unknown}; known: {sorted(known)}")
    return cls(**settings)


def _weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    per = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum().clamp_min(1e-12)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class GradientMatching:
    name = "gm"
    Settings = GMSettings
    lr_in_pixel_units = True
    autocast_matching = False  # second-order terms stay in float32
    class_separable = True  # per-class gradients; the network trains on the shared generator

    def __init__(self, allow_flip: bool = True, **settings: Any) -> None:
        self.settings: GMSettings = make_settings(GMSettings, settings, self.name)
        s = self.settings
        self.matching_strategy = s.matching_strategy
        self._match_aug = DSA(DSAConfig(strategy=s.matching_strategy), allow_flip=allow_flip)
        self._train_aug = (DSA(DSAConfig(strategy=s.train_strategy), allow_flip=allow_flip)
                           if s.train_strategy else None)
        self._net_opt: torch.optim.Optimizer | None = None

    def default_lr_img(self, ipc: int, resolution: int) -> float:
        """IDC's tune_lr_img: base * (ipc/10) * (res/32)^2, in [0,1] pixel units."""
        return self.settings.lr_base * (ipc / 10) * (resolution / 32) ** 2

    # --- model schedule -------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, ctx: StepContext) -> None:
        ctx.reinit(model)
        model.train()
        s = self.settings
        self._net_opt = torch.optim.SGD(model.parameters(), lr=s.net_lr, momentum=s.net_momentum,
                                        weight_decay=s.net_weight_decay)

    def train_model_step(self, model: nn.Module, ctx: StepContext) -> None:
        s = self.settings
        if s.n_data <= 0:
            return
        if self._net_opt is None:
            raise MethodConfigError("gm: train_model_step called before prepare_model")
        done = 0
        while done < s.n_data:
            b = min(s.net_batch, s.n_data - done)
            x, y = ctx.real.random_batch(b, ctx.generator)
            if self._train_aug is not None:
                x = self._train_aug(x, generator=ctx.generator)
            t = F.one_hot(y, ctx.num_classes).to(x.dtype)
            if s.cutmix_p > 0:
                x, t = cutmix(x, t, beta=s.cutmix_beta, p=s.cutmix_p, generator=ctx.generator)
            with ctx.autocast():
                logits = model(x)
            loss = soft_cross_entropy(logits.float(), t)
            self._net_opt.zero_grad(set_to_none=True)
            loss.backward()
            self._net_opt.step()
            done += b

    # --- matching -------------------------------------------------------------------------------
    def siamese(self, real: torch.Tensor, syn: torch.Tensor, generator: Generators
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return siamese_per_class(self._match_aug, real, syn, generator)

    def _batched(self, model: nn.Module, x: torch.Tensor) -> bool:
        flag = self.settings.class_batched
        if flag is None:
            flag = x.device.type == "cuda"
        return bool(flag) and not _has_batchnorm(model)

    def _class_grads(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                     weights: torch.Tensor | None, create_graph: bool) -> list[torch.Tensor]:
        """Per-class CE gradients w.r.t. the conv weights: list over layers of [K, *W.shape]."""
        named = dict(model.named_parameters())
        conv_names = [n for n, p in named.items() if p.dim() == 4]
        if not conv_names:
            raise MethodConfigError("gm: the model has no 4-D (conv) weights to match")
        k, m = x.shape[0], x.shape[1]
        y = labels.view(k, 1).expand(k, m)
        if self._batched(model, x):
            conv = {n: named[n].detach() for n in conv_names}
            rest = {n: p.detach() for n, p in named.items() if n not in conv}
            buffers = dict(model.named_buffers())

            def ce(params: dict, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None) -> torch.Tensor:
                logits = functional_call(model, (params, rest, buffers), (xb,))
                return _weighted_ce(logits, yb, wb)

            w_dim = None if weights is None else 0
            g = vmap(grad(ce), in_dims=(None, 0, 0, w_dim))(conv, x, y, weights)
            out = [g[n] for n in conv_names]
            return out if create_graph else [t.detach() for t in out]
        params = [named[n] for n in conv_names]
        per_class = []
        for c in range(k):
            loss = _weighted_ce(model(x[c]), y[c], None if weights is None else weights[c])
            per_class.append(torch.autograd.grad(loss, params, create_graph=create_graph))
        return [torch.stack([pc[i] for pc in per_class]) for i in range(len(params))]

    def target(self, model: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        return self._class_grads(model, real, labels, None, create_graph=False)

    def match(self, model: nn.Module, syn: torch.Tensor, target: list[torch.Tensor], labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
        g_syn = self._class_grads(model, syn, labels, weights, create_graph=True)
        return sum(((gr - gs) ** 2).sum() for gr, gs in zip(target, g_syn, strict=True))

    def loss(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor,
             label: int | torch.Tensor) -> torch.Tensor:
        syn, real, labels = as_class_batch(syn, real, label)
        return self.match(model, syn, self.target(model, real, labels), labels)
