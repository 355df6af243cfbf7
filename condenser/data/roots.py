"""Where dataset files are looked for, in a fixed order (README "Data"); the order itself is runtime.data's
`data_roots`, which the device's test-data lookup uses too.

Order: the explicit root (`--data-root`), `$MULTISIZE_DATA`, the user cache
(`<condenser cache>/data`: `$MULTISIZE_CACHE/data`, else `$XDG_CACHE_HOME/multisize/data`,
default `~/.cache/multisize/data`), then system paths
(`/usr/share/datasets`, where Debian's `dataset-fashion-mnist` installs). Each root is searched
for the dataset's known sub-directory names; the explicit root is also accepted as the dataset
directory itself. Downloads go to the first of explicit root, `$MULTISIZE_DATA`, user cache.
"""

from __future__ import annotations

from pathlib import Path

from condenser.paths import cache_root
from runtime import data as runtime_data
from runtime.data import DataRoot, data_roots

ENV_VAR = runtime_data.DATA_ENV

# Module-level so tests (and unusual installs) can change it; the default is the runtime's.
SYSTEM_ROOTS: list[Path] = list(runtime_data.SYSTEM_ROOTS)


def user_cache_dir() -> Path:
    """The data cache lives inside the condenser's cache (condenser.paths), so one variable moves both."""
    return cache_root().expanduser() / "data"


def base_roots(root: str | Path | None) -> list[DataRoot]:
    """Writable-in-principle roots in priority order (explicit, env, cache)."""
    return data_roots(root, user_cache_dir(), system=())


def candidate_dirs(dirnames: tuple[str, ...], root: str | Path | None) -> list[DataRoot]:
    """Every directory to search for a dataset with these sub-directory names, in order."""
    out: list[DataRoot] = []
    for base in data_roots(root, user_cache_dir(), system=SYSTEM_ROOTS):
        out.extend(DataRoot(base.path / d, base.origin) for d in dirnames)
        if base.origin == "--data-root":
            out.append(base)  # --data-root may point straight at the dataset's files
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
