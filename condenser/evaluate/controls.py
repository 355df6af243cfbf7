"""Honest controls (numbers.md §5): a random real subset of the same size, in the nested order."""

from __future__ import annotations

import torch

from condenser.data import ImageDataset


def random_real_subset(train: ImageDataset, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images per class, IPC-major (record r = i*C + c), normalised.

    Nested by construction: the IPC-k prefix of the result is the random IPC-k subset for this seed.
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = train.spec.num_classes
    per_class = [train.sample_class(c, ipc, generator=generator) for c in range(num_classes)]
    order = torch.stack(per_class, dim=1).reshape(-1)  # [ipc, C] -> IPC-major
    return train.normalized(order), train.labels[order].clone()
