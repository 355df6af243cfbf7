"""What the train-step export accepts in a user's torch module, and the train-time forms of its stateful layers.

`check_modules` refuses, by module path, every module whose parameters, state or randomness the graph
could not carry; the ops a model calls in its own forward are checked after tracing (`check_ops`). Two
layers get a train-time forward of their own while the step is traced:

- BatchNorm: batch statistics over the rows with weight > 0 only (padding rows of a partial batch must
  not shift them; the torch backend drops those rows, giving the same statistics), and the updated
  running mean / variance returned as graph outputs instead of written in place;
- Dropout: the keep mask from a noise input that the runtime draws (runtime/torch_step.py), so both
  backends drop the same elements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from condenser.export.errors import ExportError, UnsupportedOpError
from runtime.bundle import DropoutSpec
from runtime.torch_step import (
    BATCH_NORM_STATE,
    BATCH_NORM_TYPES,
    DROPOUT_TYPES,
    dropout_modules,
    seeded_dropout,
    state_buffers,
)

aten = torch.ops.aten

# Modules that may own parameters; others may own none (a custom module's ops are checked after tracing).
PARAMETRIC = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm1d,
              nn.InstanceNorm2d, nn.LayerNorm)
# Modules refused outright, with what to use instead.
REFUSED: dict[type[nn.Module], str] = {
    nn.Dropout1d: "nn.Dropout", nn.Dropout2d: "nn.Dropout", nn.Dropout3d: "nn.Dropout",
    nn.AlphaDropout: "nn.Dropout", nn.FeatureAlphaDropout: "nn.Dropout",
}
BN_TYPES, BN_STATE = BATCH_NORM_TYPES, BATCH_NORM_STATE


def _where(name: str, module: nn.Module) -> str:
    return f"'{name or '<root>'}' ({type(module).__name__})"


def _check_options(name: str, m: nn.Module) -> None:
    """Layer options the graph cannot express."""
    where = _where(name, m)
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        raise ExportError(f"module {where}: padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
    if isinstance(m, BN_TYPES) and (not m.track_running_stats or m.momentum is None):
        raise ExportError(f"module {where}: BatchNorm needs track_running_stats=True and a float momentum "
                          f"(got {m.track_running_stats}, {m.momentum})")
    if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d)) and m.track_running_stats:
        raise ExportError(f"module {where}: InstanceNorm with track_running_stats=True is not supported")
    if isinstance(m, nn.AvgPool2d) and (m.ceil_mode or m.divisor_override is not None or any(
            p != 0 for p in ((m.padding,) if isinstance(m.padding, int) else m.padding))):
        raise ExportError(f"module {where}: AvgPool2d supports no padding, ceil_mode or divisor_override")
    if isinstance(m, DROPOUT_TYPES) and m.p >= 1:
        raise ExportError(f"module {where}: dropout p={m.p} drops everything")


def check_modules(model: nn.Module) -> None:
    """Refuse modules the export cannot carry; the ExportError names the module path and type."""
    for name, m in model.named_modules():
        where = _where(name, m)
        if type(m) in REFUSED:
            raise ExportError(f"module {where} is not supported by the train-step export; use {REFUSED[type(m)]}")
        own_params = [n for n, _ in m.named_parameters(recurse=False)]
        if own_params and not isinstance(m, PARAMETRIC) and _is_library_layer(m):
            raise ExportError(f"module {where} is not supported by the train-step export (supported layers: "
                              "docs/trainer.md)")
        for b, _ in m.named_buffers(recurse=False):
            if not (isinstance(m, BN_TYPES) and b in (*BN_STATE, "num_batches_tracked")):
                raise ExportError(f"module {where} has buffer {b!r}: only BatchNorm running statistics are "
                                  "carried as trainer state")
        _check_options(name, m)


def _is_library_layer(m: nn.Module) -> bool:
    """A torch.nn layer (LSTM, Embedding, ConvTranspose2d, ...), as opposed to the user's own module, whose
    own parameters are plain tensors that its forward combines with ops the trace checks."""
    return type(m).__module__.startswith("torch.nn")


@dataclass
class Probe:
    """What an eval-mode forward shows: the logits' shape (batch as 1) and each dropout's per-sample input shape."""

    out_shape: tuple[int, ...]
    dropout_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def probe(model: nn.Module, in_shape: tuple[int, int, int], batch_size: int) -> Probe:
    """Forward a zero batch in eval mode (no running statistics move) and record shapes (the logits' with
    the batch dimension as 1)."""
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    hooks = []
    for name, m in dropout_modules(model):
        def hook(_m, args, name=name):
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(args[0].shape[1:])
        hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(batch_size, *in_shape))
    except Exception as exc:  # the user's forward can raise anything; name the stage
        raise ExportError(f"the model's forward fails on a batch of shape {(batch_size, *in_shape)}: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    twice = [n for n, c in calls.items() if c > 1]
    if twice:
        raise ExportError(f"dropout module '{twice[0]}' is called more than once per forward; give each call "
                          "its own nn.Dropout")
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model returns a {type(out).__name__}, not a logits tensor")
    return Probe(out_shape=(1, *out.shape[1:]) if out.dim() else (), dropout_shapes=shapes)


def dropout_specs(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[DropoutSpec]:
    """The bundle's dropout inputs: every nn.Dropout with p > 0 that the forward calls."""
    return [DropoutSpec(module=name, p=float(m.p), shape=shapes[name]) for name, m in dropout_modules(model)
            if name in shapes]


