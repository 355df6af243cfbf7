"""Rich progress bars with the columns every long job shows: what, how far, how fast, ETA."""

from __future__ import annotations

import os
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress; silent when `MULTISIZE_QUIET` is set (tests) or stderr is not a terminal."""
    disable = bool(os.environ.get("MULTISIZE_QUIET")) or not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
        disable=disable,
    )
