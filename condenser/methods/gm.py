"""`gm`: IDC-style gradient matching (the multisize paper's base method, MDC §4.1).

Per class, the loss is sum over conv layers of ||grad_W CE(real) - grad_W CE(syn)||^2 (4-D conv
weights only; biases, norms and the head are not matched; "mse" in the reference code is this
unnormalised squared L2). The network is re-initialised every outer loop and trained on real data
(n_data samples, batches of 64, per-sample DSA + CutMix, SGD 0.01/0.9/5e-4) after every inner step.

Classes can be batched with `torch.func.vmap` (one fused forward/backward for all classes: GPU
friendly) or looped (less memory; faster on CPU, where vmap's grouped convolutions are slow).
Both give the same loss; `class_batched=None` picks vmap on CUDA only. Matching runs in float32
even under AMP: the double backward of a squared gradient difference is precision sensitive.

For the multisize wrapper, `match_prefix` computes the subset term on the MLS prefix alone (the masked
samples of a 0/1-weighted batch cost a forward and a double backward and add nothing), and the real-side
target keeps the class-mean real features, so measuring steps need no second real forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from condenser.augment import DSA, DSAConfig, cutmix
from condenser.methods.base import (
    METHODS,
    Generators,
    MethodConfigError,
    StepContext,
    as_class_batch,
    siamese_per_class,
)
from condenser.models import Classifier
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


def _head_reads_flat_features(model: nn.Module) -> bool:
    """Whether forward(x) is classifier(flatten(features(x))), so one forward also yields the features."""
    cls = type(model)
    return isinstance(model, Classifier) and cls.forward is Classifier.forward and cls.embed is Classifier.embed


def _logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """model(x) (the same operations, so the same bits) and, where the head reads them, its flat features."""
    if not _head_reads_flat_features(model):
        return model(x), None
    feats = torch.flatten(model.features(x), 1)
    return model.classifier(feats), feats


@dataclass(frozen=True)
class GMTarget:
    """The real side of one step: per-class conv-weight gradients (list over layers of [K, *W.shape]) and
    the class-mean flat real features [K, D] (None when the forward does not expose them: the vmap path,
    or a model whose head does not read flatten(features))."""

    grads: list[torch.Tensor]
    feature_mean: torch.Tensor | None = None

    def classes(self, index: torch.Tensor) -> GMTarget:
        """The target of the classes at positions `index` of the batch."""
        means = None if self.feature_mean is None else self.feature_mean.index_select(0, index)
        return GMTarget([g.index_select(0, index) for g in self.grads], means)


@METHODS.register("gm")
class GradientMatching:
    name = "gm"
    Settings = GMSettings
    lr_in_pixel_units = True
    autocast_matching = False  # second-order terms stay in float32
    class_separable = True  # per-class gradients; the network trains on the shared generator

    def __init__(self, allow_flip: bool = True, **settings: Any) -> None:
        self.settings: GMSettings = make_settings(GMSettings, settings, self.name)
        s = self.settings
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
                     weights: torch.Tensor | None, create_graph: bool, features: bool = False
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-class CE gradients w.r.t. the conv weights (list over layers of [K, *W.shape]) and, if
        `features`, the class-mean flat features of `x` [K, D] from the same forward: None on the vmap
        path and with batch norm (whose batch statistics make a separate forward differ)."""
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
            return (out if create_graph else [t.detach() for t in out]), None
        params = [named[n] for n in conv_names]
        features = features and not _has_batchnorm(model)
        per_class, means = [], []
        for c in range(k):
            logits, feats = _logits_and_features(model, x[c]) if features else (model(x[c]), None)
            loss = _weighted_ce(logits, y[c], None if weights is None else weights[c])
            per_class.append(torch.autograd.grad(loss, params, create_graph=create_graph))
            if feats is not None:
                means.append(feats.detach().mean(0))
        grads = [torch.stack([pc[i] for pc in per_class]) for i in range(len(params))]
        return grads, torch.stack(means) if means else None

    def target(self, model: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> GMTarget:
        return GMTarget(*self._class_grads(model, real, labels, None, create_graph=False, features=True))

    def real_feature_mean(self, model: nn.Module, target: GMTarget) -> torch.Tensor | None:
        """The class-mean `model.features` of the real batch, kept from the target's forward."""
        return target.feature_mean

    def match(self, model: nn.Module, syn: torch.Tensor, target: GMTarget, labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
        g_syn, _ = self._class_grads(model, syn, labels, weights, create_graph=True)
        return sum(((gr - gs) ** 2).sum() for gr, gs in zip(target.grads, g_syn, strict=True))

    def match_prefix(self, model: nn.Module, syn: torch.Tensor, target: GMTarget, labels: torch.Tensor,
                     sizes: Sequence[int]) -> torch.Tensor:
        """`match` on the first sizes[c] samples of class c: equal to match with 0/1 prefix weights.

        Per-sample CE and instance norm couple no samples, so the masked ones change no gradient; they
        are left out instead. Classes with the same prefix share one call (the loss is a sum over classes);
        a class with size 0 adds nothing. Batch norm couples them, so there the masks stay.
        """
        if len(sizes) != syn.shape[0]:
            raise MethodConfigError(f"gm: {len(sizes)} prefix sizes for a batch of {syn.shape[0]} classes")
        if _has_batchnorm(model):
            limit = torch.tensor(list(sizes), device=syn.device).unsqueeze(1)
            mask = (torch.arange(syn.shape[1], device=syn.device).unsqueeze(0) < limit).to(syn.dtype)
            return self.match(model, syn, target, labels, mask)
        if len(set(sizes)) == 1 and sizes[0] > 0:
            return self.match(model, syn[:, : sizes[0]], target, labels)
        total = syn.new_zeros(())
        for n in sorted(set(sizes) - {0}):
            index = torch.tensor([c for c, s in enumerate(sizes) if s == n], device=syn.device)
            total = total + self.match(model, syn.index_select(0, index)[:, :n], target.classes(index),
                                       labels.index_select(0, index))
        return total

    def loss(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor,
             label: int | torch.Tensor) -> torch.Tensor:
        syn, real, labels = as_class_batch(syn, real, label)
        return self.match(model, syn, self.target(model, real, labels), labels)
