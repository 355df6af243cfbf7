"""ONNX translations, written for onnxruntime's CPU kernels, of the ops that dominate a train step.

onnxruntime runs each node as its own pass over memory and fuses no chains of elementwise nodes,
so what costs time in a decomposed backward is the number of full-size tensors written. These
translations replace the generic ones (or the core-ATen decompositions) with the fewest passes:

- group norm forward: one BatchNormalization in training mode on the [1, N*G, -1] view yields the
  normalized output and the per-(sample, group) mean and variance in one kernel;
- group norm backward: two per-row reductions (sum dy, sum dy*x), then dx = k*dy + s*x + t with
  per-row k, s, t, the affine part as one inference-mode BatchNormalization;
- ReLU backward: grad * mask with the mask from one HardSigmoid (no bool tensor, no Where);
- chained slices (x[:, a:b, c:d]): one Slice node instead of two full copies;
- non-overlapping average pooling and its backward: one matrix product with a constant pooling
  matrix per pair of (pooled) rows, instead of AveragePool (and its layout reorders) and a
  depthwise transposed convolution.

Passed to torch.onnx.export as `custom_translation_table`; decompositions.py leaves these ops
in the traced graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from onnxscript import ir
from onnxscript.onnx_opset import opset18 as op

from condenser.export.errors import UnsupportedOpError

aten = torch.ops.aten

# HardSigmoid(x; alpha) = clip(alpha * x, 0, 1) is 0 for x <= 0 and 1 for x >= 1 / alpha (3.3e-39, below
# the smallest normal float32): only a positive subnormal ReLU input would get a fractional mask.
_MASK_ALPHA = 3.0e38
_INT64_MAX = 2**63 - 1


def _ints(values: Sequence[int]):
    return op.Constant(value_ints=[int(v) for v in values])


def _floats(array: np.ndarray):
    return op.Constant(value=ir.tensor(np.ascontiguousarray(array, dtype=np.float32)))


def _filled(value: float, n: int):
    """[n] float32 of one value, built by the graph (Expand of a scalar) rather than stored in it: a
    per-row constant of a batch of 64 x 128 channels was 32 KB of the file, the Expand is a few bytes
    (onnxruntime folds it once, at session load)."""
    return op.Expand(_floats(np.array(value)), _ints([n]))


def _dims(value) -> list[int]:
    dims = [d if isinstance(d, int) else None for d in value.shape]
    if None in dims:
        raise UnsupportedOpError(f"train-step export needs static shapes, got {value.shape}")
    return dims


def _per_row(v, n: int, c: int):
    """[C] parameter -> [N*C] (one value per (sample, channel) row)."""
    return op.Reshape(op.Expand(op.Unsqueeze(v, _ints([0])), _ints([n, c])), _ints([n * c]))


# Running-statistics inputs already given out in the graph being exported (see _batch_norm_train).
_running_inputs = itertools.count()


def reset_running_inputs() -> None:
    """Start a new graph: its running-statistics fills count from 0 again (reproducible graph bytes)."""
    global _running_inputs
    _running_inputs = itertools.count()


def _batch_norm_train(x, scale, shift, rows: int, eps: float):
    """(y, mean, biased var) of each row of x [1, rows, L] in one kernel.

    With momentum 0 the 'running' outputs are the batch statistics and the running inputs only get
    multiplied by 0. onnxruntime may write those outputs in place into the running inputs, so every
    node needs running inputs of its own, shared with no other node and no scale or shift: onnxruntime
    merges equal constants and then equal Expand nodes, so each node's fills get values that no other
    filled tensor of the graph has (0.5 + k and 2 + k for the k-th node; the other fills are 0 and 1).
    """
    k = next(_running_inputs)
    running_mean, running_var = _filled(0.5 + k, rows), _filled(2.0 + k, rows)
    return op.BatchNormalization(x, scale, shift, running_mean, running_var, epsilon=eps, momentum=0.0,
                                 training_mode=1)


def native_group_norm(input, weight, bias, N: int, C: int, HxW: int, group: int, eps: float):
    """(out, mean [N, G], rstd [N, G]): training-mode BatchNormalization on the [1, N*G, -1] view."""
    rows = N * group
    x = op.Reshape(input, _ints([1, rows, -1]))
    if group == C:  # instance norm: the affine parameters are per row too
        scale = _per_row(weight, N, C) if weight is not None else _filled(1.0, rows)
        shift = _per_row(bias, N, C) if bias is not None else _filled(0.0, rows)
        y, mean, var = _batch_norm_train(x, scale, shift, rows, eps)
        out = op.Reshape(y, _ints(_dims(input)))
    else:
        xhat, mean, var = _batch_norm_train(x, _filled(1.0, rows), _filled(0.0, rows), rows, eps)
        out = op.Reshape(xhat, _ints([N, C, -1]))
        if weight is not None or bias is not None:
            scale = weight if weight is not None else _filled(1.0, C)
            shift = bias if bias is not None else _filled(0.0, C)
            out = _affine(out, scale, shift, C)
        out = op.Reshape(out, _ints(_dims(input)))
    rstd = op.Reciprocal(op.Sqrt(op.Add(var, _floats(np.array(eps)))))
    return out, op.Reshape(mean, _ints([N, group])), op.Reshape(rstd, _ints([N, group]))


def _affine(x, scale, shift, channels: int):
    """scale[c] * x + shift[c] over x [B, channels, L] in one pass: inference-mode BatchNormalization
    with mean 0, variance 1 and epsilon 0."""
    return op.BatchNormalization(x, scale, shift, _filled(0.0, channels), _filled(1.0, channels),
                                 epsilon=0.0)


def native_group_norm_backward(grad_out, input, mean, rstd, weight, N: int, C: int, HxW: int, group: int,
                               output_mask: Sequence[bool]):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gamma * dy, means over each group,
    written as dx = k * dy + s * x + t: k per channel row, s and t per group row."""
    cg = C // group
    m = float(cg * HxW)
    dy = op.Reshape(grad_out, _ints([N, C, -1]))
    x = op.Reshape(input, _ints([N, C, -1]))
    axis2 = _ints([2])
    sdy = op.ReduceSum(dy, axis2, keepdims=0)  # [N, C]
    sdyx = op.ReduceSum(op.Mul(dy, x), axis2, keepdims=0)  # [N, C]
    mean_c = op.Reshape(op.Expand(op.Unsqueeze(mean, _ints([2])), _ints([N, group, cg])), _ints([N, C]))
    rstd_c = op.Reshape(op.Expand(op.Unsqueeze(rstd, _ints([2])), _ints([N, group, cg])), _ints([N, C]))
    axis0 = _ints([0])
    dgamma = op.ReduceSum(op.Mul(op.Sub(sdyx, op.Mul(mean_c, sdy)), rstd_c), axis0, keepdims=0)
    dbeta = op.ReduceSum(sdy, axis0, keepdims=0)
    if weight is not None:
        gamma = op.Unsqueeze(weight, axis0)  # [1, C]
        gsdy, gsdyx = op.Mul(sdy, gamma), op.Mul(sdyx, gamma)
        k = op.Mul(rstd_c, gamma)
    else:
        gsdy, gsdyx, k = sdy, sdyx, rstd_c
    if cg > 1:
        gshape, gaxis = _ints([N, group, cg]), _ints([2])
        gsdy = op.ReduceSum(op.Reshape(gsdy, gshape), gaxis, keepdims=0)
        gsdyx = op.ReduceSum(op.Reshape(gsdyx, gshape), gaxis, keepdims=0)
    inv_m = _floats(np.array(1.0 / m))
    m1 = op.Mul(gsdy, inv_m)  # mean(g), [N, G]
    r2 = op.Mul(rstd, rstd)
    m2r = op.Mul(op.Mul(op.Sub(gsdyx, op.Mul(mean, gsdy)), inv_m), r2)  # rstd * mean(g * xhat)
    s = op.Neg(op.Mul(m2r, rstd))  # -rstd^2 * mean(g * xhat)
    t = op.Sub(op.Neg(op.Mul(rstd, m1)), op.Mul(s, mean))
    rows = N * group
    affine = _affine(op.Reshape(input, _ints([1, rows, -1])), op.Reshape(s, _ints([rows])),
                     op.Reshape(t, _ints([rows])), rows)
    kdy = op.Mul(dy, op.Unsqueeze(k, axis2))
    dx = op.Add(op.Reshape(kdy, _ints([1, rows, -1])), affine)
    return op.Reshape(dx, _ints(_dims(input))), dgamma, dbeta


