"""`condenser bench`: sets of every method -> every (method, size, labels, seed) cell -> report.

Every stage is cached under the output directory, so a killed benchmark rerun with the same command
continues where it stopped:
- condensation runs checkpoint in `runs/<hash of config and training data>/` (condense() resumes them);
- each method's packed file(s) in `sets/` carry a `bench_key` in their provenance and are reused when the
  key matches (the condensation is not even reloaded);
- each evaluation cell is one atomic JSON in `cells/`, keyed by the exact prefix, budget and test data.
Cells train on the decoded images of a prefix (condenser/bench/cells.py): with condense.factor f > 1 every
condensed method and random-formed train on k*f*f images per class, random on its k real ones.
The report (results.json, results.md, results.png) is rewritten after each method's cells, so a partial
run already shows what it has.
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import formats
from condenser.bench.cells import Cell, CellCache, cell_key, read_prefix
from condenser.bench.config import METHODS, BenchConfig, default_methods, method_factor
from condenser.bench.report import per_size_table, summary, write_report
from condenser.bench.sets import (
    MethodFiles,
    expected_files,
    files_carry_key,
    method_sets,
    teacher_summary,
    write_sized_sets,
)
from condenser.bench.workers import Job, auto_workers, evaluate_jobs, serial_stage_threads
from condenser.build import BuildConfig, environment, get_teacher, needs_teacher, selection_features
from condenser.checkpoint import config_hash
from condenser.condense import run_config_key
from condenser.config import differences
from condenser.config.tree import Config
from condenser.data import ImageDataset, load_dataset
from condenser.device import resolve_device, resolve_precision
from condenser.evaluate.controls import CONTROL_METHOD, FORMED_CONTROL_METHOD
from condenser.evaluate.sizes import LABEL_MODES
from condenser.methods.selection import FeatureSource
from condenser.profiles import get_profile
from condenser.teacher import Teacher

# Execution order: the headline comparison (MDC vs C) and the control first, the N-run baselines last,
# so a run cut short has the most useful rows. The report keeps the table order of METHODS. Within a method the
# largest sizes go first, so the workers drain on small cells (a formed IPC-10 cell is ~10x an IPC-1 one).
EXECUTION_ORDER = ("mdc", "C", CONTROL_METHOD, FORMED_CONTROL_METHOD, "B", "A")
FORWARD_COST = 0.55  # a test-image forward (~1.9 ms) relative to a training image-epoch (~3.5 ms), for the ETA


@dataclass
class BenchOutput:
    results: dict
    paths: dict[str, Path]
    computed_cells: int


def condensation_runs(method: str, ipc: int) -> int:
    return {"A": ipc, "B": ipc, CONTROL_METHOD: 0, FORMED_CONTROL_METHOD: 0}.get(method, 1)


def _nested_bars_supported() -> bool:
    """rich >= 14.1 nests live displays; older versions raise LiveError for a bar inside a bar."""
    try:
        major, minor = (int(p) for p in importlib.metadata.version("rich").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (14, 1)


def bench_command(cfg: BenchConfig) -> str:
    """A command line that reproduces `cfg`: every setting that differs from the profile's bench tree is a --set."""
    parts = ["condenser", "bench", "--dataset", cfg.dataset, "--ipc", str(cfg.ipc), "--profile", cfg.profile]
    if tuple(cfg.methods) != default_methods(cfg.factor):
        parts += ["--methods", ",".join(cfg.methods)]
    if tuple(cfg.labels) != LABEL_MODES:
        parts += ["--labels", ",".join(cfg.labels)]
    changed = differences(cfg.settings, get_profile(cfg.profile).benched())
    for key, value in changed.items():
        parts += ["--set", f"{key}={json.dumps(value)}"]
    return shlex.join(parts)


