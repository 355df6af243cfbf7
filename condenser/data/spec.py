"""What a dataset is, independent of where its files live: classes, shape, normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset; everything a model or a packed .mdc file needs to know."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    allow_flip: bool  # False for digits (mnist, svhn): a flipped digit is another symbol

    def __post_init__(self) -> None:
        c = self.image_shape[0]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{self.name}: mean/std need {c} entries (one per channel)")


def _stats(spec: DatasetSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (-1, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(shape)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(shape)
    return mean, std


def normalize(x_uint8: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 `(x/255 - mean)/std`, the space training and synthesis work in."""
    mean, std = _stats(spec, x_uint8)
    return (x_uint8.to(torch.float32) / 255.0 - mean) / std


def denormalize_to_uint8(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Inverse of `normalize`, rounded and clamped, for saving or viewing synthetic images."""
    mean, std = _stats(spec, x)
    pixels = (x.detach().to(torch.float32) * std + mean) * 255.0
    return pixels.round().clamp_(0, 255).to(torch.uint8)
