"""Trace one SGD train step, and the inference pass, of a model into ONNX graphs.

Both graphs are pure functions of their inputs (parameters and momentum buffers in, new ones
out) so a device runs them with onnxruntime alone and keeps the state itself. The step is:
forward, per-sample-weighted soft-label cross-entropy, autograd backward, then PyTorch's SGD
update; momentum and weight decay are constants of the graph, the learning rate is an input.
Recipe: make_fx over torch.autograd.grad with the decompositions of decompositions.py, the graph
rewrites of fusions.py (first conv + instance norm block), then torch.onnx.export(dynamo=True) of the
traced graph with the onnxruntime-oriented translations of translations.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from condenser.export.decompositions import decomposition_table, first_pass_table
from condenser.export.errors import ExportError
from condenser.export.fusions import fuse_narrow_conv_instance_norm
from condenser.export.translations import reset_running_inputs, translation_table
from runtime.bundle import SGDConfig
from runtime.torch_losses import soft_cross_entropy

OPSET = 18


@dataclass(frozen=True)
class GraphNames:
    """Input and output names of the two graphs, in positional order."""

    train_inputs: list[str]
    train_outputs: list[str]
    inference_inputs: list[str]
    inference_outputs: list[str]


def graph_names(param_names: list[str]) -> GraphNames:
    params = [f"param:{n}" for n in param_names]
    return GraphNames(
        train_inputs=["lr", "x", "targets", "weights", *params, *(f"momentum:{n}" for n in param_names)],
        train_outputs=["loss", *(f"new_param:{n}" for n in param_names),
                       *(f"new_momentum:{n}" for n in param_names)],
        inference_inputs=["x", *params],
        inference_outputs=["logits"],
    )




def exportable_param_names(model: nn.Module) -> list[str]:
    """Parameter names in graph order; buffers (BatchNorm running stats) are not carried by the step."""
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        raise ExportError(f"model has buffers ({', '.join(buffers[:4])}...); the train step carries no "
                          "running statistics: export a model built with norm='instance' or 'none' "
                          "(convnet, resnet-ap10, resnet18)")
    return [n for n, _ in model.named_parameters()]


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


def _example_params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone().float() for p in model.parameters()]


def trace_train_step(model: nn.Module, batch_size: int, in_shape: tuple[int, int, int], num_classes: int,
                     sgd: SGDConfig) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    """The train step as an fx graph of core ATen ops (all with ONNX translations), and its example args."""
    names = exportable_param_names(model)
    n = len(names)
    momentum, wd = float(sgd.momentum), float(sgd.weight_decay)

    def step(lr, x, targets, weights, *state):
        params = [p.requires_grad_() for p in state[:n]]
        logits = functional_call(model, dict(zip(names, params, strict=True)), (x,))
        loss = soft_cross_entropy(logits, targets, weights)  # the server's and the runtime's loss
        grads = torch.autograd.grad(loss, params)
        bufs = [momentum * b + (g + wd * p) for p, g, b in zip(params, grads, state[n:], strict=True)]
        new_params = [p - lr * b for p, b in zip(params, bufs, strict=True)]
        return (loss.detach(), *(p.detach() for p in new_params), *(b.detach() for b in bufs))

    params = _example_params(model)
    args = (torch.tensor(0.01), torch.zeros(batch_size, *in_shape),
            torch.full((batch_size, num_classes), 1.0 / num_classes), torch.ones(batch_size),
            *params, *(torch.zeros_like(p) for p in params))
    return _trace(step, args), args


def export_train_step(model: nn.Module, batch_size: int, in_shape: tuple[int, int, int], num_classes: int,
                      sgd: SGDConfig) -> bytes:
    """ONNX bytes of one train step, inputs/outputs named as in `graph_names`."""
    gm, args = trace_train_step(model, batch_size, in_shape, num_classes, sgd)
    gn = graph_names(exportable_param_names(model))
    return _to_onnx(gm, args, gn.train_inputs, gn.train_outputs)


def export_inference(model: nn.Module, batch_size: int, in_shape: tuple[int, int, int]) -> bytes:
    """ONNX bytes of (x, params) -> logits; parameters are inputs so a device feeds its trained ones."""
    names = exportable_param_names(model)

    def infer(x, *params):
        return functional_call(model, dict(zip(names, params, strict=True)), (x,))

    args = (torch.zeros(batch_size, *in_shape), *_example_params(model))
    with torch.no_grad():
        gm = _trace(infer, args)
    gn = graph_names(names)
    return _to_onnx(gm, args, gn.inference_inputs, gn.inference_outputs)
