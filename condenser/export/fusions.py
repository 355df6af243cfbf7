"""Graph rewrites of the traced train step for a first convolution followed by instance norm.

When a convolution of a graph input (the images) is narrow (few im2col columns: C_in * kh * kw <= 64)
and an instance norm (GroupNorm with one channel per group) follows it, the conv output of every
(sample, channel) is w_c . cols_n + b_c, a linear map of the sample's small im2col matrix. Its mean and
variance then follow from the per-sample moments of the im2col columns, and every sum over positions
that the backward needs (sum dy, sum dy * x, the weight and bias gradients) follows from one product
dy [C, h*w] @ [cols | 1]^T per sample. So:

- forward: out = (a * w) . cols + (a * (b - mean) + beta), a = gamma * rstd, is one batched product
  written straight from the im2col matrix; the conv output and the statistics pass over it are gone;
- backward: the norm's dx, which feeds only the weight gradient of a first layer, is never formed:
  dW and db come from sums of k * dy + s * x + t against the columns, all of size [N, C, K + 1].

On the widest tensors of the step (the first layer's), this removes the conv output, the normalization
pass, the two reductions, and the three full-size passes that form dx.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from condenser.export import decompositions
from condenser.export.decompositions import im2col

aten = torch.ops.aten

def _conv_out_hw(x: torch.Tensor, kernel, stride, padding, dilation) -> tuple[int, int]:
    return tuple(int((x.shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1)
                 for d in range(2))


def narrow_conv_instance_norm(x, weight, bias, gamma, beta, stride, padding, dilation, eps):
    """native_group_norm(convolution(x, weight, bias), gamma, beta, groups=C) -> (out, mean, rstd)."""
    kernel = weight.shape[2:]
    ho, wo = _conv_out_hw(x, kernel, stride, padding, dilation)
    n, c = x.shape[0], weight.shape[0]
    cols = im2col(x, kernel, stride, padding, dilation, (ho, wo))  # [N, K, P]
    wf = weight.reshape(c, -1)  # [C, K]
    mu = cols.mean(-1)  # [N, K]
    centered = cols - mu.unsqueeze(-1)
    cov = torch.bmm(centered, centered.transpose(1, 2)) / (ho * wo)  # [N, K, K]
    var = (torch.matmul(wf, cov) * wf).sum(-1)  # [N, C]: w_c^T cov_n w_c
    mean = torch.matmul(mu, wf.t())  # [N, C]
    if bias is not None:
        mean = mean + bias
    rstd = torch.rsqrt(var + eps)
    a = rstd * gamma if gamma is not None else rstd
    shift = (bias - mean) * a if bias is not None else -mean * a
    if beta is not None:
        shift = shift + beta
    scaled = torch.cat([a.unsqueeze(-1) * wf, shift.unsqueeze(-1)], dim=-1)  # [N, C, K + 1]
    ones = torch.ones(n, 1, ho * wo, dtype=cols.dtype, device=cols.device)
    out = torch.bmm(scaled, torch.cat([cols, ones], dim=1))
    return out.reshape(n, c, ho, wo), mean, rstd


def narrow_conv_instance_norm_backward(dy, x, weight, bias, mean, rstd, gamma, stride, padding, dilation):
    """Weight/bias gradients of the conv and gamma/beta gradients of the norm, without forming dx.

    dx = k * dy + s * y + t per (sample, channel) (y = conv output, native_group_norm_backward's
    algebra); dW_c = sum_n (k A + s B + t S) with A = dy @ cols1^T, B = y @ cols1^T = w . (cols cols1^T)
    + b S and S = row sums of cols1 = [cols | 1].
    """
    kernel = weight.shape[2:]
    n, c, ho, wo = dy.shape
    p = ho * wo
    cols = im2col(x, kernel, stride, padding, dilation, (ho, wo))  # [N, K, P]
    kk = cols.shape[1]
    cols1 = torch.cat([cols, torch.ones(n, 1, p, dtype=cols.dtype, device=cols.device)], dim=1)  # [N, K+1, P]
    a_ = torch.bmm(dy.reshape(n, c, p), cols1.transpose(1, 2))  # [N, C, K+1]: the one pass over dy
    wf = weight.reshape(c, kk)
    sdy = a_[:, :, kk]  # sum dy
    sdyx = (a_[:, :, :kk] * wf).sum(-1)  # sum dy * y
    if bias is not None:
        sdyx = sdyx + bias * sdy
    dgamma = ((sdyx - mean * sdy) * rstd).sum(0)
    dbeta = sdy.sum(0)
    g = gamma if gamma is not None else torch.ones_like(wf[:, 0])
    k = rstd * g
    m1 = g * sdy / p
    m2r = (g * sdyx - mean * g * sdy) / p * rstd * rstd
    s = -m2r * rstd
    t = -rstd * m1 - s * mean
    sums = cols1.sum(-1)  # [N, K+1]
    gram = torch.bmm(cols, cols1.transpose(1, 2))  # [N, K, K+1]
    b_ = torch.matmul(wf, gram)  # [N, C, K+1]
    if bias is not None:
        b_ = b_ + bias[None, :, None] * sums[:, None, :]
    grad = (k.unsqueeze(-1) * a_ + s.unsqueeze(-1) * b_ + t.unsqueeze(-1) * sums[:, None, :]).sum(0)  # [C, K+1]
    return grad[:, :kk].reshape(weight.shape), grad[:, kk], dgamma, dbeta


def _getitems(node: fx.Node) -> dict[int, fx.Node]:
    return {u.args[1]: u for u in node.users if u.target is operator.getitem}


def _narrow_instance_norm_conv(gn: fx.Node) -> fx.Node | None:
    """The convolution feeding native_group_norm `gn` if the pair qualifies, else None."""
    conv = gn.args[0]
    if not isinstance(conv, fx.Node) or conv.target is not aten.convolution.default:
        return None
    x, weight, _, stride, padding, dilation, transposed, _, groups = conv.args
    c, group = gn.args[4], gn.args[6]
    w = weight.meta.get("val")
    # A graph input (the images): no input gradient, so the backward pair fuses too.
    if x.op != "placeholder" or transposed or groups != 1 or group != c or w is None or w.dim() != 4:
        return None
    return conv if w.shape[1] * w.shape[2] * w.shape[3] <= decompositions.NARROW_COLUMNS else None


def fuse_narrow_conv_instance_norm(gm: fx.GraphModule) -> int:
    """Rewrite qualifying (convolution -> instance norm) pairs, forward and backward; returns how many.

    Expects convolution_backward not yet decomposed. A backward pair is rewritten only when the norm's
    dx feeds nothing but that convolution's weight/bias gradient (a first layer: no input gradient).
    """
    graph = gm.graph
    fused = 0
    for gn in list(graph.nodes):
        if gn.target is not aten.native_group_norm.default or _narrow_instance_norm_conv(gn) is None:
            continue
        conv = gn.args[0]
        x, weight, bias, stride, padding, dilation = conv.args[:6]
        gn.target = narrow_conv_instance_norm
        gn.args = (x, weight, bias, gn.args[1], gn.args[2], stride, padding, dilation, gn.args[7])
        fused += 1
        for gnb in [u for u in conv.users if u.target is aten.native_group_norm_backward.default]:
            dx = _getitems(gnb).get(0)
            cb = next(iter(dx.users)) if dx is not None and len(dx.users) == 1 else None
            if (cb is None or cb.target is not aten.convolution_backward.default or cb.args[0] is not dx
                    or cb.args[1] is not x or cb.args[2] is not weight or cb.args[10][0]
                    or tuple(cb.args[4:7]) != (stride, padding, dilation)):
                continue
            dy, _, mean, rstd, gamma = gnb.args[:5]
            with graph.inserting_before(gnb):
                node = graph.call_function(narrow_conv_instance_norm_backward,
                                           (dy, x, weight, bias, mean, rstd, gamma, stride, padding, dilation))
                outs = [graph.call_function(operator.getitem, (node, i)) for i in range(4)]
            for old, new in ((_getitems(cb).get(1), outs[0]), (_getitems(cb).get(2), outs[1]),
                             (_getitems(gnb).get(1), outs[2]), (_getitems(gnb).get(2), outs[3])):
                if old is not None:
                    old.replace_all_uses_with(new)
            for old in (*_getitems(cb).values(), cb, *_getitems(gnb).values(), gnb):
                graph.erase_node(old)
    if fused:
        graph.eliminate_dead_code()
        gm.recompile()
    return fused
