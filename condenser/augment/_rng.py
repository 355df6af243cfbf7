"""Random draws that are reproducible from a torch.Generator wherever the batch lives.

With a generator, numbers are drawn on the generator's device (usually CPU) and then moved to
the batch's device, so one seeded CPU generator gives the same augmentation on CPU and GPU.
Without one, they are drawn directly on the batch's device from torch's global RNG.
"""

from __future__ import annotations

import torch


def _where(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float32 [n] in [0, 1)."""
    return torch.rand(n, generator=generator, device=_where(generator, device)).to(device)


def integers(
    low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """int64 [n] in [low, high)."""
    return torch.randint(low, high, (n,), generator=generator, device=_where(generator, device)).to(device)


def permutation(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """int64 [n], a random permutation of 0..n-1."""
    return torch.randperm(n, generator=generator, device=_where(generator, device)).to(device)