def _rows_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """scale[c] * x + shift[c] over x [B, C, ...] in one pass: an inference-mode batch norm with mean 0 and
    variance 1 (one ONNX BatchNormalization), not a Mul and an Add over the whole tensor."""
    c = x.shape[1]
    zeros, ones = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
    return aten.native_batch_norm(x, scale, shift, zeros, ones, False, 0.0, 0.0)[0]


class _MaskedBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm whose statistics cover the rows with keep = 1 (keep [B] holds 0 / 1).

    Written with its own backward because the autograd of the formula writes about twice as many
    full-size tensors: per (row, channel) sums first, then one affine pass for the output and, in the
    backward, dx = k * dy + keep * (s * x + t) with per-channel k, s, t (the algebra of
    translations.native_group_norm_backward, restricted to the kept rows; padding rows get dx = 0).
    """

    @staticmethod
    def forward(ctx, x, keep, weight, bias, eps: float):
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        count = keep.sum() * x3.shape[2]
        mean = (x3.sum(-1) * keep.unsqueeze(1)).sum(0) / count
        centered = x3 - mean.reshape(1, c, 1)
        var = ((centered * centered).sum(-1) * keep.unsqueeze(1)).sum(0) / count
        rstd = torch.rsqrt(var + eps)
        a = weight * rstd
        ctx.save_for_backward(x, keep, weight, mean, rstd, count)
        return _rows_affine(x, a, bias - mean * a), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, keep, weight, mean, rstd, count = ctx.saved_tensors
        n, c = x.shape[:2]
        dy3, x3, kept = dy.reshape(n, c, -1), x.reshape(n, c, -1), keep.unsqueeze(1)
        sdy, sdyx = dy3.sum(-1), (dy3 * x3).sum(-1)  # [N, C]
        dbeta = (sdy * kept).sum(0)
        dgamma = ((sdyx - mean * sdy) * kept).sum(0) * rstd
        k = weight * rstd
        s = -k * rstd * dgamma / count
        t = -k * dbeta / count - s * mean
        rows = _rows_affine(x.reshape(1, n * c, -1), (kept * s).reshape(-1), (kept * t).reshape(-1))
        dx = (dy3 * k.reshape(1, c, 1)).reshape(1, n * c, -1) + rows
        return dx.reshape(x.shape), None, dgamma, dbeta, None


def masked_batch_norm(x: torch.Tensor, keep: torch.Tensor, bn: nn.Module, running_mean: torch.Tensor,
                      running_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, new running mean, new running var) of training-mode BatchNorm over the rows where keep = 1.

    As torch: biased variance normalizes, the unbiased one (n / (n - 1), n = kept rows x positions) enters
    the running variance, running = (1 - momentum) * running + momentum * batch statistic.
    """
    c = x.shape[1]
    weight = bn.weight if bn.weight is not None else torch.ones(c, dtype=x.dtype)
    bias = bn.bias if bn.bias is not None else torch.zeros(c, dtype=x.dtype)
    y, mean, var = _MaskedBatchNorm.apply(x, keep, weight, bias, float(bn.eps))
    count = keep.sum() * (x[0, 0].numel())
    m = float(bn.momentum)
    unbiased = var.detach() * count / torch.clamp(count - 1, min=1)
    return y, (1 - m) * running_mean + m * mean.detach(), (1 - m) * running_var + m * unbiased


