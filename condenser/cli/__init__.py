"""The `condenser` command line. Each sub-command lives in its own module and registers on `app`.

Command modules import heavy libraries (torch) inside their functions, so `condenser info` and
`condenser --help` stay fast and torch-free.
"""

from __future__ import annotations

from condenser.cli import (  # noqa: F401  (importing registers the commands)
    baseline,
    bench,
    build,
    eval,
    export,
    info,
    show,
    teacher,
)
from condenser.cli.app import app
from formats.alloc import configure_allocator


def main() -> None:
    configure_allocator()  # before any large allocation: see formats/alloc.py
    app()


__all__ = ["app", "main"]
