"""The core ATen ops a traced train step or inference pass may hold: what the layers of docs/trainer.md
trace to after decompositions.py, each with an ONNX translation that a device accepts
(runtime/onnx_check.py). An op outside this set is an UnsupportedOpError naming it and the module that
called it, before anything is converted. Regenerate it the way runtime/onnx_check.py's allow-list is
(tests/test_runtime_hostile.py exports every variant; tests/test_export_models.py checks both lists).
"""

SUPPORTED_ATEN_OPS: frozenset[str] = frozenset(f"aten.{op}" for op in (
    "_log_softmax.default", "_to_copy.default", "add.Tensor", "addmm.default", "alias.default", "argmax.default",
    "avg_pool2d.default", "avg_pool2d_backward.default", "bmm.default", "cat.default", "clamp.default",
    "clone.default", "constant_pad_nd.default", "convolution.default", "copy_.default", "div.Scalar",
    "div.Tensor", "empty.memory_format", "eq.Scalar", "erf.default", "exp.default", "expand.default",
    "flip.default", "full.default", "full_like.default", "gather.default", "ge.Scalar", "gelu.default", "gt.Scalar",
    "isnan.default", "leaky_relu.default", "log.default", "max_pool2d_with_indices.default",
    "max_pool2d_with_indices_backward.default", "mean.dim", "mm.default", "mul.Tensor",
    "native_batch_norm.default", "native_group_norm.default", "native_group_norm_backward.default",
    "native_layer_norm.default", "neg.default", "permute.default", "pow.Scalar",
    "relu.default", "relu_.default", "repeat.default", "rsqrt.default", "scalar_tensor.default",
    "scatter_add.default", "select.int", "sigmoid.default", "slice.Tensor", "sqrt.default", "sub.Tensor",
    "sum.dim_IntList", "threshold_backward.default", "unsqueeze.default", "view.default", "where.self",
))
