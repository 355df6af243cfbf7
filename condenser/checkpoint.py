"""Atomic, resumable checkpoints: the file at a path is either the old one or the complete new one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from condenser.errors import CheckpointError


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temp file in the same directory, fsync, rename; never a partial file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


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


def rng_state(*generators: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }


def restore_rng_state(state: dict, *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)
