"""Atomic file replacement: a reader of the target path sees the old file or the new one, never a part.

The one writer helper of the project (formats, runtime and condenser all call it). A temp file is
`.<target name>.<random>.tmp` in the target's directory, created by `tempfile.mkstemp` (O_EXCL, so an
attacker's symlink at a guessed name is never followed) and held under an exclusive `flock` while it is
written. A writer killed with SIGKILL leaves its temp file behind but releases the lock, which is how
`remove_stale_temps` tells a dead writer's leftover from a live writer's file; every `atomic_write` of a
target first removes the stale temp files of that target.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; staleness falls back to age
    fcntl = None  # type: ignore[assignment]

UNLOCKED_STALE_AGE_S = 3600.0  # where locks are unavailable, a temp file this old counts as abandoned
_CREATE_ATTEMPTS = 8


def _default_mode() -> int:
    """0o666 minus the process umask, read without the racy os.umask() set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _target_mode(target: Path) -> int:
    """An existing target keeps its permission bits (never setuid/setgid); a new one gets 0o666 - umask."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return _default_mode()


def _temp_name_pattern(target: Path) -> re.Pattern[str]:
    """`.<name>.<part>.tmp` with a dot-free part: mkstemp's random part never holds a dot, so the temp
    files of `a.mdc` (`.a.mdc.x1y2.tmp`) never match the pattern of a target named `a`."""
    return re.compile(rf"\.{re.escape(target.name)}\.[^./]+\.tmp")


def _old_enough(path: Path) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > UNLOCKED_STALE_AGE_S
    except OSError:
        return False


def _remove_if_stale(path: Path) -> bool:
    """Unlink `path` if no live writer holds it (its lock can be taken; without locks: it is old).

    The unlink happens while this process holds the lock, so a writer that has just created the file and
    is waiting for its own lock finds it unlinked (st_nlink 0) and starts over instead of losing its data.
    Only regular files are touched: a planted FIFO, socket, directory or symlink is left alone (and a FIFO
    is opened non-blocking, so it cannot hang the cleaner).
    """
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False  # vanished meanwhile, or not ours to open
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live writer
            except OSError:
                if not _old_enough(path):  # the file system has no flock: judge by age
                    return False
        elif not _old_enough(path):
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)  # releases the lock, after the unlink


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files `.<name>.*.tmp` that killed writers of `path` left; return what was removed.

    A writer that is still running holds its temp file's lock, so its file is kept. Call this at the start
    of a run for each target the run will write (atomic_write also calls it for its own target).
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    pattern = _temp_name_pattern(target)
    try:
        names = [n for n in os.listdir(directory) if pattern.fullmatch(n)]
    except OSError:
        return []
    return [directory / name for name in names if _remove_if_stale(directory / name)]


def _open_locked_temp(target: Path, directory: Path) -> tuple[int, str]:
    """mkstemp next to `target`, then take its lock; retry if a cleaner unlinked it in between."""
    for _ in range(_CREATE_ATTEMPTS):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return fd, tmp  # no flock on this file system: cleaners judge by age
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)  # a concurrent remove_stale_temps took it for a dead writer's file before we locked it
    raise OSError(f"cannot create a temp file for {target}: removed {_CREATE_ATTEMPTS} times by another process")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not possible on every platform or file system."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temp file next to `path`, fsync it, then rename it over `path`.

    The temp file lives in the target's directory so the rename never crosses file systems; on any
    exception (KeyboardInterrupt included) it is removed and the target is left untouched. The result has
    the target's old permission bits, or 0o666 minus the umask for a new file (mkstemp alone gives 0o600).
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    mode = _target_mode(target)
    remove_stale_temps(target)
    fd, tmp = _open_locked_temp(target, directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(f.fileno() if os.chmod in os.supports_fd else tmp, mode)
            if fcntl is not None:
                os.replace(tmp, target)  # still under the lock: a cleaner never sees an unlocked live temp
        if fcntl is None:
            os.replace(tmp, target)  # Windows cannot rename a file that is still open
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """atomic_write of a buffer that is already in memory."""
    atomic_write(path, lambda f: f.write(data))
