"""The decomposition table that turns a traced train step into ops with an ONNX translation.

Core ATen decompositions cover almost every backward op; `convolution_backward` and
`avg_pool2d_backward` have none and no ONNX translation either, so they are rewritten here as
convolutions (with the flipped kernel for stride 1, transposed otherwise) and matrix products, which
ONNX has. A few ops are left in the graph instead
(native_group_norm_backward, threshold_backward, non-overlapping avg_pool2d_backward): translations.py
translates them into fewer onnxruntime passes than their decompositions would take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch._decomp import core_aten_decompositions

from condenser.export.errors import UnsupportedOpError
from condenser.export.translations import matmul_pool_applies, pool_params

aten = torch.ops.aten


def _output_padding(in_size: Sequence[int], out_size: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """Rows/cols that a floor-mode forward dropped; a transposed conv must add them back (7 -> 3 -> 7)."""
    return [int(in_size[d]) - ((int(out_size[d]) - 1) * stride[d] - 2 * padding[d]
                               + dilation[d] * (kernel[d] - 1) + 1) for d in range(2)]


def _pad_hw_last(x: torch.Tensor, padding) -> torch.Tensor:
    """Zero-pad the two spatial axes of [..., H, W, C] (channels last) by `padding` (ph, pw)."""
    return aten.constant_pad_nd(x, [0, 0, padding[1], padding[1], padding[0], padding[0]], 0.0)


def _weight_grad_matmul(grad_out, inp, kernel, stride, padding, dilation):
    """dW[:, :, i, j] = grad_out [O, B*h*w] @ shifted input [B*h*w, C], one product per kernel offset.

    Well-shaped products on strided slices of the padded NHWC input, with no im2col matrix in
    memory; onnxruntime runs this markedly faster than the equivalent convolution (batch as
    channels, output 3x3), whose matrix product is only 9 columns wide. The input is transposed
    before it is padded: onnxruntime's Pad copies whole channel rows in NHWC but single image rows
    in NCHW (14x14 x 128 channels, batch 64: 1.2 + 1.0 ms -> about 0.7 ms for both).
    """
    b, c = inp.shape[:2]
    o, ho, wo = grad_out.shape[1:]
    x = _pad_hw_last(inp.permute(0, 2, 3, 1), padding)
    go = grad_out.permute(1, 0, 2, 3).reshape(o, b * ho * wo)
    cols = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, q = i * dilation[0], j * dilation[1]
            shifted = x[:, r: r + stride[0] * (ho - 1) + 1: stride[0], q: q + stride[1] * (wo - 1) + 1: stride[1]]
            cols.append(torch.mm(go, shifted.reshape(b * ho * wo, c)))
    return torch.stack(cols, dim=-1).reshape(o, c, kernel[0], kernel[1])


# Below this many im2col columns (C_in * kh * kw) the weight gradient is one batched product with the
# im2col matrix (first layers: C_in = 1 or 3); above it, per-offset products (no im2col in memory).
NARROW_COLUMNS = 64


def im2col(x: torch.Tensor, kernel, stride, padding, dilation, out_hw) -> torch.Tensor:
    """[N, C * kh * kw, ho * wo], rows ordered (c, i, j) like a conv weight viewed as [O, C * kh * kw]."""
    b, c = x.shape[:2]
    ho, wo = out_hw
    xp = aten.constant_pad_nd(x, [padding[1], padding[1], padding[0], padding[0]], 0.0)
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, q = i * dilation[0], j * dilation[1]
            taps.append(xp[:, :, r: r + stride[0] * (ho - 1) + 1: stride[0],
                           q: q + stride[1] * (wo - 1) + 1: stride[1]])
    return torch.stack(taps, dim=2).reshape(b, c * len(taps), ho * wo)


def _weight_grad_narrow(grad_out, inp, kernel, stride, padding, dilation, with_bias: bool):
    """(dW, db) = sum over samples of grad_out[n] [O, h*w] @ [im2col(inp[n]) | 1] [h*w, C*kh*kw (+1)].

    For a narrow input the im2col matrix is small, grad_out is read once in its own NCHW layout (no
    transpose of the largest tensor of the step), and the column of ones yields the bias gradient.
    """
    b = inp.shape[0]
    o, ho, wo = grad_out.shape[1:]
    cols = im2col(inp, kernel, stride, padding, dilation, (ho, wo))
    k = cols.shape[1]
    if with_bias:
        cols = torch.cat([cols, torch.ones(b, 1, ho * wo, dtype=cols.dtype, device=cols.device)], dim=1)
    prod = torch.bmm(grad_out.reshape(b, o, ho * wo), cols.permute(0, 2, 1)).sum(0)  # [O, K (+1)]
    return prod[:, :k].reshape(o, inp.shape[1], kernel[0], kernel[1]), (prod[:, -1] if with_bias else None)


def _weight_grad_grouped(grad_out, inp, kernel, stride, padding, dilation, groups: int):
    """dW[g] = grad_out[g] [O/g, B*h*w] @ shifted input[g] [B*h*w, C/g] per group, one batched product per
    kernel offset. Like `_weight_grad_matmul`, the padded input is transposed once (to [G, B, H, W, C/g])
    and each offset is a strided slice of it; a depthwise conv (C/g = O/g = 1) makes each product a batch
    of per-channel dot products."""
    b, c = inp.shape[:2]
    o, ho, wo = grad_out.shape[1:]
    cg, og = c // groups, o // groups
    x = _pad_hw_last(inp.reshape(b, groups, cg, inp.shape[2], inp.shape[3]).permute(1, 0, 3, 4, 2), padding)
    go = grad_out.reshape(b, groups, og, ho * wo).permute(1, 2, 0, 3).reshape(groups, og, b * ho * wo)
    cols = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, q = i * dilation[0], j * dilation[1]
            shifted = x[:, :, r: r + stride[0] * (ho - 1) + 1: stride[0], q: q + stride[1] * (wo - 1) + 1: stride[1]]
            cols.append(torch.bmm(go, shifted.reshape(groups, b * ho * wo, cg)))
    return torch.stack(cols, dim=-1).reshape(o, cg, kernel[0], kernel[1])


def _input_grad(grad_out, inp, weight, stride, padding, dilation, groups: int):
    """dx of a convolution: for stride 1 (one group), the convolution of grad_out with the kernel flipped
    and transposed to [C_in, C_out, kh, kw], padded by dilation * (k - 1) - padding, which onnxruntime
    runs faster than the transposed convolution (14x14 and 7x7 x 128 channels, batch 64: about 5 %
    less); else the transposed convolution itself."""
    kernel = weight.shape[2:]
    flipped_pad = [dilation[d] * (kernel[d] - 1) - padding[d] for d in range(2)]
    if groups == 1 and all(s == 1 for s in stride) and min(flipped_pad) >= 0:
        flipped = weight.flip([2, 3]).transpose(0, 1)
        return aten.convolution(grad_out, flipped, None, [1, 1], flipped_pad, dilation, False, [0, 0], 1)
    pad = _output_padding(inp.shape[2:], grad_out.shape[2:], kernel, stride, padding, dilation)
    return aten.convolution(grad_out, weight, None, stride, padding, dilation, True, pad, groups)


def convolution_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    """Input grad = `_input_grad` of grad_out; weight grad = per-offset matrix products (or one batched
    im2col product for narrow inputs; per group for grouped convs); bias grad = sum."""
    if transposed or inp.dim() != 4:
        raise UnsupportedOpError("train-step export supports only 2-d, non-transposed convolutions")
    kernel = weight.shape[2:]
    grad_in = grad_w = grad_b = None
    if output_mask[0]:
        grad_in = _input_grad(grad_out, inp, weight, stride, padding, dilation, groups)
    if output_mask[1] and groups != 1:
        grad_w = _weight_grad_grouped(grad_out, inp, kernel, stride, padding, dilation, groups)
    elif output_mask[1] and inp.shape[1] * kernel[0] * kernel[1] <= NARROW_COLUMNS:
        grad_w, grad_b = _weight_grad_narrow(grad_out, inp, kernel, stride, padding, dilation, bool(output_mask[2]))
    elif output_mask[1]:
        grad_w = _weight_grad_matmul(grad_out, inp, kernel, stride, padding, dilation)
    if output_mask[2] and grad_b is None:
        grad_b = grad_out.sum([0, 2, 3])
    return grad_in, grad_w, grad_b


def avg_pool2d_backward(grad_out, inp, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    """Spread each output gradient uniformly over its window: a depthwise transposed convolution.

    Non-overlapping windows stay in the graph for translations.avg_pool2d_backward (one matrix product).
    """
    if matmul_pool_applies(kernel_size, stride, padding, ceil_mode, divisor_override):
        return NotImplemented
    kernel, stride, padding = pool_params(kernel_size, stride, padding)
    if any(padding) or ceil_mode or divisor_override is not None:
        raise UnsupportedOpError("train-step export supports avg_pool2d only without padding or ceil_mode")
    c = inp.shape[1]
    k = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=grad_out.dtype,
                   device=grad_out.device)
    pad = _output_padding(inp.shape[2:], grad_out.shape[2:], kernel, stride, [0, 0], [1, 1])
    return aten.convolution(grad_out, k, None, stride, [0, 0], [1, 1], True, pad, c)


def _adaptive_kernel(in_hw: Sequence[int], out_hw: Sequence[int]) -> list[int]:
    """The window of an adaptive average pool whose windows tile the input (sizes divisible), else refused."""
    if any(int(i) % int(o) for i, o in zip(in_hw, out_hw, strict=True)):
        raise UnsupportedOpError(f"adaptive_avg_pool2d from {tuple(in_hw)} to {tuple(out_hw)}: the export "
                                 "supports output sizes that divide the input size")
    return [int(i) // int(o) for i, o in zip(in_hw, out_hw, strict=True)]


def adaptive_avg_pool2d(x, output_size):
    """An average pool with window = stride = input / output size (translations.avg_pool2d: one product)."""
    kernel = _adaptive_kernel(x.shape[2:], output_size)
    return aten.avg_pool2d(x, kernel, kernel)


def adaptive_avg_pool2d_backward(grad_out, x):
    kernel = _adaptive_kernel(x.shape[2:], grad_out.shape[2:])
    return aten.avg_pool2d_backward(grad_out, x, kernel, kernel, [0, 0], False, True, None)


# Kept in the traced graph: translations.py gives them ONNX translations with fewer passes.
_TRANSLATED = (aten.native_group_norm_backward.default, aten.threshold_backward.default)


def decomposition_table() -> dict[torch._ops.OperatorBase, Callable]:
    table = {op: fn for op, fn in core_aten_decompositions().items() if op not in _TRANSLATED}
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    table[aten._adaptive_avg_pool2d.default] = adaptive_avg_pool2d
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    return table


def first_pass_table() -> dict[torch._ops.OperatorBase, Callable]:
    """The table of the first trace: convolution_backward stays whole so fusions.py can match it."""
    return {op: fn for op, fn in decomposition_table().items() if op is not aten.convolution_backward.default}
