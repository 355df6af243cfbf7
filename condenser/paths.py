"""Where the condenser keeps caches (teachers, runs). `$MULTISIZE_CACHE` overrides the default."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if env := os.environ.get("MULTISIZE_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "multisize"


def teacher_dir() -> Path:
    return cache_root() / "teachers"


def runs_dir() -> Path:
    return cache_root() / "runs"
