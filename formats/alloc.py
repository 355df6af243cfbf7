"""glibc malloc settings for compute processes: keep large blocks on the heap, never trim it.

glibc serves an allocation above its mmap threshold (dynamic, capped at 32 MiB on 64-bit) with a fresh
mmap and unmaps it on free. A condensation step allocates the same large activations every iteration (a dm
step's 640-image real forward alone is 1.1 GiB of temporaries, 250 MB per layer), so every step faulted
those pages in again: 42 % of a dm step was kernel time (`benchmarks/bench_hotpaths.py --no-alloc-tuning`
prints that share). Raising the threshold cannot help (its cap is below one activation), so mmap is switched off
(M_MMAP_MAX = 0) and the heap top is never returned (M_TRIM_THRESHOLD = -1, "disables trimming completely"
in mallopt(3)); the next step reuses the freed blocks. The cost: a process keeps its peak heap until it
exits, a peak that the condenser and the bench workers reach on every step anyway.

Called by the condenser entry points (`condenser`, `python -m condenser`) and its spawned workers, not by
`python -m runtime`: a device training step allocates nothing that large (onnxruntime has its own arena,
batches are under 1 MB), and measured no faster, while its peak RSS grew by up to 28 MB (15 %). Lives in
formats, the lowest layer, so that any entry point can call it without importing torch. A no-op off glibc,
and a no-op when the user set any glibc malloc variable (MALLOC_*_ or GLIBC_TUNABLES with glibc.malloc.*):
an explicit setting wins, and is the way to opt out.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable, Mapping

# mallopt(3) parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_MMAP_MAX", M_MMAP_MAX, 0),  # large blocks come from the heap, so freed pages are reused
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, -1),  # never give the heap top back (and fault it in again)
)
USER_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def user_configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment already sets glibc malloc parameters (then they are left alone)."""
    return any(v in environ for v in USER_VARIABLES) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None on another C library or platform."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def configure_allocator(environ: Mapping[str, str] | None = None,
                        mallopt: Callable[[int, int], int] | None = None) -> bool:
    """Apply SETTINGS once per process; True when glibc accepted all of them (False: left as it was).

    `environ` and `mallopt` are for tests; by default the process environment and glibc's mallopt.
    """
    global _applied
    if _applied is not None and environ is None and mallopt is None:
        return _applied
    env = os.environ if environ is None else environ
    fn = mallopt if mallopt is not None else _glibc_mallopt()
    ok = fn is not None and not user_configured(env)
    if ok:
        ok = all([fn(param, value) == 1 for _, param, value in SETTINGS])  # mallopt returns 1 on success
    if environ is None and mallopt is None:
        _applied = ok
    return ok
