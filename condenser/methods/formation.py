"""IDC multi-formation: one stored image holds f x f downsampled patches, decoded to f*f training images.

Nesting unit (docs/format.md §4): the **stored image**. Decoded sample `i * f*f + k` is patch `k` (row-major)
of stored image `i`, so the IPC-n prefix is the first `n * f*f` decoded samples of a class and all
patches of stored image i belong to prefix i. The official MDC code decodes patch-major
(decoded `k * N + i`), which makes its IPC-1 prefix the top-left patches of stored images 0..f*f-1
(docs/multisize.md); we do not follow it because a device loads stored images, not patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from condenser.methods.base import MethodConfigError


def check_factor(factor: int, height: int, width: int) -> None:
    if factor < 1:
        raise MethodConfigError(f"multi-formation factor must be >= 1, got {factor}")
    if height % factor or width % factor:
        raise MethodConfigError(
            f"multi-formation factor {factor} does not divide the image size {height}x{width}")


def decode(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Stored images [..., ch, H, W] -> decoded samples [..., f*f, ch, H, W] (bilinear upsampled patches)."""
    if factor == 1:
        return x.unsqueeze(-4)
    *lead, ch, height, width = x.shape
    check_factor(factor, height, width)
    h, w = height // factor, width // factor
    patches = x.reshape(-1, ch, factor, h, factor, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, ch, h, w)
    up = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)
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
