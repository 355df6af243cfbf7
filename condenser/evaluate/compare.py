"""Per-size tables of several nested files (a condensed file and its random-real controls) under one budget.

Every cell trains on the decoded training images of its prefix (condenser/bench/cells.py read_prefix), so a
file of formation factor f and its controls are compared on what a student sees: k*f*f images per class
for the file and its random-formed control, k for the random one.

Every (file, size, label mode, seed) training is one cell of the bench (condenser/bench/cells.py), run by the
bench's worker pool (condenser/bench/workers.py: one single-threaded process per core on a CPU, where small
trainings scale poorly with threads), so the two files train side by side. Cells go to a temporary
directory: `condenser eval` recomputes its numbers on every call, as it always did.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import formats
from condenser.bench.cells import Cell, CellCache
from condenser.bench.stages import FORWARD_COST
from condenser.bench.workers import Job, auto_workers, evaluate_jobs
from condenser.data import ImageDataset
from condenser.errors import CondenserError
from condenser.evaluate.protocol import EvalResult
from condenser.evaluate.sizes import summarize
from condenser.profiles import EvalBudget

# Below this many training image-epochs (~20 s of ConvNet-D3 at ~3.75 ms each), spawning worker processes
# (each imports torch and loads the test split) costs more than it saves: `workers=None` trains in-process.
POOL_MIN_COST = 5_000


def plan_jobs(paths: Mapping[str, Path], sizes: Sequence[int], modes: Sequence[str], budget: EvalBudget) -> list[Job]:
    """One job per (file, size, mode, seed), largest sizes first (the pool then ends with short cells).

    A file without soft-label views gets no soft cells (its row shows hard labels only).
    """
    jobs = []
    for name, path in paths.items():
        with formats.open_mdc(path) as reader:
            has_views = reader.spec.views is not None
        for k in sizes:
            for mode in modes:
                if mode == "soft" and not has_views:
                    continue
                jobs += [Job(Cell(name, k, mode, s), path, f"{name}-{k}-{mode}-{s}") for s in range(budget.seeds)]
    return sorted(jobs, key=lambda job: -job.cell.size)


def cell_cost(cell: Cell, num_classes: int, budget: EvalBudget, num_test: int, factor: int = 1) -> float:
    """Relative cost of one cell, in training image-epochs (the bench's weights), for the ETA; a file of
    formation `factor` trains on factor**2 decoded images per stored one."""
    images = cell.size * num_classes * factor * factor
    return budget.epochs * images + FORWARD_COST * min(num_test, budget.max_test or num_test)


def formation_factors(paths: Mapping[str, Path]) -> dict[str, int]:
    """{file name: its formation factor} from the headers."""
    factors = {}
    for name, path in paths.items():
        with formats.open_mdc(path) as reader:
            factors[name] = reader.spec.formation_factor
    return factors


def check_classes(paths: Mapping[str, Path], test: ImageDataset) -> None:
    """Every file must label the test set's classes (a 10-class file on a 3-class dataset is a user mistake)."""
    for path in paths.values():
        with formats.open_mdc(path) as reader:
            if reader.num_classes != test.spec.num_classes:
                raise CondenserError(f"{path} has {reader.num_classes} classes but {test.spec.name} has "
                                     f"{test.spec.num_classes}")


def size_tables(records: Sequence[dict], budget: EvalBudget) -> dict[str, dict[int, dict]]:
    """{file name: {size: {"images", "stored_images", mode: summary, "train_samples"}}} from finished cell
    records; `images` counts the decoded training images a cell trained on."""
    grouped: dict[tuple[str, int, str], list[dict]] = {}
    for r in records:
        grouped.setdefault((r["method"], r["size"], r["labels"]), []).append(r)
    tables: dict[str, dict[int, dict]] = {}
    for (name, k, mode), cells in sorted(grouped.items()):
        cells.sort(key=lambda r: r["seed"])
        result = EvalResult([r["accuracy"] for r in cells], [r["seed"] for r in cells], mode, cells[0]["num_images"],
                            "convnet", asdict(budget), sum(r["wall_seconds"] for r in cells))
        row = tables.setdefault(name, {}).setdefault(k, {"images": cells[0]["num_images"],
                                                          "stored_images": cells[0]["stored_images"]})
        row[mode] = summarize(result)
        row["train_samples"] = cells[0]["num_images"] * budget.epochs  # training cost: images seen (runtime budgets)
    return {name: dict(sorted(rows.items())) for name, rows in tables.items()}


def evaluate_sets(
    paths: Mapping[str, Path],
    sizes: Sequence[int],
    modes: Sequence[str],
    budget: EvalBudget,
    test: ImageDataset,
    dataset: str,
    data_root: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    on_plan: Callable[[float], None] | None = None,
    on_cell: Callable[[Cell, dict, float], None] | None = None,
) -> dict[str, dict[int, dict]]:
    """Train every cell of every file, scored on `test` (`dataset`'s test split, which `workers` > 1 processes
    load themselves; None: one per core on a CPU unless the work is too small to pay for them).
    `on_plan(total cost)` is called once the cells are planned, `on_cell(cell, record, cost)` as each ends."""
    check_classes(paths, test)
    jobs = plan_jobs(paths, sizes, modes, budget)
    c = test.spec.num_classes
    factors = formation_factors(paths)

    def cost(cell: Cell) -> float:
        return cell_cost(cell, c, budget, len(test), factors[cell.method])

    total = sum(cost(job.cell) for job in jobs)
    if workers is None:
        workers = auto_workers(device) if total >= POOL_MIN_COST else 1
    if on_plan is not None:
        on_plan(total)
    records: list[dict] = []

    def done(job: Job, record: dict) -> None:
        records.append(record)
        if on_cell is not None:
            on_cell(job.cell, record, cost(job.cell))

    with tempfile.TemporaryDirectory(prefix="multisize-eval-") as cells:
        evaluate_jobs(jobs, test, CellCache(cells), budget, device, workers, done, dataset, data_root)
    return size_tables(records, budget)

