"""Progress as plain, timestamped lines: what a log file (nohup, CI, Slurm) can hold.

A task prints a line when it starts, when it finishes, and in between at most once every
`report_interval()` seconds (15 s; `$MULTISIZE_PROGRESS_INTERVAL` overrides it, 0 = every update),
each with done/total, elapsed time and an ETA. `$MULTISIZE_QUIET` silences every line. The runtime
needs no other dependency for it; the condenser's rich bars (condenser/progress.py) fall back to it
whenever stderr is not a terminal.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from runtime.errors import ConfigError

INTERVAL_ENV = "MULTISIZE_PROGRESS_INTERVAL"
QUIET_ENV = "MULTISIZE_QUIET"
DEFAULT_INTERVAL_S = 15.0
SPEED_WINDOW_S = 300.0  # the ETA follows the speed of the last 5 minutes, not of the whole run


def report_interval() -> float:
    """Seconds between two lines of one task; read at every call so a test can set the variable."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"${INTERVAL_ENV}={raw!r} is not a number of seconds; unset it or use e.g. 15") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"${INTERVAL_ENV}={raw!r} must be >= 0 seconds")
    return value


def env_quiet() -> bool:
    """True when `$MULTISIZE_QUIET` is set to anything but '' or '0' (tests, worker processes, --quiet)."""
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def format_duration(seconds: float) -> str:
    """42 -> '42s', 135 -> '2m15s', 3725 -> '1h02m': short enough for a log line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class LineTask:
    """One unit of work being reported: its counts and the recent (time, done) samples for the ETA."""

    description: str
    total: float | None
    completed: float
    started: float
    samples: deque = field(default_factory=deque)
    last_line: float = -math.inf
    changed: bool = False
    finished: bool = False

    @property
    def complete(self) -> bool:
        """Done/total reached (within float rounding: bench totals are sums of fractional cell costs)."""
        return self.total is not None and self.completed >= self.total - 1e-9 * max(1.0, abs(self.total))

    def record(self, now: float) -> None:
        """Keep the samples of the last SPEED_WINDOW_S, plus the newest older one as the base."""
        self.samples.append((now, self.completed))
        while len(self.samples) > 2 and self.samples[1][0] < now - SPEED_WINDOW_S:
            self.samples.popleft()

    def eta(self) -> float | None:
        """Seconds left at the recent speed; None without a total or before any progress."""
        if self.total is None or len(self.samples) < 2:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        if c1 <= c0 or t1 <= t0:
            return None
        return max(0.0, self.total - self.completed) * (t1 - t0) / (c1 - c0)


def _progress_text(task: LineTask) -> str:
    """'120/400 (30%)' for counts; '30%' alone when the units are fractional (a cost-weighted total)."""
    if task.total is None:
        return f"{task.completed:g}"
    pct = f"{100 * task.completed / task.total:.0f}%" if task.total else "0%"
    if not (float(task.completed).is_integer() and float(task.total).is_integer()):
        return pct
    return f"{int(task.completed)}/{int(task.total)} ({pct})"


class LineReporter:
    """Plain progress lines on a stream (default: the current sys.stderr) for any number of tasks."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time) -> None:
        self._stream = stream
        self._interval = report_interval() if interval is None else interval
        self._clock, self._wallclock = clock, wallclock
        self._tasks: list[LineTask] = []

    def add(self, description: str, total: float | None = None, completed: float = 0) -> int:
        """Start a task (a stage boundary: always one line); returns its id."""
        now = self._clock()
        task = LineTask(description, total, completed, started=now)
        task.record(now)
        self._tasks.append(task)
        self._emit(task, now, "started")
        return len(self._tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, advance: float = 0,
               description: str | None = None, total: float | None = None) -> None:
        """New counts or text; prints when the task completes or the interval has passed."""
        task = self._tasks[task_id]
        if task.finished:
            return
        now = self._clock()
        if total is not None:
            task.total = total
        if description is not None and description != task.description:
            task.description, task.changed = description, True
        if advance or (completed is not None and completed != task.completed):
            task.completed = (task.completed if completed is None else completed) + advance
            task.changed = True
            task.record(now)
        if task.complete:
            self.finish(task_id)
        elif task.changed and now - task.last_line >= self._interval:
            self._emit(task, now)

    def finish(self, task_id: int) -> None:
        """End a task (a stage boundary): its last line, with the time it took; 'stopped' if it fell short."""
        task = self._tasks[task_id]
        if not task.finished:
            task.finished = True
            short = task.total is not None and not task.complete
            self._emit(task, self._clock(), "stopped" if short else "done")

    def close(self) -> None:
        """Finish every task still open (the work ended or was interrupted)."""
        for task_id in range(len(self._tasks)):
            self.finish(task_id)

    def line(self, task: LineTask, now: float, event: str | None = None) -> str:
        """'[2025-01-31 12:00:05] teacher: 120/400 (30%), 1m02s elapsed, ETA 2m25s'."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._wallclock()))
        head = f"[{stamp}] {task.description.strip()}"
        count, elapsed = _progress_text(task), format_duration(now - task.started)
        if event == "started":
            return f"{head}: started, {count}"
        if event == "done":
            return f"{head}: done, {count} in {elapsed}"
        if event == "stopped":
            return f"{head}: stopped at {count} after {elapsed}"
        eta = task.eta()
        left = "?" if eta is None else format_duration(eta)
        return f"{head}: {count}, {elapsed} elapsed, ETA {left}"

    def _emit(self, task: LineTask, now: float, event: str | None = None) -> None:
        task.last_line, task.changed = now, False
        if env_quiet():
            return
        stream = self._stream or sys.stderr
        print(self.line(task, now, event), file=stream, flush=True)


def step_reporter(description: str, reporter: LineReporter | None = None) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback (runtime.train's) whose first call starts the task."""
    lines = reporter or LineReporter()
    state: dict[str, int] = {}

    def progress(done: int, total: int) -> None:
        if "id" not in state:
            state["id"] = lines.add(description, total=total)
        lines.update(state["id"], completed=done)

    return progress


__all__ = ["DEFAULT_INTERVAL_S", "INTERVAL_ENV", "QUIET_ENV", "LineReporter", "env_quiet", "format_duration",
           "report_interval", "step_reporter"]
