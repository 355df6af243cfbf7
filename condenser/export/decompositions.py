"""The decomposition table that turns a traced train step into ops with an ONNX translation.

Core ATen decompositions cover almost every backward op; `convolution_backward` and
`avg_pool2d_backward` have none and no ONNX translation either, so they are rewritten here as
transposed convolutions and matrix products, which ONNX has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch._decomp import core_aten_decompositions

from condenser.export.errors import UnsupportedOpError

aten = torch.ops.aten


def _output_padding(in_size: Sequence[int], out_size: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """Rows/cols that a floor-mode forward dropped; a transposed conv must add them back (7 -> 3 -> 7)."""
    return [int(in_size[d]) - ((int(out_size[d]) - 1) * stride[d] - 2 * padding[d]
                               + dilation[d] * (kernel[d] - 1) + 1) for d in range(2)]


def _weight_grad_matmul(grad_out, inp, kernel, stride, padding, dilation):
    """dW[:, :, i, j] = grad_out [O, B*h*w] @ shifted input [B*h*w, C], one product per kernel offset.

    Well-shaped products on strided slices of the padded NHWC input, with no im2col matrix in
    memory; onnxruntime runs this markedly faster than the equivalent convolution (batch as
    channels, output 3x3), whose matrix product is only 9 columns wide.
    """
    b, c = inp.shape[:2]
    o, ho, wo = grad_out.shape[1:]
    x = aten.constant_pad_nd(inp, [padding[1], padding[1], padding[0], padding[0]], 0.0).permute(0, 2, 3, 1)
    go = grad_out.permute(1, 0, 2, 3).reshape(o, b * ho * wo)
    cols = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, q = i * dilation[0], j * dilation[1]
            shifted = x[:, r: r + stride[0] * (ho - 1) + 1: stride[0], q: q + stride[1] * (wo - 1) + 1: stride[1]]
            cols.append(torch.mm(go, shifted.reshape(b * ho * wo, c)))
    return torch.stack(cols, dim=-1).reshape(o, c, kernel[0], kernel[1])


def convolution_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    """Input grad = transposed conv of grad_out; weight grad = per-offset matrix products; bias grad = sum."""
    if transposed or groups != 1 or inp.dim() != 4:
        raise UnsupportedOpError("train-step export supports only 2-d, non-transposed, groups=1 convolutions")
    kernel = weight.shape[2:]
    grad_in = grad_w = grad_b = None
    if output_mask[0]:
        pad = _output_padding(inp.shape[2:], grad_out.shape[2:], kernel, stride, padding, dilation)
        grad_in = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, pad, 1)
    if output_mask[1]:
        grad_w = _weight_grad_matmul(grad_out, inp, kernel, stride, padding, dilation)
    if output_mask[2]:
        grad_b = grad_out.sum([0, 2, 3])
    return grad_in, grad_w, grad_b


def avg_pool2d_backward(grad_out, inp, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    """Spread each output gradient uniformly over its window: a depthwise transposed convolution."""
    kernel = list(kernel_size) if len(kernel_size) == 2 else [kernel_size[0]] * 2
    stride = list(stride) if len(stride) == 2 else (kernel if not stride else [stride[0]] * 2)
    padding = list(padding) if len(padding) == 2 else [padding[0]] * 2
    if any(padding) or ceil_mode or divisor_override is not None:
        raise UnsupportedOpError("train-step export supports avg_pool2d only without padding or ceil_mode")
    c = inp.shape[1]
    k = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=grad_out.dtype,
                   device=grad_out.device)
    pad = _output_padding(inp.shape[2:], grad_out.shape[2:], kernel, stride, [0, 0], [1, 1])
    return aten.convolution(grad_out, k, None, stride, [0, 0], [1, 1], True, pad, c)


def decomposition_table() -> dict[torch._ops.OperatorBase, Callable]:
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    return table
