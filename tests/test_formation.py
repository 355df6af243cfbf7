"""The multi-formation decode rule (docs/format.md §4.1): numpy and torch give the same bits, and both match
torch's F.interpolate; the patch order and the decoded-record order are the ones the spec states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from condenser.methods.formation import decode, encode
from formats.formation import (
    decode_images,
    split_patches,
    stored_record,
    to_decoded_order,
    to_stored_order,
    upsample,
    upsample_weights,
)
from runtime.views import apply_views

SHAPES = [(1, 12, 12), (3, 6, 18), (1, 36, 24)]  # divisible by 2 and 3


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(n, *shape)).astype(np.float32)


def _interpolated(x: torch.Tensor, f: int) -> torch.Tensor:
    """The IDC decode as torch writes it: patches through F.interpolate (bilinear, align_corners=False)."""
    n, ch, height, width = x.shape
    h, w = height // f, width // f
    patches = x.reshape(n, ch, f, h, f, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, ch, h, w)
    up = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)
    return up.reshape(n, f * f, ch, height, width)


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_and_torch_decode_bit_for_bit(factor: int, shape: tuple[int, int, int]) -> None:
    x = _images(5, shape, seed=factor)
    ours = decode(torch.from_numpy(x), factor).numpy()
    np.testing.assert_array_equal(ours, decode_images(x, factor))
    assert ours.dtype == np.float32 and ours.shape == (5, factor * factor, *shape)


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_decode_matches_f_interpolate(factor: int, shape: tuple[int, int, int]) -> None:
    x = torch.from_numpy(_images(4, shape, seed=10 + factor)).clamp(-1, 1)
    diff = (decode(x, factor) - _interpolated(x, factor)).abs().max().item()
    assert diff <= 1e-6


def test_decode_of_a_constant_patch_is_that_constant_and_the_ramp_follows_the_spec() -> None:
    """A 2x2 patch upsampled to 4x4: source rows/columns 0, 0.25, 0.75, 1.25 (clamped to the last one)."""
    i0, i1, w0, w1 = upsample_weights(2, 4)
    np.testing.assert_array_equal(i0, [0, 0, 0, 1])
    np.testing.assert_array_equal(i1, [1, 1, 1, 1])
    np.testing.assert_array_equal(w1, np.float32([0.0, 0.25, 0.75, 0.25]))
    np.testing.assert_array_equal(w0, np.float32([1.0, 0.75, 0.25, 0.75]))
    ramp = upsample(np.float32([[0.0, 1.0], [0.0, 1.0]]), (4, 4))
    np.testing.assert_array_equal(ramp, np.tile(np.float32([0.0, 0.25, 0.75, 1.0]), (4, 1)))
    np.testing.assert_array_equal(upsample(np.full((3, 3), 0.7, np.float32), (9, 9)), np.full((9, 9), 0.7, np.float32))


def test_patch_order_is_row_major() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    patches = split_patches(x, 2)[0, :, 0]  # [4 patches, 2, 2]
    np.testing.assert_array_equal(patches[1], [[2, 3], [6, 7]])  # patch p = 1: row 0, column 1
    np.testing.assert_array_equal(patches[2], [[8, 9], [12, 13]])  # patch p = 2: row 1, column 0


@pytest.mark.parametrize("factor", [2, 3])
def test_decode_is_the_plain_view_of_each_patch(factor: int) -> None:
    """§4.1 = view step 1 with the patch as the crop box: runtime/views.py renders the same bits."""
    x = _images(2, (3, 12, 18), seed=4)
    h, w = 12 // factor, 18 // factor
    boxes = np.array([[p // factor * h, p % factor * w, h, w] for p in range(factor * factor)], np.float32)
    records = np.repeat(np.arange(2), factor * factor)
    views = apply_views(x, records, np.tile(boxes, (2, 1)), np.zeros(len(records), bool),
                        np.full(len(records), -1), np.zeros((len(records), 4), np.float32))
    np.testing.assert_array_equal(views.reshape(2, factor * factor, 3, 12, 18), decode_images(x, factor))


def test_factor_one_is_the_identity() -> None:
    x = _images(3, (1, 6, 6))
    np.testing.assert_array_equal(decode_images(x, 1)[:, 0], x)
    t = torch.from_numpy(x)
    assert torch.equal(decode(t, 1)[:, 0], t) and torch.equal(encode(decode(t, 1), 1), t)


def test_decode_is_differentiable_for_condensation() -> None:
    x = torch.from_numpy(_images(2, (1, 6, 6))).requires_grad_(True)
    decode(x, 3).sum().backward()
    # every output pixel's two row weights and two column weights sum to 1: the total gradient is H*W per patch
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.sum().item(), 2 * 9 * 36, rtol=1e-5)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_decoded_record_order(factor: int) -> None:
    """Decoded record d = (i*f*f + p)*C + c comes from stored record i*C + c, patch p."""
    c, k, ff = 3, 2, factor * factor
    tags = np.array([[(r, p) for p in range(ff)] for r in range(k * c)])  # [k*C, f*f, 2]
    decoded = to_decoded_order(tags, c)
    d = np.arange(k * ff * c)
    i, p, cls = d // (ff * c), d // c % ff, d % c
    np.testing.assert_array_equal(decoded[:, 0], i * c + cls)
    np.testing.assert_array_equal(decoded[:, 1], p)
    np.testing.assert_array_equal(stored_record(d, c, factor), i * c + cls)
    np.testing.assert_array_equal(to_stored_order(decoded, c, factor), tags)


def test_decode_weights_are_built_once_per_device_and_dtype():
    from condenser.methods.formation import _weights

    x = torch.zeros(2, 1, 28, 28)
    first, again = _weights(14, 28, x), _weights(14, 28, x)
    assert all(a is b for a, b in zip(first, again, strict=True))  # no new tensors (no host-to-device copy) per step
    assert _weights(14, 28, x.double())[2].dtype == torch.float64
