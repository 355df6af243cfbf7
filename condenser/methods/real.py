"""The real training images on the condensation device, with cheap seeded class and random batches.

Images stay uint8 on the device (4x less memory than float) and are normalised per batch. All
randomness comes from an explicit CPU generator, so a resumed run draws the same batches.
"""

from __future__ import annotations

import torch

from condenser.data import ImageDataset
from condenser.methods.base import Generators, per_class_generators


class RealPool:
    """uint8 images + labels on `device`, a per-class index, and normalisation constants."""

    def __init__(self, dataset: ImageDataset, device: torch.device) -> None:
        spec = dataset.spec
        self.spec = spec
        self.num_classes = spec.num_classes
        self.device = device
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(-1, 1, 1)
        self._class_index = [dataset.class_indices(c).clone() for c in range(self.num_classes)]
        self.class_counts = [int(i.numel()) for i in self._class_index]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) / 255.0 - self.mean) / self.std

    def class_batch(self, classes: list[int], n: int, generator: Generators) -> torch.Tensor:
        """[K, n, ch, H, W] normalised: n images of each class, without replacement when the class has n.

        `generator`: one for all classes (drawn in the order of `classes`) or one per class.
        """
        gens = per_class_generators(generator, len(classes)) or [generator] * len(classes)
        picks = []
        for c, g in zip(classes, gens, strict=True):
            idx = self._class_index[c]
            if idx.numel() >= n:
                pick = torch.randperm(idx.numel(), generator=g)[:n]
            else:
                pick = torch.randint(0, idx.numel(), (n,), generator=g)
            picks.append(idx[pick])
        flat = torch.cat(picks).to(self.device, non_blocking=True)
        return self.normalize(self.images[flat]).view(len(classes), n, *self.images.shape[1:])

    def random_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n images drawn uniformly (with replacement) from the whole set, with their labels."""
        idx = torch.randint(0, len(self), (n,), generator=generator).to(self.device, non_blocking=True)
        return self.normalize(self.images[idx]), self.labels[idx]
