"""Where dataset files are looked for, in a fixed order (README "Data").

Order: the explicit root (`--data-root`), `$MULTISIZE_DATA`, the user cache
(`<condenser cache>/data`: `$MULTISIZE_CACHE/data`, else `$XDG_CACHE_HOME/multisize/data`,
default `~/.cache/multisize/data`), then system paths
(`/usr/share/datasets`, where Debian's `dataset-fashion-mnist` installs). Each root is searched
for the dataset's known sub-directory names; the explicit root is also accepted as the dataset
directory itself. Downloads go to the first of explicit root, `$MULTISIZE_DATA`, user cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from condenser.paths import cache_root

ENV_VAR = "MULTISIZE_DATA"

# Module-level so tests (and unusual installs) can change it.
SYSTEM_ROOTS: list[Path] = [Path("/usr/share/datasets")]


@dataclass(frozen=True)
class Candidate:
    """One directory that was (or will be) searched, and why it was on the list."""

    path: Path
    origin: str  # "--data-root", "$MULTISIZE_DATA", "user cache", "system"


def user_cache_dir() -> Path:
    """The data cache lives inside the condenser's cache (condenser.paths), so one variable moves both."""
    return cache_root().expanduser() / "data"


def base_roots(root: str | Path | None) -> list[Candidate]:
    """Writable-in-principle roots in priority order (explicit, env, cache)."""
    bases: list[Candidate] = []
    if root is not None:
        bases.append(Candidate(Path(root).expanduser(), "--data-root"))
    env = os.environ.get(ENV_VAR)
    if env:
        bases.append(Candidate(Path(env).expanduser(), f"${ENV_VAR}"))
    bases.append(Candidate(user_cache_dir(), "user cache"))
    return bases


def candidate_dirs(dirnames: tuple[str, ...], root: str | Path | None) -> list[Candidate]:
    """Every directory to search for a dataset with these sub-directory names, in order."""
    out: list[Candidate] = []
    for base in base_roots(root):
        out.extend(Candidate(base.path / d, base.origin) for d in dirnames)
        if base.origin == "--data-root":
            out.append(base)  # --data-root may point straight at the dataset's files
    for sys_root in SYSTEM_ROOTS:
        out.extend(Candidate(Path(sys_root) / d, "system") for d in dirnames)
    seen: set[Path] = set()
    unique = []
    for c in out:
        if c.path not in seen:
            seen.add(c.path)
            unique.append(c)
    return unique


def download_root(root: str | Path | None) -> Path:
    """Where a download goes: the first of explicit root, $MULTISIZE_DATA, user cache."""
    return base_roots(root)[0].path