def threshold_backward(grad_output, self, threshold: float):
    """grad where self > threshold, else 0: grad * HardSigmoid(alpha * (self - threshold))."""
    if threshold == 0:
        mask = op.HardSigmoid(self, alpha=_MASK_ALPHA, beta=0.0)
    else:
        mask = op.Cast(op.Greater(self, _floats(np.array(threshold))), to=ir.DataType.FLOAT)
    return op.Mul(grad_output, mask)


def pool_params(kernel_size, stride, padding) -> tuple[list[int], list[int], list[int]]:
    kernel = list(kernel_size) if len(kernel_size) == 2 else [kernel_size[0]] * 2
    stride = list(stride) if len(stride) == 2 else (kernel if not stride else [stride[0]] * 2)
    padding = list(padding) if len(padding) == 2 else [padding[0]] * 2
    return kernel, stride, padding


def matmul_pool_applies(kernel_size, stride, padding, ceil_mode, divisor_override) -> bool:
    """Non-overlapping windows without padding: the case the pooling-matrix translation covers."""
    kernel, stride, padding = pool_params(kernel_size, stride, padding)
    return kernel == stride and not any(padding) and not ceil_mode and divisor_override is None


def _pool_matrix(kernel: list[int], w: int, wo: int) -> np.ndarray:
    """[kh * W, Wo]: row a*W + kw*j + b holds 1/(kh*kw) for output column j."""
    kh, kw = kernel
    p = np.zeros((kh * w, wo), np.float32)
    for j in range(wo):
        for a in range(kh):
            p[a * w + kw * j: a * w + kw * j + kw, j] = 1.0 / (kh * kw)
    return p


