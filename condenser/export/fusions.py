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

When ReLU and a non-overlapping average pool follow (conv -> norm -> relu -> pool, the ConvNet block),
the block is rewritten as a whole, with the positions of the im2col matrix (hence of the norm output)
ordered by pooling phase, [N, C, kh*kw, ho*wo]: the pool is then a mean over axis 2 and, in the
backward, the pooled gradient reaches every position of its window by broadcasting inside the ReLU
mask product, instead of through an upsampling pass.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from condenser.export import decompositions
from condenser.export.decompositions import im2col
from condenser.export.translations import matmul_pool_applies, pool_params

aten = torch.ops.aten

def _conv_out_hw(x: torch.Tensor, kernel, stride, padding, dilation) -> tuple[int, int]:
    return tuple(int((x.shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1)
                 for d in range(2))


def _cols(x, kernel, stride, padding, dilation, pool=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """im2col [N, K, h*w] of x and (h, w); with `pool` = (ph, pw), positions in pooling-phase order:
    (a, b, i, j) for output position (ph * i + a, pw * j + b), gathered by strided slices of the padded
    input (one per distinct (row, col) offset) rather than by permuting the usual im2col matrix."""
    ho, wo = _conv_out_hw(x, kernel, stride, padding, dilation)
    if pool is None:
        return im2col(x, kernel, stride, padding, dilation, (ho, wo)), (ho, wo)
    (ph, pw), (hp, wp) = pool, (ho // pool[0], wo // pool[1])
    xp = aten.constant_pad_nd(x, [padding[1], padding[1], padding[0], padding[0]], 0.0)
    windows: dict[tuple[int, int], torch.Tensor] = {}
    taps = []
    for ti in range(kernel[0]):
        for tj in range(kernel[1]):
            for a in range(ph):
                for b in range(pw):
                    r, q = stride[0] * a + dilation[0] * ti, stride[1] * b + dilation[1] * tj
                    if (r, q) not in windows:
                        sr, sq = stride[0] * ph, stride[1] * pw
                        windows[r, q] = xp[:, :, r: r + sr * (hp - 1) + 1: sr, q: q + sq * (wp - 1) + 1: sq]
                    taps.append(windows[r, q])
    n, c = x.shape[:2]
    return torch.stack(taps, dim=2).reshape(n, c * kernel[0] * kernel[1], ho * wo), (ho, wo)


def _normalized_conv(cols, weight, bias, gamma, beta, eps, out_scale: float = 1.0):
    """Instance norm of conv output y = w . cols + b without forming y: (out_scale * out [N, C, P], mean,
    rstd); the scale is applied to the [N, C, K + 1] coefficients, not to the output."""
    n, kk, p = cols.shape
    c = weight.shape[0]
    wf = weight.reshape(c, kk)
    mu = cols.mean(-1)  # [N, K]
    centered = cols - mu.unsqueeze(-1)
    cov = torch.bmm(centered, centered.transpose(1, 2)) / p  # [N, K, K]
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
    if out_scale != 1.0:
        scaled = scaled * out_scale
    ones = torch.ones(n, 1, p, dtype=cols.dtype, device=cols.device)
    return torch.bmm(scaled, torch.cat([cols, ones], dim=1)), mean, rstd


def _backward_sums(dy, cols, weight, bias, mean, rstd, gamma, dy_scale: float = 1.0):
    """(dW, db, dgamma, dbeta) from dy_scale * dy [N, C, P] (dy: gradient at the norm output), without
    forming dx.

    dx = k * dy + s * y + t per (sample, channel) (y = conv output, native_group_norm_backward's
    algebra); dW_c = sum_n (k A + s B + t S) with A = dy @ cols1^T, B = y @ cols1^T = w . (cols cols1^T)
    + b S and S = row sums of cols1 = [cols | 1].
    """
    n, c, p = dy.shape
    kk = cols.shape[1]
    cols1 = torch.cat([cols, torch.ones(n, 1, p, dtype=cols.dtype, device=cols.device)], dim=1)  # [N, K+1, P]
    a_ = torch.bmm(dy, cols1.transpose(1, 2))  # [N, C, K+1]: the one pass over dy
    if dy_scale != 1.0:
        a_ = a_ * dy_scale
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


def narrow_conv_instance_norm(x, weight, bias, gamma, beta, stride, padding, dilation, eps):
    """native_group_norm(convolution(x, weight, bias), gamma, beta, groups=C) -> (out, mean, rstd)."""
    cols, (ho, wo) = _cols(x, weight.shape[2:], stride, padding, dilation)
    out, mean, rstd = _normalized_conv(cols, weight, bias, gamma, beta, eps)
    return out.reshape(x.shape[0], weight.shape[0], ho, wo), mean, rstd


def narrow_conv_instance_norm_backward(dy, x, weight, bias, mean, rstd, gamma, stride, padding, dilation):
    """(dW, db, dgamma, dbeta) of the pair, given dy at the norm output."""
    cols, _ = _cols(x, weight.shape[2:], stride, padding, dilation)
    return _backward_sums(dy.reshape(dy.shape[0], dy.shape[1], -1), cols, weight, bias, mean, rstd, gamma)


def narrow_conv_block(x, weight, bias, gamma, beta, stride, padding, dilation, eps, pool):
    """avg_pool2d(relu(instance_norm(conv(x))), pool, pool) -> (pooled, relu output / (ph * pw) in phase
    layout [N, C, ph * pw, P / (ph * pw)] (the backward reads only its sign), mean, rstd).

    relu(y) / m = relu(y / m): the 1 / m of the mean is folded into the coefficients, so the pool is a sum.
    """
    cols, (ho, wo) = _cols(x, weight.shape[2:], stride, padding, dilation, pool)
    m = pool[0] * pool[1]
    out, mean, rstd = _normalized_conv(cols, weight, bias, gamma, beta, eps, out_scale=1.0 / m)
    n, c = out.shape[:2]
    z = torch.relu(out).reshape(n, c, m, -1)
    return z.sum(2).reshape(n, c, ho // pool[0], wo // pool[1]), z, mean, rstd


def narrow_conv_block_backward(grad_pooled, z, x, weight, bias, mean, rstd, gamma, stride, padding, dilation,
                               pool):
    """(dW, db, dgamma, dbeta) of the block from the gradient at its pooled output. Each window position
    gets grad / (ph * pw) where relu was active: the mask product broadcasts the pooled gradient over the
    window axis, and the 1 / (ph * pw) is applied after the one reduction over positions."""
    n, c = grad_pooled.shape[:2]
    dy = aten.threshold_backward(grad_pooled.reshape(n, c, 1, -1), z, 0)  # [N, C, ph * pw, P / (ph * pw)]
    cols, _ = _cols(x, weight.shape[2:], stride, padding, dilation, pool)
    return _backward_sums(dy.reshape(n, c, -1), cols, weight, bias, mean, rstd, gamma,
                          dy_scale=1.0 / (pool[0] * pool[1]))


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


def _backward_pair(gnb: fx.Node, conv: fx.Node) -> fx.Node | None:
    """The convolution_backward that alone consumes gnb's dx, for conv's weight/bias only, else None."""
    x, weight, _, stride, padding, dilation = conv.args[:6]
    dx = _getitems(gnb).get(0)
    cb = next(iter(dx.users)) if dx is not None and len(dx.users) == 1 else None
    if (cb is None or cb.target is not aten.convolution_backward.default or cb.args[0] is not dx
            or cb.args[1] is not x or cb.args[2] is not weight or cb.args[10][0]
            or tuple(cb.args[4:7]) != (stride, padding, dilation)):
        return None
    return cb


def _through_aliases(node: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """(alias nodes reachable from node, in graph order; their and node's non-alias users)."""
    aliases, users, todo = [], [], list(node.users)
    while todo:
        u = todo.pop()
        if u.target is aten.alias.default:
            aliases.append(u)
            todo.extend(u.users)
        elif u not in users:
            users.append(u)
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(aliases, key=order.get), users


def _block(gn: fx.Node, conv: fx.Node) -> dict | None:
    """Nodes of conv -> norm -> relu -> avg_pool2d and of its backward, if the whole block qualifies."""
    y = _getitems(gn).get(0)
    relu = next(iter(y.users)) if y is not None and len(y.users) == 1 else None
    if relu is None or relu.target not in (aten.relu_.default, aten.relu.default):
        return None
    aliases, users = _through_aliases(relu)
    kinds = {t: [u for u in users if u.target is t] for t in (aten.avg_pool2d.default,
                                                                aten.avg_pool2d_backward.default,
                                                                aten.threshold_backward.default)}
    if len(users) != 3 or any(len(v) != 1 for v in kinds.values()):
        return None
    pool, apb, tb = (v[0] for v in kinds.values())
    if pool.kwargs or apb.kwargs or tb.kwargs:
        return None
    params = (list(pool.args[1:]) + [[], [0], False, True, None][len(pool.args) - 2:])[:6]
    kernel = pool_params(*params[:3])[0]
    h, w = relu.meta["val"].shape[2:]
    if (not matmul_pool_applies(*params[:3], params[3], params[5]) or h % kernel[0] or w % kernel[1]
            or not matmul_pool_applies(*apb.args[2:6], apb.args[7])
            or pool_params(*apb.args[2:5]) != pool_params(*params[:3])
            or set(apb.users) != {tb} or tb.args[0] is not apb or tb.args[2] != 0 or len(tb.users) != 1):
        return None
    gnb = next(iter(tb.users))
    if gnb.target is not aten.native_group_norm_backward.default or gnb.args[0] is not tb or gnb.args[1] is not conv:
        return None
    cb = _backward_pair(gnb, conv)
    if cb is None:
        return None
    return dict(y=y, relu=relu, aliases=aliases, pool=pool, apb=apb, tb=tb, gnb=gnb, cb=cb, kernel=tuple(kernel))


def _erase(graph: fx.Graph, nodes) -> None:
    for node in nodes:
        if node.users:
            raise AssertionError(f"fusion left a user of {node.name}: {list(node.users)}")
        graph.erase_node(node)


def _rewire(pairs) -> None:
    for old, new in pairs:
        if old is not None:
            old.replace_all_uses_with(new)


def fuse_narrow_conv_instance_norm(gm: fx.GraphModule) -> int:
    """Rewrite qualifying (convolution -> instance norm [-> relu -> avg_pool2d]) of graph inputs, forward
    and backward; returns how many were rewritten.

    Expects convolution_backward not yet decomposed. A backward is rewritten only when the norm's dx
    feeds nothing but that convolution's weight/bias gradient (a first layer: no input gradient).
    """
    graph = gm.graph
    fused = 0
    for gn in list(graph.nodes):
        if gn.target is not aten.native_group_norm.default:
            continue
        conv = _narrow_instance_norm_conv(gn)
        if conv is None:
            continue
        x, weight, bias, stride, padding, dilation = conv.args[:6]
        gamma, beta, eps = gn.args[1], gn.args[2], gn.args[7]
        fused += 1
        block = _block(gn, conv)
        if block is not None:
            gnb, cb = block["gnb"], block["cb"]
            with graph.inserting_before(gn):
                fwd = graph.call_function(narrow_conv_block, (x, weight, bias, gamma, beta, stride, padding,
                                                              dilation, eps, block["kernel"]))
                pooled, z, mean, rstd = (graph.call_function(operator.getitem, (fwd, i)) for i in range(4))
            with graph.inserting_before(gnb):
                bwd = graph.call_function(narrow_conv_block_backward, (block["apb"].args[0], z, x, weight, bias,
                                                                       mean, rstd, gamma, stride, padding,
                                                                       dilation, block["kernel"]))
                outs = [graph.call_function(operator.getitem, (bwd, i)) for i in range(4)]
            _rewire([(block["pool"], pooled), (_getitems(gn).get(1), mean), (_getitems(gn).get(2), rstd),
                     (_getitems(cb).get(1), outs[0]), (_getitems(cb).get(2), outs[1]),
                     (_getitems(gnb).get(1), outs[2]), (_getitems(gnb).get(2), outs[3])])
            _erase(graph, [*_getitems(cb).values(), cb, *_getitems(gnb).values(), gnb, block["tb"], block["apb"],
                           *reversed(block["aliases"]), block["pool"], block["relu"], *_getitems(gn).values(), gn])
            continue
        gn.target = narrow_conv_instance_norm
        gn.args = (x, weight, bias, gamma, beta, stride, padding, dilation, eps)
        for gnb in [u for u in conv.users if u.target is aten.native_group_norm_backward.default]:
            cb = _backward_pair(gnb, conv)
            if cb is None:
                continue
            with graph.inserting_before(gnb):
                node = graph.call_function(narrow_conv_instance_norm_backward,
                                           (gnb.args[0], x, weight, bias, gnb.args[2], gnb.args[3], gnb.args[4],
                                            stride, padding, dilation))
                outs = [graph.call_function(operator.getitem, (node, i)) for i in range(4)]
            _rewire([(_getitems(cb).get(1), outs[0]), (_getitems(cb).get(2), outs[1]),
                     (_getitems(gnb).get(1), outs[2]), (_getitems(gnb).get(2), outs[3])])
            _erase(graph, [*_getitems(cb).values(), cb, *_getitems(gnb).values(), gnb])
    if fused:
        graph.eliminate_dead_code()
        gm.recompile()
    return fused
