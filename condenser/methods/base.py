"""The one interface every base condensation method implements, and its registry.

A method is a loss over the synthetic images of some classes against a real batch and a network.
The condensation loop (condenser.condense) owns the images, the optimiser, the schedule and the
siamese augmentation draw; the method owns what is matched and how the network evolves. The loss
is split into `target` (real side, computed once per step) and `match` (synthetic side, weighted
per sample) so the multisize wrapper can add its subset term on the same real batch and the same
augmented tensors without recomputing the real statistics (MDC paper Eq. 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from condenser.augment import DSA, DSAParams
from condenser.errors import CondenserError
from condenser.registry import Registry


class MethodConfigError(CondenserError, ValueError):
    """A method or its synthetic parameterisation was configured with values it cannot honour."""


Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for a whole class batch, or one per class of the batch (draws then depend on the class
alone, not on which other classes share the batch: what class sharding over processes needs)."""


def per_class_generators(generator: Generators, k: int) -> list[torch.Generator] | None:
    """The per-class list of `generator` (None when it is one shared generator or None)."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != k:
        raise MethodConfigError(f"{len(gens)} per-class generators for a batch of {k} classes")
    return gens


@dataclass
class StepContext:
    """What a method's model hooks may use: real data, randomness, and the network factory.

    `reinit(model)` redraws the network's weights from `generator` (deterministic, resumable);
    `autocast()` is the mixed-precision context the run chose (a no-op in full precision).
    """

    real: Any  # condenser.methods.real.RealPool (kept loose to avoid an import cycle)
    generator: torch.Generator
    num_classes: int
    reinit: Callable[[nn.Module], None]
    autocast: Callable[[], Any]


@runtime_checkable
class BaseMethod(Protocol):
    """A matching loss plus the per-outer-loop model schedule it needs.

    Shapes: `syn` [K, M, ch, H, W] (M decoded samples of each of K classes), `real` [K, B, ch, H, W],
    `labels` int64 [K]; `weights` [K, M] selects/weights synthetic samples per class (a prefix mask
    for the subset loss; None = all). Losses are summed over classes, so one backward gives every
    class the gradient of its own loss (classes' images are disjoint).
    """

    name: str
    lr_in_pixel_units: bool  # lr_img is given for [0,1] pixels (IDC) rather than normalized space (DM)
    autocast_matching: bool  # whether target/match may run under the run's AMP autocast
    # class_separable: the loss is a sum of per-class terms, each depending only on its class's images, real
    # batch and siamese draw (given per-class generators), and the model hooks use only the shared generator:
    # required to shard classes over processes (condenser.condense); False for a whole-batch objective.
    class_separable: bool

    def default_lr_img(self, ipc: int, resolution: int) -> float: ...

    def prepare_model(self, model: nn.Module, ctx: StepContext) -> None:
        """Start of an outer loop (e.g. re-initialise the network)."""
        ...

    def train_model_step(self, model: nn.Module, ctx: StepContext) -> None:
        """After each inner iteration's image update (e.g. train the network on real data)."""
        ...

    def siamese(self, real: torch.Tensor, syn: torch.Tensor, generator: Generators
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The matching augmentation: one draw per class shared by its real and synthetic images.

        `generator` may be a list with one generator per class of the batch (class-separable methods)."""
        ...

    def target(self, model: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> Any:
        """Real-side statistics of one step, shared by the base and subset terms."""
        ...

    def match(self, model: nn.Module, syn: torch.Tensor, target: Any, labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss of the (weighted) synthetic samples against `target`, summed over classes."""
        ...

    # Optional, used by the multisize wrapper when present:
    # `match_terms(model, syn, target, labels, weights: list) -> list[Tensor]`: several weighted terms
    #     from one forward pass of the synthetic batch;
    # `real_feature_mean(model, target) -> Tensor | None`: the class-mean `model.features` of the real
    #     batch if `target` already holds it, so measuring loops skip a second real forward.
    # `match_prefix(model, syn, target, labels, sizes: list[int]) -> Tensor`: `match` on the first sizes[c]
    #     samples of class c, equal to 0/1 prefix weights, without the masked samples' work.

    def loss(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor,
             label: int | torch.Tensor) -> torch.Tensor:
        """Convenience: `match(model, syn, target(model, real, labels), labels)`; one class or many."""
        ...


def as_class_batch(syn: torch.Tensor, real: torch.Tensor, label: int | torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept one class ([M, ...], [B, ...], int) or a class batch ([K, M, ...], [K, B, ...], [K])."""
    if isinstance(label, int) or (isinstance(label, torch.Tensor) and label.dim() == 0):
        labels = torch.as_tensor([int(label)], dtype=torch.int64, device=syn.device)
        return syn.unsqueeze(0), real.unsqueeze(0), labels
    return syn, real, label.to(device=syn.device, dtype=torch.int64)


MethodFactory = Callable[..., BaseMethod]
# Each method registers itself beside its class (@METHODS.register); the statistics-matching method lives in
# condenser.statmatch, which imports this package, so it is a provider the first lookup imports.
METHODS: Registry[MethodFactory] = Registry(
    "condensation method", providers=("condenser.methods.gm", "condenser.methods.dm", "condenser.statmatch.joint"))


def build_method(name: str, allow_flip: bool = True, **settings: Any) -> BaseMethod:
    """A registered method; UnknownNameError for a bad name, MethodConfigError for bad settings."""
    return METHODS.get(name)(allow_flip=allow_flip, **settings)


def draw_per_class(dsa: DSA, k: int, image_hw: tuple[int, int], generator: Generators,
                   device: torch.device) -> DSAParams:
    """K draws: from one generator at once, or draw c from generator c (the class's own stream)."""
    gens = per_class_generators(generator, k)
    if gens is None:
        return dsa.draw(k, image_hw, generator, device)
    draws = [dsa.draw(1, image_hw, g, device) for g in gens]
    return DSAParams(**{f.name: None if getattr(draws[0], f.name) is None
                        else torch.cat([getattr(d, f.name) for d in draws]) for f in fields(DSAParams)})


def siamese_per_class(dsa: DSA, real: torch.Tensor, syn: torch.Tensor,
                      generator: Generators) -> tuple[torch.Tensor, torch.Tensor]:
    """One shared augmentation draw per class over [real_c; syn_c] (DSA's siamese augmentation).

    Draws differ between classes, as in the per-class loop of the reference code, and every image
    of a class sees its class's transform. Done in ONE batched apply: K draws are expanded to the
    samples by class index, so the cost does not grow with kernel launches per class. With one
    generator per class, class c's draw comes from its own generator.
    """
    k, b, m = real.shape[0], real.shape[1], syn.shape[1]
    params = draw_per_class(dsa, k, tuple(real.shape[-2:]), generator, real.device)
    cls = torch.arange(k, device=real.device)
    index = torch.cat([cls.repeat_interleave(b), cls.repeat_interleave(m)])
    expanded = DSAParams(**{f.name: None if getattr(params, f.name) is None
                            else getattr(params, f.name).to(real.device)[index] for f in fields(DSAParams)})
    x = torch.cat([real.reshape(k * b, *real.shape[2:]), syn.reshape(k * m, *syn.shape[2:])])
    out = dsa.apply(x, expanded)
    return out[: k * b].view_as(real), out[k * b:].view_as(syn)


def weighted_class_mean(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of [K, M, ...], optionally weighted per sample by [K, M] (prefix means)."""
    if weights is None:
        return x.mean(1)
    w = weights.to(x.dtype).view(*weights.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(1) / w.sum(1).clamp_min(torch.finfo(x.dtype).tiny)