def avg_pool2d(self, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Sequence[int] = (0,),
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
    kernel, stride_, pads = pool_params(kernel_size, stride, padding)
    if not matmul_pool_applies(kernel_size, stride, padding, ceil_mode, divisor_override):
        if divisor_override is not None:
            raise UnsupportedOpError("train-step export does not support avg_pool2d with divisor_override")
        return op.AveragePool(self, kernel_shape=kernel, strides=stride_, pads=[*pads, *pads],
                              ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))
    n, c, h, w = _dims(self)
    ho, wo = h // kernel[0], w // kernel[1]
    x = self
    if h != ho * kernel[0]:  # floor mode drops the last rows
        x = op.Slice(x, _ints([0]), _ints([ho * kernel[0]]), _ints([2]))
    rows = op.Reshape(x, _ints([n * c * ho, kernel[0] * w]))
    out = op.MatMul(rows, _floats(_pool_matrix(kernel, w, wo)))
    return op.Reshape(out, _ints([n, c, ho, wo]))


def avg_pool2d_backward(grad_output, self, kernel_size: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
                        divisor_override: int | None = None):
    if not matmul_pool_applies(kernel_size, stride, padding, ceil_mode, divisor_override):
        raise UnsupportedOpError("avg_pool2d_backward translation covers only non-overlapping windows")
    kernel, _, _ = pool_params(kernel_size, stride, padding)
    n, c, h, w = _dims(self)
    ho, wo = h // kernel[0], w // kernel[1]
    g = op.Reshape(grad_output, _ints([n * c * ho, wo]))
    spread = op.MatMul(g, _floats(_pool_matrix(kernel, w, wo).T))
    out = op.Reshape(spread, _ints([n, c, ho * kernel[0], w]))
    if h != ho * kernel[0]:
        out = op.Pad(out, _ints([0, 0, 0, 0, 0, 0, h - ho * kernel[0], 0]))
    return out


def _constant_ints(value) -> list[int] | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Constant" or "value_ints" not in node.attributes:
        return None
    return list(node.attributes["value_ints"].value)


def slice_tensor(self, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1):
    """One Slice per chain: x[:, a:b, c:d] traces as two slices, i.e. two full copies in onnxruntime,
    so a slice of a slice (of other axes, all bounds constant) becomes one Slice of the source."""
    dim = dim + len(self.shape) if dim < 0 else dim
    start, end = (0 if start is None else start), (_INT64_MAX if end is None else min(end, _INT64_MAX))
    src, starts, ends, axes, steps = self, [start], [end], [dim], [step]
    node = self.producer()
    if node is not None and node.op_type == "Slice" and len(node.inputs) == 5:
        inner = [_constant_ints(v) for v in node.inputs[1:]]
        if all(v is not None for v in inner) and dim not in inner[2]:
            src = node.inputs[0]
            starts, ends, axes, steps = (inner[0] + starts, inner[1] + ends, inner[2] + axes, inner[3] + steps)
    return op.Slice(src, _ints(starts), _ints(ends), _ints(axes), _ints(steps))



def translation_table() -> dict[torch._ops.OpOverload, Callable]:
    return {
        aten.slice.Tensor: slice_tensor,
        aten.native_group_norm.default: native_group_norm,
        aten.native_group_norm_backward.default: native_group_norm_backward,
        aten.threshold_backward.default: threshold_backward,
        aten.avg_pool2d.default: avg_pool2d,
        aten.avg_pool2d_backward.default: avg_pool2d_backward,
    }
