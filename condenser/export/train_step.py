"""Trace one train step, and the inference pass, of a model into ONNX graphs.

Both graphs are pure functions of their inputs (parameters, optimizer state and state buffers in, new
ones out) so a device runs them with onnxruntime alone and keeps the state itself. The step is: forward
(BatchNorm and Dropout in the train-time forms of layers.py), the per-sample-weighted loss chosen at
export (runtime/torch_step.py), autograd backward, then PyTorch's SGD (momentum, Nesterov) or AdamW
update; momentum, weight decay and betas are constants of the graph, the learning rate (and AdamW's step
count) are inputs. Recipe: make_fx over torch.autograd.grad with the decompositions of
decompositions.py, the graph rewrites of fusions.py (first conv + instance norm block), then
torch.onnx.export(dynamo=True) of the traced graph with the onnxruntime-oriented translations of
translations.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from condenser.export.decompositions import decomposition_table, first_pass_table
from condenser.export.errors import ExportError
from condenser.export.fusions import fuse_narrow_conv_instance_norm
from condenser.export.layers import check_modules, check_ops, dropout_specs, probe, state_buffers, train_forwards
from condenser.export.supported import SUPPORTED_ATEN_OPS
from condenser.export.translations import reset_running_inputs, translation_table
from runtime.bundle import AdamWConfig, DropoutSpec, GraphIO, LossConfig, OptimizerConfig, SGDConfig, graph_io
from runtime.torch_step import forwards_replaced, student_loss

OPSET = 18
DROPOUT_MODES = ("seeded", "off")


@dataclass(frozen=True)
class StepPlan:
    """What the traced graphs depend on besides the model: sizes, state, optimizer, loss, dropout inputs."""

    param_names: list[str]
    buffer_names: list[str]
    batch_size: int
    in_shape: tuple[int, int, int]
    num_classes: int
    optimizer: OptimizerConfig
    loss: LossConfig
    dropout: list[DropoutSpec]

    @property
    def io(self) -> GraphIO:
        return graph_io(self.param_names, self.buffer_names, self.optimizer, self.dropout)


def plan_step(model: nn.Module, batch_size: int, in_shape: tuple[int, int, int], num_classes: int,
              optimizer: OptimizerConfig | None = None, loss: LossConfig | None = None,
              dropout: str = "seeded") -> StepPlan:
    """Check the model's layers and output shape and collect what its graphs carry (ExportError if not)."""
    if dropout not in DROPOUT_MODES:
        raise ExportError(f"unknown dropout mode {dropout!r}; known: {', '.join(DROPOUT_MODES)}")
    check_modules(model)
    seen = probe(model, in_shape, batch_size)
    if seen.out_shape != (1, num_classes):
        raise ExportError(f"the model maps inputs of shape {(batch_size, *in_shape)} to {seen.out_shape[1:]} "
                          f"per sample, not {num_classes} logits: check in_shape and num_classes")
    return StepPlan(param_names=[n for n, _ in model.named_parameters()], buffer_names=state_buffers(model),
                    batch_size=batch_size, in_shape=tuple(in_shape), num_classes=num_classes,
                    optimizer=optimizer if optimizer is not None else SGDConfig(),
                    loss=loss if loss is not None else LossConfig(),
                    dropout=dropout_specs(model, seen.dropout_shapes) if dropout == "seeded" else [])


class _Traced(nn.Module):
    """torch.onnx.export takes an nn.Module; this one calls the traced graph."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *args: torch.Tensor):
        return self.gm(*args)


def _remove_dead_nodes(model: onnx.ModelProto) -> None:
    """onnxruntime runs nodes whose outputs nobody reads; translations can leave some (merged slices)."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        keep = [node for node in graph.node if any(o in used for o in node.output)]
        if len(keep) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(keep)


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node stack traces and doc strings: they are most of the file and useless on a device."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for info in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        del info.metadata_props[:]


