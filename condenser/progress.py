"""Progress for every long job: rich bars on a terminal, plain timestamped lines in a log.

`progress_bar()` is the one entry point the pipeline calls (teacher, condense, recover, bench, eval).
On a terminal it is a rich Progress on stderr; when stderr is a file or pipe (nohup, CI, Slurm) it is a
`PlainProgress` with the same methods, printing a line at each stage boundary and at most every
~15 s (runtime/progress.py: the interval, its environment variable and the line format). `--quiet`
(`set_quiet`) or `$MULTISIZE_QUIET` silences both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from runtime.progress import LineReporter, env_quiet

T = TypeVar("T")
_quiet = {"on": False}


def set_quiet(on: bool) -> None:
    """Silence (or restore) every bar and progress line of this process (the CLI's --quiet)."""
    _quiet["on"] = bool(on)


def quiet_requested() -> bool:
    """--quiet was given: it also silences the commands' step messages (condenser/cli/options.py `log`)."""
    return _quiet["on"]


def is_quiet() -> bool:
    """No bars or progress lines: --quiet, or `$MULTISIZE_QUIET` (tests, worker processes, ranks > 0)."""
    return _quiet["on"] or env_quiet()


class PlainProgress:
    """The part of rich's Progress API the pipeline uses, reported as plain lines (runtime.progress)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._lines = LineReporter()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to draw: lines are printed as the tasks move."""

    def stop(self) -> None:
        self._lines.close()

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: float = 0,
                 **fields: Any) -> TaskID:
        return TaskID(self._lines.add(description, total=total, completed=completed))

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self._lines.update(task_id, advance=advance)

    def update(self, task_id: TaskID, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        self._lines.update(task_id, completed=completed, advance=advance or 0, description=description, total=total)


def _rich_progress(transient: bool, disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
        disable=disable,
    )


def progress_bar(transient: bool = False) -> Progress | PlainProgress:
    """A rich Progress on a terminal, a PlainProgress otherwise, a disabled Progress when quiet."""
    if is_quiet():
        return _rich_progress(transient, disable=True)
    if sys.stderr.isatty():
        return _rich_progress(transient, disable=False)
    return PlainProgress()


def track(items: Sequence[T] | Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items`, advancing one task by one per item (a loop's progress in one call)."""
    if total is None and isinstance(items, Sequence):
        total = len(items)
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def stage(description: str) -> Iterator[None]:
    """A single long step (exporting the trainer): a line when it starts and when it ends."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=1)
        yield
        bar.update(task, completed=1)
