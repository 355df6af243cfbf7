"""Device selection: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from condenser.errors import CondenserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CondenserError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA where supported; None (full precision) elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