def train_forwards(model: nn.Module, keep: torch.Tensor | None, noise: dict[str, torch.Tensor],
                   updates: dict[str, torch.Tensor]) -> dict[nn.Module, Callable[..., torch.Tensor]]:
    """Train-time forwards for the traced step: masked BatchNorm that writes its new running statistics
    into `updates` (by buffer name), seeded dropout from `noise` (by module path), identity for any
    other nn.Dropout (dropout disabled in the graph)."""
    out: dict[nn.Module, Callable[..., torch.Tensor]] = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, BN_TYPES):
            def bn_forward(x, m=m, prefix=prefix):
                y, rm, rv = masked_batch_norm(x, keep, m, m.running_mean, m.running_var)
                updates[prefix + "running_mean"], updates[prefix + "running_var"] = rm, rv
                return y
            out[m] = bn_forward
        elif isinstance(m, DROPOUT_TYPES):
            out[m] = (lambda x, m=m, name=name: seeded_dropout(x, noise[name], m.p)) if name in noise else (
                lambda x: x)
    return out


def _calling_module(model: nn.Module, in_shape: tuple[int, int, int], batch_size: int,
                    op: torch._ops.OpOverload) -> str | None:
    """The innermost module whose forward calls `op` (by op name) in an eager eval-mode forward, or None
    (the op comes from a backward or a decomposition)."""
    stack: list[str] = []
    found: list[str] = []

    def leave(_m, _args, _out) -> None:  # a forward hook that returned a value would replace the output
        stack.pop()

    hooks = []
    for name, m in model.named_modules():
        where = _where(name, m)
        hooks.append(m.register_forward_pre_hook(lambda _m, _a, where=where: stack.append(where)))
        hooks.append(m.register_forward_hook(leave))

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and stack and func.overloadpacket is op.overloadpacket:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), Spy():
            model(torch.zeros(batch_size, *in_shape))
    except Exception:  # locating is best effort: the op is named either way
        pass
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found[0] if found else None


def check_ops(gm: fx.GraphModule, supported: frozenset[str], model: nn.Module, in_shape: tuple[int, int, int],
              batch_size: int) -> None:
    """Raise UnsupportedOpError naming the first op of `gm` outside `supported` and the module calling it."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and (
                str(node.target) not in supported):
            where = _calling_module(model, in_shape, batch_size, node.target)
            place = f"module {where}" if where else "the model's forward or its gradient"
            raise UnsupportedOpError(f"op {node.target} in {place} is not supported by the train-step export "
                                     "(supported layers: docs/trainer.md)")


__all__ = ["BN_TYPES", "PARAMETRIC", "Probe", "check_modules", "check_ops", "dropout_specs", "masked_batch_norm",
           "probe", "state_buffers", "train_forwards"]
