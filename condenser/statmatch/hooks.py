"""Forward pre-hooks that turn the input of every matched layer into a statistics distance.

BN layers are matched against their running mean/variance (the dataset-wide statistics the teacher
learned); convolutions against statistics of the real data's conv inputs (cached, see cache.py). The
teacher stays in eval mode, so BN normalises with its running statistics while the hook measures the
batch statistics of its input (SRe2L's convention). Distances are un-squared L2 norms per group, summed
over groups, so one forward pass serves several independent statistics batches.

The optional SDS-form EMA (G-VBSM, alpha > 0) reports the distance of a running average of the batch
statistics while the gradient flows through the current batch: eff = stat + sg(ema - stat).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from condenser.statmatch.stats import channel_stats, patch_stats

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class LayerTarget:
    """What one hooked layer's input is matched to."""

    name: str  # module name in the teacher
    kind: str  # "bn" | "conv"
    weight: float
    mean: torch.Tensor  # [C]
    var: torch.Tensor  # [C]
    patch_mean: torch.Tensor | None = None  # [L] (conv only)
    patch_var: torch.Tensor | None = None


def bn_layer_targets(model: nn.Module, first_multiplier: float) -> list[LayerTarget]:
    """Every BN layer, matched to its running statistics (live buffers: no copy); the first one weighted."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, BN_TYPES) and m.running_mean is not None:
            out.append(LayerTarget(name, "bn", first_multiplier if not out else 1.0, m.running_mean, m.running_var))
    return out


def conv_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def conv_layer_targets(stats: dict[str, torch.Tensor], names: list[str], first_multiplier: float,
                       device: torch.device) -> list[LayerTarget]:
    """Conv layers matched to cached real-data statistics (see cache.py for the key layout)."""
    out = []
    for i, name in enumerate(names):
        out.append(LayerTarget(name, "conv", first_multiplier if i == 0 else 1.0,
                               stats[f"{name}.mean"].to(device), stats[f"{name}.var"].to(device),
                               stats[f"{name}.patch_mean"].to(device), stats[f"{name}.patch_var"].to(device)))
    return out


@dataclass
class _Pass:
    groups: int
    weights: torch.Tensor | None
    tag: str
    skip: frozenset[int]
    losses: dict[str, list[torch.Tensor]]


class StatRecorder:
    """Hooks on one teacher; active only inside `recording(...)`, inert for plain forwards."""

    def __init__(self, model: nn.Module, layers: list[LayerTarget], ema: float = 0.0, patch: int = 4) -> None:
        self.layers = layers
        self.ema = ema
        self.patch = patch
        self._ema_state: dict[tuple[int, str, str], torch.Tensor] = {}
        self._pass: _Pass | None = None
        self._handles = [model.get_submodule(t.name).register_forward_pre_hook(self._hook(i))
                         for i, t in enumerate(layers)]

    @property
    def conv_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.layers) if t.kind == "conv"]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset_ema(self) -> None:
        self._ema_state.clear()

    @contextmanager
    def recording(self, groups: int = 1, weights: torch.Tensor | None = None, tag: str = "full",
                  skip: frozenset[int] = frozenset()) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Within the block, each forward appends one scalar per matched layer to losses[kind]."""
        losses: dict[str, list[torch.Tensor]] = {"bn": [], "conv": []}
        self._pass = _Pass(groups, weights, tag, skip, losses)
        try:
            yield losses
        finally:
            self._pass = None

    def _smooth(self, key: tuple[int, str, str], stat: torch.Tensor) -> torch.Tensor:
        if self.ema <= 0:
            return stat
        old = self._ema_state.get(key)
        new = stat.detach() if old is None or old.shape != stat.shape else \
            self.ema * old + (1 - self.ema) * stat.detach()
        self._ema_state[key] = new
        return stat + (new - stat).detach()

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            p = self._pass
            if p is None or index in p.skip:
                return
            t = self.layers[index]
            x = args[0]
            mean, var = channel_stats(x, p.groups, p.weights)
            mean, var = self._smooth((index, "mean", p.tag), mean), self._smooth((index, "var", p.tag), var)
            dist = (mean - t.mean.float()).norm(dim=1) + (var - t.var.float()).norm(dim=1)  # [G]
            if t.kind == "conv" and t.patch_mean is not None and x.dim() == 4:
                pm, pv = patch_stats(x, self.patch, p.groups, p.weights)
                pm, pv = self._smooth((index, "pmean", p.tag), pm), self._smooth((index, "pvar", p.tag), pv)
                dist = dist + (pm - t.patch_mean).norm(dim=1) + (pv - t.patch_var).norm(dim=1)
            p.losses[t.kind].append(t.weight * dist.sum())

        return hook
