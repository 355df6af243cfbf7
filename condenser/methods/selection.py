"""Nested selection of real images: which real images a condensation starts from, in which order.

A nested file's IPC-k prefix must be a good set for every k, so a selection is an *order* per class, not
a set. Two orders, both on a feature extractor's embeddings (the teacher's, `embed` below):

- `herding`: greedy, each next image brings the prefix's mean feature closest to the class mean
  (Welling 2009; the decoupled methods' nested order, condenser/statmatch/order.py). Prefix 1 is the most
  typical image, later ones correct what the prefix misses.
- `kmeans`: k-means (k = the images needed) on the class's features, the real image nearest each centre,
  then herding among those (the multisize paper's official code starts from k-means centres of real
  features, DREAM-style; herding makes the chosen set nested).

A candidate pool of `pool` random real images per class (seeded) bounds the cost on large classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from condenser.data import ImageDataset
from condenser.methods.base import MethodConfigError

Embedder = Callable[[torch.Tensor], torch.Tensor]  # normalised images [n, ch, H, W] -> features [n, D]
SELECTIONS = ("herding", "kmeans")


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """model.embed (or the logits for models without one) in eval mode, on the model's device, float32."""
    device = next(model.parameters()).device
    fn = getattr(model, "embed", model)
    model.eval()
    return torch.cat([fn(x[s:s + batch_size].to(device)).float() for s in range(0, x.shape[0], batch_size)])


@dataclass(frozen=True)
class FeatureSource:
    """The network a selection embeds with, and its identity: a run started from a selection is keyed by it,
    so a different teacher never resumes another teacher's run."""

    model: nn.Module
    identity: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.model, x)


def class_pool(dataset: ImageDataset, c: int, pool: int, generator: torch.Generator) -> torch.Tensor:
    """Up to `pool` random dataset indices of class `c`, ascending (the order carries no information)."""
    idx = dataset.class_indices(c)
    if pool >= idx.numel():
        return idx
    return idx[torch.randperm(idx.numel(), generator=generator)[:pool]].sort().values


def herding_order(features: torch.Tensor, means: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """features [C, N, D], means [C, D] -> [C, steps or N]: per class, the first image indices in herding order."""
    c, n, _ = features.shape
    rows = torch.arange(c, device=features.device)
    total = torch.zeros_like(means)
    taken = torch.zeros(c, n, dtype=torch.bool, device=features.device)
    order = []
    for k in range(1, (n if steps is None else min(steps, n)) + 1):
        dist = (((total[:, None] + features) / k - means[:, None]) ** 2).sum(-1)  # [C, N]
        pick = dist.masked_fill(taken, float("inf")).argmin(1)
        order.append(pick)
        taken[rows, pick] = True
        total = total + features[rows, pick]
    return torch.stack(order, 1)


def herd_pool(features: torch.Tensor, n: int) -> torch.Tensor:
    """[P, D] features of one class -> the first `n` positions in herding order toward their mean."""
    return herding_order(features[None], features.mean(0, keepdim=True), steps=n)[0]


def kmeans_centres(features: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 30) -> torch.Tensor:
    """Lloyd's k-means on [P, D] (k-means++ seeding); returns the positions of the points nearest each centre.

    Positions are distinct: a centre whose nearest point is already taken gets its next nearest.
    """
    p = features.shape[0]
    if k >= p:
        return torch.arange(p)
    centres = features[torch.randint(p, (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: next centre drawn proportional to squared distance
        d2 = torch.cdist(features, centres).min(1).values.square()
        centres = torch.cat([centres, features[torch.multinomial(d2 / d2.sum(), 1, generator=generator)]])
    for _ in range(iterations):
        assign = torch.cdist(features, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, features)
        counts = torch.bincount(assign, minlength=k).to(features.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    order = torch.cdist(centres, features).argsort(1)  # [k, P] nearest first
    chosen: list[int] = []
    for row in order.tolist():
        chosen.append(next(i for i in row if i not in chosen))
    return torch.tensor(chosen)


def select_class(features: torch.Tensor, n: int, how: str, generator: torch.Generator) -> torch.Tensor:
    """Positions (into `features` [P, D]) of `n` images of one class, in nested order."""
    if how == "herding":
        return herd_pool(features, n)
    if how == "kmeans":
        centres = kmeans_centres(features, n, generator)
        return centres[herd_pool(features[centres], n)]
    raise MethodConfigError(f"unknown selection {how!r}; known: {', '.join(SELECTIONS)}")


@torch.no_grad()
def select_indices(dataset: ImageDataset, n: int, how: str, embedder: Embedder, pool: int = 2000,
                   generator: torch.Generator | None = None, classes: list[int] | None = None) -> torch.Tensor:
    """Dataset indices [C, n] of `n` selected real images per class, each row in nested order."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    classes = list(range(dataset.spec.num_classes)) if classes is None else classes
    rows = []
    for c in classes:
        idx = class_pool(dataset, c, pool, generator)
        if idx.numel() < n:
            raise MethodConfigError(f"class {c} of {dataset.spec.name!r} has {idx.numel()} images; "
                                    f"selecting {n} needs at least that many")
        features = embedder(dataset.normalized(idx)).float().cpu()
        rows.append(idx[select_class(features, n, how, generator)])
    return torch.stack(rows)
