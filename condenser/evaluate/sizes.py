"""Per-size evaluation of a nested .mdc: the protocol on every requested prefix, hard and soft labels.

Training always sees the decoded training images of a prefix (`read(k, formation="decoded")`, docs/format.md
§4.1): the k*f*f images per class that a multi-formation file of factor f decodes to, with their views.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

import formats
from condenser.checkpoint import atomic_write_bytes
from condenser.data import ImageDataset, load_dataset
from condenser.data.trusted import header_dataset
from condenser.errors import CondenserError
from condenser.evaluate.protocol import EvalResult, evaluate_images, evaluate_views
from condenser.profiles import EvalBudget

LABEL_MODES = ("hard", "soft")


def parse_sizes(text: str, ipc_max: int) -> list[int]:
    """'1-10', '1,2,5,10', '1-3,10' or 'all' -> sorted sizes, each checked against ipc_max."""
    if text.strip().lower() == "all":
        return list(range(1, ipc_max + 1))
    sizes: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CondenserError(f"cannot parse size {part!r}; use forms like 1-10, 1,2,5 or all")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo < 1 or hi < lo:
            raise CondenserError(f"bad size range {part!r}")
        sizes.update(range(lo, hi + 1))
    too_big = [s for s in sorted(sizes) if s > ipc_max]
    if too_big:
        raise CondenserError(f"sizes {too_big} exceed the file's ipc_max {ipc_max}")
    return sorted(sizes)


class StoredPrefixError(CondenserError, ValueError):
    """A multi-formation prefix was read as stored images, which are not what a student trains on."""


def evaluate_prefix(prefix: formats.Prefix, test_set: ImageDataset, budget: EvalBudget, labels: str,
                    seeds: Sequence[int], device: str = "auto") -> EvalResult:
    """The protocol on one prefix's training images (a factor-f prefix must be the decoded read)."""
    if prefix.formation_factor > 1 and prefix.stored_images is None:
        raise StoredPrefixError(f"the IPC-{prefix.ipc} prefix holds stored images of formation factor "
                                f"{prefix.formation_factor}; read it with formation='decoded' to train on them")
    images = torch.from_numpy(prefix.images)
    if labels == "hard":
        return evaluate_images(images, torch.from_numpy(prefix.labels), test_set, budget, seeds, device=device)
    if prefix.views is None:
        raise CondenserError("the file has no soft-label views; evaluate with --labels hard")
    return evaluate_views(images, prefix.views, test_set, budget, prefix.label_kind or "probs",
                          prefix.temperature or 1.0, seeds, device=device, labels=torch.from_numpy(prefix.labels))


def summarize(result: EvalResult) -> dict:
    return {"mean": round(result.mean, 4), "std": round(result.std, 4),
            "accuracies": [round(a, 4) for a in result.accuracies], "seeds": result.seeds,
            "wall_seconds": round(result.wall_seconds, 2)}


def evaluate_file(
    path: str | Path,
    sizes: Sequence[int],
    budget: EvalBudget,
    labels: Sequence[str] = LABEL_MODES,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    data_root: str | None = None,
    on_result: Callable[[int, str, EvalResult], None] | None = None,
    dataset: str | None = None,
) -> dict:
    """Evaluate each prefix; returns the per-size table {ipc: {label_mode: summary}} plus the protocol.

    A row's `images` are the decoded training images (k*f*f*C), `stored_images` the stored ones (k*C).

    The test split is the user's `dataset`; without one, the header's name only if it is a registered
    dataset (condenser.data.trusted: a file never picks a data path).
    """
    for mode in labels:
        if mode not in LABEL_MODES:
            raise CondenserError(f"unknown label mode {mode!r}; use hard and/or soft")
    seeds = list(seeds) if seeds is not None else list(range(budget.seeds))
    with formats.open_mdc(path) as reader:
        if dataset is None:
            dataset = header_dataset(reader.header.get("dataset"), f"the header of {path}")
        test_set = load_dataset(dataset, "test", root=data_root)
        if reader.num_classes != test_set.spec.num_classes:
            raise CondenserError(f"{path} has {reader.num_classes} classes but {dataset} has "
                                 f"{test_set.spec.num_classes}")
        table: dict[int, dict] = {}
        for k in sizes:
            prefix = reader.read(k, formation="decoded")
            row: dict = {"images": int(prefix.images.shape[0]), "stored_images": k * reader.num_classes}
            for mode in labels:
                if mode == "soft" and prefix.views is None:
                    continue
                result = evaluate_prefix(prefix, test_set, budget, mode, seeds, device)
                row[mode] = summarize(result)
                if on_result is not None:
                    on_result(k, mode, result)
            # Training cost of this size under the protocol: images seen, for runtime budgets.
            row["train_samples"] = int(prefix.images.shape[0]) * budget.epochs
            table[k] = row
    return {"sizes": table, "protocol": asdict(budget), "dataset": dataset, "arch": "convnet"}


def write_results(path: str | Path, results: dict, json_path: str | Path | None = None) -> Path:
    """Store the table in the file's header (atomic rewrite) and as JSON beside the file."""
    formats.update_header(path, {"results": {str(k): v for k, v in results["sizes"].items()},
                                 "results_protocol": results["protocol"]})
    json_path = Path(json_path) if json_path else Path(str(path) + ".results.json")
    atomic_write_bytes(json_path, json.dumps(results, indent=2).encode())
    return json_path
