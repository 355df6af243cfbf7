"""Fresh parameters from a seed in numpy, so the onnx backend can train several seeds without torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def init_params(names: Sequence[str], stored: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """PyTorch's default Conv/Linear init, drawn with numpy.

    Every weight with >= 2 dims gets U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)),
    the bias of the same module the same bound; other tensors (norm affine parameters) keep their
    stored values (ones/zeros). The numbers differ from torch's RNG stream; the distribution is the same.
    """
    rng = np.random.default_rng(seed)
    fan_in: dict[str, int] = {}
    for name, p in zip(names, stored, strict=True):
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and p.ndim >= 2:
            fan_in[module] = int(np.prod(p.shape[1:]))
    out = []
    for name, p in zip(names, stored, strict=True):
        module, _, leaf = name.rpartition(".")
        if module in fan_in and (p.ndim >= 2 or leaf == "bias"):
            bound = 1.0 / np.sqrt(fan_in[module])
            out.append(rng.uniform(-bound, bound, size=p.shape).astype(np.float32))
        else:
            out.append(np.array(p, dtype=np.float32, copy=True))
    return out


__all__ = ["init_params"]