# optimize=False: onnxscript's optimizer halves the graph file but doubles the export time, and
# onnxruntime's own graph optimizations at session load give the same step time either way
# (measured on ConvNet-D3 and ResNet-AP10, batch 64).
def _to_onnx(gm: torch.fx.GraphModule, args: tuple[torch.Tensor, ...], names_in: list[str],
             names_out: list[str]) -> bytes:
    reset_running_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(_Traced(gm), args, dynamo=True, opset_version=OPSET,
                                        input_names=names_in, output_names=names_out, verbose=False,
                                        optimize=False, custom_translation_table=translation_table())
        except Exception as exc:  # the exporter raises many unrelated types; name the stage instead
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    proto = program.model_proto
    _strip_metadata(proto)
    _remove_dead_nodes(proto)
    got_in, got_out = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    if got_in != names_in or got_out != names_out:
        raise ExportError(f"exported graph has inputs {got_in[:6]}... / outputs {got_out[:4]}..., "
                          f"expected {names_in[:6]}... / {names_out[:4]}...")
    return proto.SerializeToString()


def _trace(fn, args: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """make_fx with convolution_backward kept, the graph rewrites of fusions.py, then make_fx again with
    the whole decomposition table (it decomposes what is left and inlines the fused functions)."""
    try:
        gm = make_fx(fn, decomposition_table=first_pass_table(), tracing_mode="fake")(*args)
        fuse_narrow_conv_instance_norm(gm)
        return make_fx(gm, decomposition_table=decomposition_table(), tracing_mode="fake")(*args)
    except ExportError:
        raise
    except Exception as exc:  # tracing failures come in many types; name the stage
        raise ExportError(f"tracing the model failed: {type(exc).__name__}: {exc}") from exc


def _trace_checked(fn, args: tuple[torch.Tensor, ...], model: nn.Module, plan: StepPlan) -> torch.fx.GraphModule:
    """`_trace`, then every op of the result must be one the export supports (supported.py)."""
    gm = _trace(fn, args)
    check_ops(gm, SUPPORTED_ATEN_OPS, model, plan.in_shape, plan.batch_size)
    return gm


def _example_params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone().float() for p in model.parameters()]


