"""Evaluation cells: one (method, size, label mode, seed) training, cached as one atomic JSON file.

A cell trains on the decoded training images of its prefix (`read(k, formation="decoded")`, docs/format.md
§4.1): k*f*f per class for a multi-formation file of factor f, with the views of those decoded images. A
cell's key hashes that exact prefix (pixels, labels and, for soft labels, the views), the test set it is
scored on (its fingerprint) and the evaluation budget, so a resumed benchmark skips finished cells and never
reuses a result computed on different data or under a different protocol. (A factor-1 prefix decodes to
itself, so its key is the one the stored read gave.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import formats
from condenser.checkpoint import atomic_write_bytes, config_hash
from condenser.config.tree import EvalBudget
from condenser.data import ImageDataset
from condenser.evaluate.sizes import evaluate_prefix


@dataclass(frozen=True)
class Cell:
    method: str
    size: int
    labels: str  # hard | soft
    seed: int

    @property
    def relpath(self) -> Path:
        return Path(self.method) / self.labels / f"ipc{self.size}-seed{self.seed}.json"


def read_prefix(path: Path, size: int) -> formats.Prefix:
    """The IPC-`size` prefix of `path` as training images: decoded, so a factor-f file gives k*f*f per class."""
    with formats.open_mdc(path) as reader:
        return reader.read(size, formation="decoded")


def prefix_digest(prefix: formats.Prefix, labels: str) -> str:
    """sha256 of what a training on this prefix sees: pixels and labels, plus the views for soft labels."""
    h = hashlib.sha256()
    arrays: list[np.ndarray] = [prefix.images, prefix.labels]
    if labels == "soft" and prefix.views is not None:
        v = prefix.views
        arrays += [v.crop, v.flip, v.mix_partner, v.mix_box, v.mix_lam, v.targets]
        h.update(f"{prefix.label_kind}|{prefix.temperature}".encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def cell_key(cell: Cell, prefix: formats.Prefix, budget: EvalBudget, test: str, arch: str = "convnet") -> str:
    """The cache key of one cell; `test` is the test set's fingerprint (ImageDataset.fingerprint)."""
    return config_hash({"cell": asdict(cell), "data": prefix_digest(prefix, cell.labels), "test": test,
                        "budget": asdict(budget), "arch": arch})


class CellCache:
    """Finished cells under `root`, one JSON per cell, written atomically (a kill leaves no half cell)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, cell: Cell) -> Path:
        return self.root / cell.relpath

    def load(self, cell: Cell, key: str) -> dict | None:
        """The stored record, or None when absent, unreadable or computed for another key."""
        try:
            record = json.loads(self.path(cell).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def store(self, cell: Cell, record: dict) -> None:
        atomic_write_bytes(self.path(cell), json.dumps(record, indent=1).encode())


def run_cell(cell: Cell, prefix: formats.Prefix, key: str, test_set: ImageDataset, budget: EvalBudget,
             device: str = "auto") -> dict:
    """Train once under the pinned protocol on this (decoded) prefix; the record the cache stores.

    `num_images` counts the training images the network saw (decoded), `stored_images` what the file stores.
    """
    result = evaluate_prefix(prefix, test_set, budget, cell.labels, [cell.seed], device)
    return {**asdict(cell), "accuracy": result.accuracies[0], "wall_seconds": round(result.wall_seconds, 3),
            "num_images": result.num_images, "stored_images": stored_count(prefix),
            "formation_factor": prefix.formation_factor, "key": key}


def stored_count(prefix: formats.Prefix) -> int:
    """Stored images of a prefix, decoded or not (a decoded read keeps them in `stored_images`)."""
    stored = prefix.stored_images if prefix.stored_images is not None else prefix.images
    return int(stored.shape[0])
