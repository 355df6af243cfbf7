"""The one supervised training loop, shared by teacher training and the evaluation protocol.

A `BatchSource` turns a batch of sample indices into (inputs, target probabilities); everything that
differs between uses (augmentation, CutMix, soft-label views, uint8 -> normalised) lives there, so the
loop itself is written once. Targets are always probability rows (hard labels are one-hot), which makes
hard, mixed and soft labels one code path: soft cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from runtime.torch_losses import soft_cross_entropy


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class TensorSource:
    """Images held in memory (uint8 or normalised float) with probability targets.

    `augment` maps a normalised batch to an augmented one (per-sample DSA); CutMix mixes inputs and
    targets inside the batch with probability `cutmix_p`.
    """

    images: torch.Tensor
    targets: torch.Tensor
    mean: torch.Tensor | None = None  # needed when images are uint8
    std: torch.Tensor | None = None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    cutmix: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx]
        if x.dtype == torch.uint8:
            x = (x.float() / 255.0 - self.mean) / self.std
        y = self.targets[idx]
        if self.augment is not None:
            x = self.augment(x, generator)
        if self.cutmix is not None:
            x, y = self.cutmix(x, y, generator)
        return x, y


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The forward pass's arithmetic: nothing for fp32; bf16 autocast keeps parameters and gradients in float32."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; known: fp32, bf16")


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).float()


def train_epoch(
    model: nn.Module,
    source: BatchSource,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    step_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_step: Callable[[], None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = soft_cross_entropy,
    precision: str = "fp32",
) -> float:
    """One pass over `source` in a random order; returns the mean loss (one host sync per epoch).

    `step_scheduler` is stepped after every batch (one-cycle style); epoch schedulers are the caller's.
    `loss_fn(logits, targets)` defaults to soft cross-entropy (see condenser.evaluate.losses for others).
    `precision` bf16 runs the forward under autocast; the loss is taken on float32 logits either way.
    """
    model.train()
    n = len(source)
    order = torch.randperm(n, generator=generator)
    total = torch.zeros((), device=device)
    steps = 0
    for start in range(0, n, batch_size):
        x, y = source.batch(order[start : start + batch_size], generator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        total += loss.detach()
        steps += 1
        if on_step is not None:
            on_step()  # progress only: no host sync here
    return float(total) / max(steps, 1)


@torch.no_grad()
@torch.no_grad()
def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> float:
    """Top-1 accuracy in percent; uint8 images are normalised per batch with mean/std."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        if x.dtype == torch.uint8:
            x = (x.float() / 255.0 - mean) / std
        pred = model(x.to(device)).argmax(dim=-1)
        correct += (pred == labels[start : start + batch_size].to(device)).sum()
    return 100.0 * float(correct) / max(images.shape[0], 1)


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
