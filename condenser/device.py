"""Device selection: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from condenser.errors import CondenserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CondenserError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: CUDA with bf16, or a CPU with AMX or AVX512-BF16.
    Elsewhere oneDNN emulates bf16 through float32, slower than float32 itself."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "flags:")
    return frozenset(line.partition(":")[2].split())


PRECISIONS = ("fp32", "bf16", "auto")  # a training step's arithmetic (condenser.training.autocast)


def resolve_precision(precision: str, device: torch.device) -> str:
    """A training step's arithmetic on `device`: `auto` is bf16 where the hardware has it (native_bf16), else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision
