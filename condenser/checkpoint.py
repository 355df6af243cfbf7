"""Atomic torch/safetensors writes and safe loads: the file at a path is the old one or the complete new one.

The checkpoint/resume mechanism built on these (identity, RNG state, `Interrupted`) is condenser.resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from condenser.errors import CheckpointError
from formats import atomic


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """formats.atomic.atomic_write_bytes, creating the parent directory first (caches, run dirs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write_bytes(path, data)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save straight into formats.atomic's temp file (parent directory created first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written through formats.atomic (safetensors' own save_file opens the path itself)."""
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def safe_torch_load(path: str | Path) -> Any:
    """Load a checkpoint with `weights_only=True` (no pickle code execution)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def config_hash(config: dict) -> str:
    """Stable short hash of a JSON-able config: a checkpoint only resumes the run it came from."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

