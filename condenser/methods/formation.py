"""IDC multi-formation: one stored image holds f x f downsampled patches, decoded to f*f training images.

Nesting unit (docs/format.md §4): the **stored image**. Decoded sample `i * f*f + k` is patch `k` (row-major)
of stored image `i`, so the IPC-n prefix is the first `n * f*f` decoded samples of a class and all
patches of stored image i belong to prefix i. The official MDC code decodes patch-major
(decoded `k * N + i`), which makes its IPC-1 prefix the top-left patches of stored images 0..f*f-1
(docs/multisize.md); we do not follow it because a device loads stored images, not patches.

The decode is the container's (docs/format.md §4.1): the same 2-tap bilinear arithmetic as torch's
F.interpolate(mode="bilinear", align_corners=False) (within 1e-6), written out so that it equals the
numpy reference (formats/formation.py) bit for bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from condenser.methods.base import MethodConfigError
from formats.formation import upsample_weights


def check_factor(factor: int, height: int, width: int) -> None:
    if factor < 1:
        raise MethodConfigError(f"multi-formation factor must be >= 1, got {factor}")
    if height % factor or width % factor:
        raise MethodConfigError(
            f"multi-formation factor {factor} does not divide the image size {height}x{width}")


def _weights(small: int, out: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The format's 2-tap resize weights (formats.formation.upsample_weights) on `like`'s device and dtype."""
    return _device_weights(small, out, like.device, like.dtype)


@functools.lru_cache(maxsize=64)
def _device_weights(small: int, out: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    # Cached per device: a condensation step decodes every stored image, and fresh tensors would be a
    # host-to-device copy per step on a GPU. Callers only read them.
    i0, i1, w0, w1 = upsample_weights(small, out)
    idx = [torch.tensor(i, device=device) for i in (i0, i1)]  # copies: the cached arrays are read-only
    return (*idx, *(torch.tensor(w, device=device).to(dtype) for w in (w0, w1)))


def upsample(patches: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[..., h, w] -> [..., H, W]: formats.formation.upsample in torch, the same products and sums in the same
    order, so both give the same bits (docs/format.md §4.1); differentiable."""
    c0, c1, cw0, cw1 = _weights(patches.shape[-1], out_hw[1], patches)
    r0, r1, rw0, rw1 = _weights(patches.shape[-2], out_hw[0], patches)
    cols = patches.index_select(-1, c0) * cw0 + patches.index_select(-1, c1) * cw1
    return cols.index_select(-2, r0) * rw0[:, None] + cols.index_select(-2, r1) * rw1[:, None]


def decode(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Stored images [..., ch, H, W] -> decoded samples [..., f*f, ch, H, W] (patch p upsampled to H x W).

    The format's decode rule (docs/format.md §4.1), so relabelling and the device see the same images.
    """
    if factor == 1:
        return x.unsqueeze(-4)
    *lead, ch, height, width = x.shape
    check_factor(factor, height, width)
    h, w = height // factor, width // factor
    patches = x.reshape(-1, ch, factor, h, factor, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, ch, h, w)
    up = upsample(patches, (height, width))
    return up.reshape(*lead, factor * factor, ch, height, width)


def encode(samples: torch.Tensor, factor: int) -> torch.Tensor:
    """Full-size images [..., f*f, ch, H, W] -> stored images [..., ch, H, W] (area-downsampled, tiled).

    Used to initialise multi-formation images from real ones (IDC's "mix" init): patch k of the
    stored image is real image k of its group.
    """
    if factor == 1:
        return samples.squeeze(-4)
    *lead, ff, ch, height, width = samples.shape
    if ff != factor * factor:
        raise MethodConfigError(f"encode expects {factor * factor} images per stored image, got {ff}")
    check_factor(factor, height, width)
    h, w = height // factor, width // factor
    small = F.interpolate(samples.reshape(-1, ch, height, width), size=(h, w), mode="area")
    small = small.reshape(-1, factor, factor, ch, h, w).permute(0, 3, 1, 4, 2, 5)
    return small.reshape(*lead, ch, height, width)
