"""The pieces of a train step that the traced device graph and the torch backend share: the loss chosen at
export, seeded dropout, and swapping a module's forward for the length of one call.

Both sides call these same functions, so an onnx and a torch run of one bundle compute the same losses
(docs/trainer.md). Importing this module imports torch: `import runtime` never does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from runtime.bundle import LossConfig
from runtime.torch_losses import soft_cross_entropy

# nn.Dropout only: Dropout1d/2d/3d drop whole channels and AlphaDropout rescales differently.
DROPOUT_TYPES = (nn.Dropout,)
BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
BATCH_NORM_STATE = ("running_mean", "running_var")


def _weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.sum()


def kl_divergence(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    """T^2 * KL(targets || softmax(logits / T)) per sample, weighted: the distillation loss of SRe2L (section
    3.3) and DD-Ranking, with `targets` the teacher's probabilities at temperature T."""
    log_q = torch.log_softmax(logits / temperature, dim=-1)
    per_sample = (torch.xlogy(targets, targets) - targets * log_q).sum(dim=-1) * (temperature * temperature)
    return _weighted_mean(per_sample, weights)


def hard_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """-log_softmax(logits)[y]: y = `targets` when they are class indices, else the argmax of each row."""
    labels = targets if not targets.is_floating_point() else targets.argmax(dim=-1)
    per_sample = -torch.log_softmax(logits, dim=-1).gather(-1, labels.reshape(-1, 1)).reshape(-1)
    return _weighted_mean(per_sample, weights)


def student_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                 loss: LossConfig) -> torch.Tensor:
    """The loss a trainer bundle was exported with (runtime.bundle.LossConfig)."""
    if loss.name == "soft_cross_entropy":
        return soft_cross_entropy(logits, targets, weights)
    if loss.name == "kl_divergence":
        return kl_divergence(logits, targets, weights, loss.temperature)
    return hard_cross_entropy(logits, targets, weights)


def seeded_dropout(x: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with the randomness given: keep x where noise >= p, scaled by 1 / (1 - p) (as nn.Dropout)."""
    return x * (noise >= p).to(x.dtype) * (1.0 / (1.0 - p))


def dropout_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's nn.Dropout modules that drop anything (p > 0), in named_modules order: the order of the
    bundle's noise inputs and of the runtime's noise streams."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0]


def state_buffers(model: nn.Module) -> list[str]:
    """Names of the buffers a train step carries as state: every BatchNorm's running mean and variance,
    in module order (num_batches_tracked only matters with momentum=None, which the export refuses)."""
    return [f"{name}.{b}" if name else b for name, m in model.named_modules() if isinstance(m, BATCH_NORM_TYPES)
            for b in BATCH_NORM_STATE]


@contextmanager
def forwards_replaced(replacements: dict[nn.Module, Callable[..., torch.Tensor]]) -> Iterator[None]:
    """Call `replacements[m]` instead of m.forward while the block runs (an instance attribute, removed after)."""
    for module, fn in replacements.items():
        module.forward = fn
    try:
        yield
    finally:
        for module in replacements:
            del module.forward


__all__ = ["BATCH_NORM_STATE", "BATCH_NORM_TYPES", "DROPOUT_TYPES", "dropout_modules", "forwards_replaced",
           "hard_cross_entropy", "kl_divergence", "seeded_dropout", "state_buffers", "student_loss"]
