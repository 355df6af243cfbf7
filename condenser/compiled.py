"""Opt-in torch.compile of a training network, with inductor's caches under the multisize cache.

Measured on ConvNet-D3 evaluation training (docs/RESULTS.md, "Hot paths against the CPU's peak"): inductor
fuses each block's norm, ReLU and pooling (forward and backward) into one pass around the convolutions,
which stay oneDNN's, so a step takes 9-12 % less CPU once compiled. It is opt-in because the fused kernels
sum in another order: parameters agree with eager within float tolerance, not bit for bit, and eager stays
the reference whose accuracies the results report. A cold compile costs about 30 CPU-s per batch shape;
the on-disk cache makes a later process's compile about 2 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from condenser.paths import cache_root

COMPILE_ENV = "MULTISIZE_COMPILE"
RECOMPILE_LIMIT = 64  # batch shapes one process compiles before dynamo falls back to eager
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class CompileSettingError(ValueError):
    """$MULTISIZE_COMPILE holds something other than a yes or a no."""


def compile_requested(flag: bool | None = None) -> bool:
    """`flag` when given; otherwise whether $MULTISIZE_COMPILE says yes (1/true/yes/on; unset, 0, false: no)."""
    if flag is not None:
        return bool(flag)
    value = os.environ.get(COMPILE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CompileSettingError(f"{COMPILE_ENV} must be 1/true/yes/on or 0/false/no/off, got "
                              f"{os.environ[COMPILE_ENV]!r}")


def inductor_cache_dir() -> Path:
    """Where compiled kernels persist between processes (a dataset-independent cache of the machine)."""
    return cache_root() / "inductor"


def use_multisize_cache() -> None:
    """Point TORCHINDUCTOR_CACHE_DIR at inductor_cache_dir() unless the user chose a directory.

    Importing torch._dynamo already sets the variable to torch's default (a per-user directory under /tmp,
    which a reboot empties), so that value counts as unset; inductor reads the variable on every lookup.
    """
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch layout: leave torch's choice alone
        return
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, "", default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())


def compiled(model: nn.Module) -> nn.Module:
    """`model` compiled by inductor for training, its kernels cached under the multisize cache; the result
    shares its parameters, so training it trains `model`. One static graph per batch shape (an IPC-10
    cell's 64 and 36), not a slower dynamic one."""
    use_multisize_cache()
    # a bench worker meets every size's last-batch shape (IPC 1..10 at factor 2: 9 shapes); past dynamo's
    # recompile limit (8) it would silently train the rest eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(model, dynamic=False)


__all__ = ["COMPILE_ENV", "CompileSettingError", "compile_requested", "compiled", "inductor_cache_dir",
           "use_multisize_cache"]