@dataclass
class _Context:
    cfg: BenchConfig
    profile: Config  # the tree every method runs with (the bench overlay in place)
    build: BuildConfig
    train: ImageDataset
    test: ImageDataset
    teacher: Teacher | None
    out: Path

    @property
    def views(self) -> int:
        return self.profile.relabel.views

    def set_key(self, method: str) -> str:
        """Identity of a method's packed files: everything that changes their content, not the device."""
        if method in (CONTROL_METHOD, FORMED_CONTROL_METHOD):  # drawn, not condensed: only the factor matters
            ccfg = {"factor": method_factor(method, self.cfg.factor)} if method == FORMED_CONTROL_METHOD else None
        else:
            ccfg = asdict(replace(self.build.condense_config(self.profile), device=""))
        teacher = teacher_summary(self.teacher)
        tree = self.profile.as_dict()
        return config_hash({
            "method": method, "dataset": self.cfg.dataset, "data": self.train.fingerprint, "ipc": self.cfg.ipc,
            "seed": self.cfg.seed, "condense": ccfg, "relabel": tree["relabel"], "pack": tree["pack"],
            "soft_labels": self.build.soft_labels,
            "teacher": teacher and (teacher["config"], teacher["test_accuracy"]),
        })

    def set_path(self, method: str) -> Path:
        return self.out / "sets" / (method if method == "A" else f"{method}.mdc")

    def run_dir(self, features: FeatureSource | None = None) -> Path:
        ccfg = replace(self.build.condense_config(self.profile).with_subset(False), device="")
        key = {"condense": run_config_key(ccfg, features), "data": self.train.fingerprint}
        return self.out / "runs" / config_hash(key)


def _prepare(cfg: BenchConfig, log: Callable[[str], None]) -> _Context:
    build = cfg.build_config()
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root)
    teacher = get_teacher(build, log) if needs_teacher(build, build.condense_config(build.settings)) else None
    # sets and cells are keyed and reported by the arithmetic they ran, never by `auto`
    device, tree = resolve_device(cfg.device), build.settings
    settings = tree.updated({"evaluate.precision": resolve_precision(tree.evaluate.precision, device),
                             "condense.precision": resolve_precision(tree.condense.precision, device)})
    return _Context(cfg, settings, build, train, test, teacher, cfg.out_dir)


def _ensure_sets(ctx: _Context, method: str, progress: bool, log: Callable[[str], None]) -> tuple[MethodFiles, bool]:
    """The method's packed files: reused when their bench_key matches, else condensed (resuming) and packed."""
    key = ctx.set_key(method)
    files = expected_files(method, ctx.cfg.ipc, ctx.set_path(method))
    if files_carry_key(files, key):
        return files, False
    workers = ctx.cfg.workers or auto_workers(ctx.cfg.device)
    features = selection_features(ctx.build.condense_config(ctx.profile), ctx.teacher)
    sets = method_sets(method, ctx.build, ctx.profile, ctx.train, ctx.run_dir(features), progress=progress,
                       workers=workers, log=log, features=features)
    return write_sized_sets(sets, ctx.set_path(method), ctx.build, ctx.profile, ctx.train, ctx.teacher,
                            {"bench_key": key}, log=log), True


def condense_seconds(files: MethodFiles) -> float:
    """Condensation compute recorded in the files (summed over resumes; A: over its per-size files). A run
    shared with another method (A's IPC-1 and IPC-N runs) counts for both."""
    total = 0.0
    for path in set(files.paths.values()):
        with formats.open_mdc(path) as reader:
            prov = reader.header.get("provenance", {})
        total += prov.get("timings", {}).get("elapsed_s", 0.0) if "size" in prov else prov.get("elapsed_s", 0.0)
    return total


def cell_weight(ctx: _Context, cell: Cell) -> float:
    """Relative cost of one cell: training image steps (decoded images) plus the test pass (for the ETA)."""
    budget = ctx.profile.evaluate
    n_test = budget.max_test or len(ctx.test)
    images = cell.size * ctx.train.spec.num_classes * method_factor(cell.method, ctx.cfg.factor) ** 2
    return budget.epochs * images + FORWARD_COST * n_test


def collect_results(ctx: _Context, files: dict[str, MethodFiles], records: list[dict], seconds: dict,
                    command: str) -> dict:
    cfg, budget = ctx.cfg, ctx.profile.evaluate
    sizes = list(range(1, cfg.ipc + 1))
    seeds = list(range(budget.seeds))
    methods = [m for m in METHODS if m in cfg.methods]
    table = per_size_table(records, methods, cfg.labels, sizes, seeds)
    finished = sum(len(row) for by_label in table.values() for row in by_label.values())
    return {
        "dataset": cfg.dataset, "ipc": cfg.ipc, "profile": cfg.profile, "sizes": sizes, "methods": methods,
        "formation_factor": cfg.factor,
        "labels": list(cfg.labels), "seeds": seeds, "table": table, "summary": summary(table, sizes),
        "complete": finished == len(methods) * len(cfg.labels) * len(sizes),
        "budgets": {"evaluate": asdict(budget), "views": ctx.views,
                    "condense_config": asdict(ctx.build.condense_config(ctx.profile))},
        "settings": ctx.profile.as_dict(),
        "teacher": teacher_summary(ctx.teacher),
        "teacher_accuracy": ctx.teacher.test_accuracy if ctx.teacher is not None else None,
        "files": {m: {str(n): str(p) for n, p in f.paths.items()} for m, f in files.items()},
        "seconds": seconds, "command": command, "bench": cfg.as_dict(), "environment": environment(),
        "cells": records,
    }


