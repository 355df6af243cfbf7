"""Run pending evaluation cells, and the independent condensation runs of Baselines A and B, in this
process or in single-threaded worker processes.

Evaluation trainings are small (10-100 images of 28x28 per batch), where torch's intra-op threads
scale poorly; independent cells in one process per core use a CPU machine fully. Each worker stores its
own cell files, so a kill loses at most the cells in flight. The same holds for the 2N condensations of
A and B: each run checkpoints into its own directory, so runs in parallel processes resume like serial
ones. On CUDA one process is the right choice.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from condenser.bench.cells import Cell, CellCache, read_prefix, run_cell
from condenser.condense import CondenseConfig, condense
from condenser.data import ImageDataset, load_dataset
from condenser.methods.selection import FeatureSource
from condenser.profiles import EvalBudget
from formats.alloc import configure_allocator


@dataclass(frozen=True)
class Job:
    cell: Cell
    path: Path  # the .mdc whose IPC-`cell.size` prefix is trained on
    key: str


def auto_workers(device: str) -> int:
    """One process per core on CPU (at most 8); one on CUDA."""
    from condenser.device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def worker_threads(workers: int) -> int:
    """Intra-op threads of each of `workers` processes: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextmanager
def serial_stage_threads(workers: int) -> Iterator[None]:
    """Give a stage that runs in this process alone (the teacher, a single condensation, relabelling) the cores
    the workers would use. With OMP_NUM_THREADS=1 and 2 workers the bench's teacher trained on one core while
    the other idled, 17 of 152 minutes (docs/RESULTS.md "The whole bench with every prefix at weight 9").
    One worker keeps the process's own setting: `--workers 1` is how a user leaves cores to other work."""
    before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(before, workers * worker_threads(workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate(job: Job, test: ImageDataset, cache: CellCache, budget: EvalBudget, device: str) -> dict:
    record = run_cell(job.cell, read_prefix(job.path, job.cell.size), job.key, test, budget, device)
    cache.store(job.cell, record)
    return record


_WORKER: dict = {}


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Pool workers outlive a killed parent (SIGTERM/SIGKILL skip the pool's shutdown); poll and leave."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _init_worker(dataset: str, data_root: str | None, cache_root: str, threads: int, parent: int) -> None:
    _exit_with_parent(parent)
    configure_allocator()  # spawned: a fresh interpreter, no settings from the parent's entry point
    torch.set_num_threads(threads)
    os.environ.setdefault("MULTISIZE_QUIET", "1")
    _WORKER.update(test=load_dataset(dataset, "test", root=data_root), cache=CellCache(cache_root))


def _worker_job(job: Job, budget: EvalBudget, device: str) -> dict:
    return _evaluate(job, _WORKER["test"], _WORKER["cache"], budget, device)


def evaluate_jobs(
    jobs: Sequence[Job],
    test: ImageDataset,
    cache: CellCache,
    budget: EvalBudget,
    device: str,
    workers: int,
    on_done: Callable[[Job, dict], None],
    dataset: str = "fashion-mnist",
    data_root: str | None = None,
) -> None:
    """Evaluate every job, calling `on_done(job, record)` in the main process as each one finishes.

    An exception from `on_done` (or an interrupt) cancels the jobs not yet started and propagates.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, _evaluate(job, test, cache, budget, device))
        return
    initargs = (dataset, data_root, str(cache.root), worker_threads(workers), os.getpid())
    _run_in_pool(workers, _init_worker, initargs,
                 [(job, _worker_job, (job, budget, device)) for job in jobs], on_done)


def _run_in_pool(workers: int, initializer: Callable, initargs: tuple,
                 tasks: Sequence[tuple[Any, Callable, tuple]], on_done: Callable[[Any, Any], None]) -> None:
    """Run `fn(*args)` for every (key, fn, args) in spawned processes; `on_done(key, result)` as each ends.

    An exception from a task or from `on_done` (or an interrupt) cancels the tasks not yet started.
    """
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs)
    try:
        pending: dict[Future, Any] = {pool.submit(fn, *args): key for key, fn, args in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                on_done(pending.pop(fut), fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _condense_run(dataset: str, data_root: str | None, cfg: CondenseConfig, run_dir: Path,
                  features: FeatureSource | None) -> float:
    train = load_dataset(dataset, "train", root=data_root)
    return condense(cfg, train, run_dir, progress=False, features=features).timings.get("elapsed_s", 0.0)


def _init_condense_worker(threads: int, parent: int) -> None:
    _exit_with_parent(parent)
    configure_allocator()
    torch.set_num_threads(threads)
    os.environ.setdefault("MULTISIZE_QUIET", "1")


def condense_runs(
    runs: Sequence[tuple[Path, CondenseConfig]],
    dataset: str,
    data_root: str | None,
    workers: int,
    on_done: Callable[[Path, float], None] = lambda _path, _seconds: None,
    features: FeatureSource | None = None,
) -> None:
    """Condense every (run directory, config) in `workers` processes, largest first; finished runs return at
    once (condense() resumes from the checkpoint). The caller then reads them back with condense() too.
    `features` (the selection inits' network) is pickled to every worker."""
    order = sorted(runs, key=lambda r: -r[1].ipc)
    _run_in_pool(workers, _init_condense_worker, (worker_threads(workers), os.getpid()),
                 [(run_dir, _condense_run, (dataset, data_root, cfg, run_dir, features)) for run_dir, cfg in order],
                 on_done)