def _example_buffers(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    buffers = dict(model.named_buffers())
    return [buffers[n].detach().clone().float() for n in names]


def sgd_update(opt: SGDConfig, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
               bufs: Sequence[torch.Tensor], lr: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """torch.optim.SGD (dampening 0): g += wd * p; buf = m * buf + g; p -= lr * (g + m * buf if nesterov
    else buf). With zero buffers the first step is torch's buf = g."""
    momentum, wd = float(opt.momentum), float(opt.weight_decay)
    if not opt.nesterov:
        new_bufs = [momentum * b + (g + wd * p) for p, g, b in zip(params, grads, bufs, strict=True)]
        return [p - lr * b for p, b in zip(params, new_bufs, strict=True)], new_bufs
    decayed = [g + wd * p for p, g in zip(params, grads, strict=True)]
    new_bufs = [momentum * b + g for g, b in zip(decayed, bufs, strict=True)]
    return [p - lr * (g + momentum * b) for p, g, b in zip(params, decayed, new_bufs, strict=True)], new_bufs


def adamw_update(opt: AdamWConfig, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 exp_avg: Sequence[torch.Tensor], exp_avg_sq: Sequence[torch.Tensor], lr: torch.Tensor,
                 step: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """torch.optim.AdamW (no amsgrad, not maximizing), `step` the 1-based count of this update."""
    (b1, b2), eps, wd = opt.betas, float(opt.eps), float(opt.weight_decay)
    step_size = lr / (1 - torch.pow(b1, step))
    bc2_sqrt = torch.sqrt(1 - torch.pow(b2, step))
    new_p, new_m, new_v = [], [], []
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq, strict=True):
        m = m + (1 - b1) * (g - m)  # torch's lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g * g
        new_p.append(p * (1 - lr * wd) - step_size * (m / (torch.sqrt(v) / bc2_sqrt + eps)))
        new_m.append(m)
        new_v.append(v)
    return new_p, new_m, new_v


def _update(opt: OptimizerConfig, params: list[torch.Tensor], grads: Sequence[torch.Tensor],
            slots: list[Sequence[torch.Tensor]], lr: torch.Tensor, step: torch.Tensor | None
            ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """New parameters and optimizer slots (in `opt.slots` order)."""
    if isinstance(opt, SGDConfig):
        new_params, bufs = sgd_update(opt, params, grads, slots[0], lr)
        return new_params, [bufs]
    new_params, m, v = adamw_update(opt, params, grads, slots[0], slots[1], lr, step)
    return new_params, [m, v]


def _step_fn(model: nn.Module, plan: StepPlan) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The function that make_fx traces: (lr, x, targets, weights, *state) -> (loss, *new state), state in
    the order of `plan.io` (AdamW step, dropout noise, parameters, optimizer slots, buffers)."""
    n, k, nb = len(plan.param_names), len(plan.dropout), len(plan.buffer_names)
    n_step, n_slots = int(plan.optimizer.takes_step), len(plan.optimizer.slots)
    modules = [d.module for d in plan.dropout]

    def step(lr, x, targets, weights, *state):
        t, noise = (state[0] if n_step else None), state[n_step:n_step + k]
        state = state[n_step + k:]
        params = [p.requires_grad_() for p in state[:n]]
        slots = [state[n + i * n:n + (i + 1) * n] for i in range(n_slots)]
        tensors = dict(zip(plan.param_names, params, strict=True))
        tensors.update(zip(plan.buffer_names, state[n + n_slots * n:], strict=True))
        keep = (weights > 0).to(x.dtype) if nb else None
        updates: dict[str, torch.Tensor] = {}
        with forwards_replaced(train_forwards(model, keep, dict(zip(modules, noise, strict=True)), updates)):
            logits = functional_call(model, tensors, (x,))
        loss = student_loss(logits, targets, weights, plan.loss)  # the runtime's torch backend calls it too
        grads = torch.autograd.grad(loss, params)
        new_params, new_slots = _update(plan.optimizer, params, grads, slots, lr, t)
        return (loss.detach(), *(p.detach() for p in new_params), *(b.detach() for s in new_slots for b in s),
                *(updates[b].detach() for b in plan.buffer_names))

    return step


def _example_targets(plan: StepPlan) -> torch.Tensor:
    if plan.loss.targets == "index":
        return torch.zeros(plan.batch_size, dtype=torch.int64)
    return torch.full((plan.batch_size, plan.num_classes), 1.0 / plan.num_classes)


def trace_train_step(model: nn.Module, plan: StepPlan) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    """The train step as an fx graph of core ATen ops (all with ONNX translations), and its example args."""
    params = _example_params(model)
    b = plan.batch_size
    args = (torch.tensor(0.01), torch.zeros(b, *plan.in_shape), _example_targets(plan), torch.ones(b),
            *([torch.tensor(1.0)] if plan.optimizer.takes_step else []),
            *(torch.full((b, *d.shape), 0.5) for d in plan.dropout),
            *params, *(torch.zeros_like(p) for _ in plan.optimizer.slots for p in params),
            *_example_buffers(model, plan.buffer_names))
    was_training = model.training
    model.train()
    try:
        return _trace_checked(_step_fn(model, plan), args, model, plan), args
    finally:
        model.train(was_training)


def export_train_step(model: nn.Module, plan: StepPlan) -> bytes:
    """ONNX bytes of one train step, inputs/outputs named as in `plan.io`."""
    gm, args = trace_train_step(model, plan)
    io = plan.io
    return _to_onnx(gm, args, io.train_inputs, io.train_outputs)


def export_inference(model: nn.Module, plan: StepPlan) -> bytes:
    """ONNX bytes of (x, params, buffers) -> logits in eval mode (BatchNorm on its running statistics,
    no dropout); parameters and buffers are inputs so a device feeds its trained ones."""
    names = [*plan.param_names, *plan.buffer_names]

    def infer(x, *params):
        return functional_call(model, dict(zip(names, params, strict=True)), (x,))

    args = (torch.zeros(plan.batch_size, *plan.in_shape), *_example_params(model),
            *_example_buffers(model, plan.buffer_names))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            gm = _trace_checked(infer, args, model, plan)
    finally:
        model.train(was_training)
    io = plan.io
    return _to_onnx(gm, args, io.inference_inputs, io.inference_outputs)