def run_bench(
    cfg: BenchConfig,
    log: Callable[[str], None] = print,
    progress: bool = True,
    command: str | None = None,
    on_cell: Callable[[Cell, dict], None] | None = None,
) -> BenchOutput:
    """Run (or resume) the whole benchmark and write its report; `on_cell(cell, record)` follows each cell."""
    started = time.time()
    workers = cfg.workers or auto_workers(cfg.device)
    with serial_stage_threads(workers):
        ctx = _prepare(cfg, log)
    command = command or bench_command(cfg)
    order = [m for m in EXECUTION_ORDER if m in cfg.methods]
    budget = ctx.profile.evaluate
    seeds = list(range(budget.seeds))
    sizes = list(range(1, cfg.ipc + 1))
    cells = [Cell(m, n, lab, s) for m in order for lab in cfg.labels for n in reversed(sizes) for s in seeds]
    cache = CellCache(ctx.out / "cells")
    files: dict[str, MethodFiles] = {}
    records: list[dict] = []
    seconds: dict = {"condense": 0.0, "evaluate": 0.0, "wall": 0.0, "condense_by_method": {}}
    computed = 0

    from condenser.progress import progress_bar

    bar = progress_bar() if progress else None
    with bar if bar is not None else nullcontext():
        runs_total = sum(condensation_runs(m, cfg.ipc) for m in order)
        t_sets = bar.add_task("condense", total=runs_total) if bar else None
        t_eval = bar.add_task("evaluate", total=sum(cell_weight(ctx, c) for c in cells)) if bar else None
        nested = progress and _nested_bars_supported()
        for m in order:  # stage 1: every method's sets (condensation runs are the long part)
            if bar:
                bar.update(t_sets, description=f"condense {m} ({condensation_runs(m, cfg.ipc)} runs)")
            with serial_stage_threads(workers):  # A's and B's runs go to single-threaded workers inside
                files[m], built = _ensure_sets(ctx, m, nested, log)
            seconds["condense_by_method"][m] = round(condense_seconds(files[m]), 1)
            seconds["condense"] += seconds["condense_by_method"][m]
            if bar:
                bar.advance(t_sets, condensation_runs(m, cfg.ipc))
            log(f"{m}: {'condensed and packed' if built else 'cached'} -> {ctx.set_path(m)}")
        remaining = Counter(c.method for c in cells)
        jobs: list[Job] = []

        def finished(cell: Cell, record: dict, fresh: bool) -> None:
            nonlocal computed
            records.append(record)
            computed += fresh
            seconds["evaluate"] += record["wall_seconds"]
            if bar:  # the bar counts training image-epochs (a cell's cost); the text counts cells
                bar.update(t_eval, description=f"evaluate {len(records)}/{len(cells)} cells (last: {cell.method} "
                                               f"{cell.labels} IPC {cell.size} seed {cell.seed})")
                bar.advance(t_eval, cell_weight(ctx, cell))
            if on_cell is not None:
                on_cell(cell, record)
            remaining[cell.method] -= 1
            if remaining[cell.method] == 0 and fresh:  # an interim report after each method's cells
                seconds["wall"] = time.time() - started
                write_report(collect_results(ctx, files, records, seconds, command), ctx.out)

        for cell in cells:  # stage 2: evaluation cells, cached ones first
            path = files[cell.method].paths[cell.size]
            key = cell_key(cell, read_prefix(path, cell.size), budget, ctx.test.fingerprint)
            record = cache.load(cell, key)
            if record is None:
                jobs.append(Job(cell, path, key))
            else:
                finished(cell, record, False)
        if jobs:
            log(f"evaluating {len(jobs)} cells ({len(cells) - len(jobs)} cached) with {workers} process(es)")
        evaluate_jobs(jobs, ctx.test, cache, budget, cfg.device, workers,
                      lambda job, record: finished(job.cell, record, True), cfg.dataset, cfg.data_root)
    seconds["wall"] = time.time() - started
    results = collect_results(ctx, files, records, seconds, command)
    paths = write_report(results, ctx.out)
    log(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']} ({computed} cells computed, "
        f"{len(cells) - computed} from cache, {seconds['wall']:.0f} s)")
    return BenchOutput(results=results, paths=paths, computed_cells=computed)

