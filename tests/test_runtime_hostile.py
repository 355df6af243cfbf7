"""Hostile trainers, bundles, headers and budgets on the device side (issue 13, runtime part).

Every case must end in the exact runtime/formats error type, before onnxruntime sees a graph, and the
exporter's own bundles must still pass the checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest
import torch
from onnx import TensorProto, helper

import formats
import formats.atomic
import runtime
from condenser.export import AdamWConfig, ExportSettings, LossConfig, SGDConfig, export_trainer, train_step
from condenser.export.supported import SUPPORTED_ATEN_OPS
from formats.testing import make_data
from runtime import onnx_check
from runtime.backends import onnx_backend
from runtime.bundle import TrainerBundle
from runtime.cli import _shown
from runtime.cli import main as cli_main
from runtime.errors import BundleError, TrainerError

pytestmark = pytest.mark.usefixtures("bounded_memory")
MEMORY_BOUND = 512 << 20  # per test, checked by tests/conftest.py bounded_memory

ROOT = Path(__file__).resolve().parents[1]
SHAPE, K, B = (1, 8, 8), 3, 4
USER = "examples.user_models:"
VARIANTS = {  # together they emit every op of onnx_check.ALLOWED_OPS (and every aten op of supported.py)
    "convnet": ("convnet", {"width": 2, "depth": 2}, {}),
    "convnet-leaky-max": ("convnet", {"width": 2, "depth": 2, "act": "leakyrelu", "pool": "max"}, {}),
    "convnet-sigmoid-plain": ("convnet", {"width": 2, "depth": 2, "act": "sigmoid", "norm": "none"}, {}),
    "resnet-ap10": ("resnet-ap10", {"width": 2}, {}),
    "residual-gelu-layernorm-dropout-adamw-kl": (USER + "residual_mlp", {"width": 8}, {
        "optimizer": AdamWConfig(), "loss": LossConfig("kl_divergence", temperature=4.0)}),
    "group-instance-norm-pools-nesterov-hard": (USER + "group_norm_cnn", {"width": 4}, {
        "optimizer": SGDConfig(nesterov=True), "loss": LossConfig("hard_cross_entropy")}),
    "batchnorm": (USER + "bn_mlp", {"width": 8}, {}),
    # depthwise and strided convolutions: their input gradients stay ConvTranspose (stride-1 ones are Conv)
    "mobilenet-depthwise-strided": (USER + "mobilenet_like", {"width": 4}, {}),
}


TRACED_OPS: set[str] = set()  # aten ops of every graph the `exported` fixture traced


def _recording_trace(trace):
    def wrapper(fn, args):
        gm = trace(fn, args)
        TRACED_OPS.update(str(n.target) for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload))
        return gm
    return wrapper


@pytest.fixture(scope="module")
def exported() -> dict[str, TrainerBundle]:
    torch.set_num_threads(1)
    if str(ROOT) not in sys.path:  # the example factories import as examples.user_models
        sys.path.insert(0, str(ROOT))
    out = {}
    trace = train_step._trace
    train_step._trace = _recording_trace(trace)
    try:
        for name, (arch, kwargs, extra) in VARIANTS.items():
            s = ExportSettings(arch=arch, in_shape=SHAPE, num_classes=K, batch_size=B, model_kwargs=kwargs, **extra)
            out[name] = export_trainer(s)
    finally:
        train_step._trace = trace
    return out


@pytest.fixture(scope="module")
def blob(exported) -> bytes:
    return exported["convnet"].to_bytes()


def with_graph(blob: bytes, model: onnx.ModelProto | bytes, key: str = "train_step") -> bytes:
    """The bundle blob with one graph replaced (msgpack-level: TrainerBundle itself would refuse it)."""
    d = msgpack.unpackb(blob)
    d[key] = model if isinstance(model, bytes) else model.SerializeToString()
    return msgpack.packb(d, use_bin_type=True)


def real_graph(bundle: TrainerBundle) -> onnx.ModelProto:
    return onnx.load_from_string(bundle.train_step)


def external_tensor(name: str, location: str) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    return t


def tiny_model(nodes: list[onnx.NodeProto], initializers: list[TensorProto] = (), **kw: Any) -> onnx.ModelProto:
    """y = graph(x) over float[4], opset 18: the smallest model onnxruntime would run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], **kw)
    model.ir_version = 10
    return model


def reading_graph(location: str) -> onnx.ModelProto:
    """y = x + w, where w's data is read from `location` by whoever resolves external data."""
    return tiny_model([helper.make_node("Add", ["x", "w"], ["y"])], [external_tensor("w", location)])


@pytest.fixture
def no_sessions(monkeypatch) -> list[Any]:
    """Records every onnxruntime session that is created; the hostile tests expect none."""
    made: list[Any] = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: made.append(a) or pytest.fail("session made"))
    return made


# --------------------------------------------------------------------------- the exporter's own bundles


def test_every_exported_variant_passes_and_together_they_use_the_whole_allow_list(exported):
    seen: set[tuple[str, str]] = set()
    for bundle in exported.values():
        again = TrainerBundle.from_bytes(bundle.to_bytes())  # what a device reads
        for graph, what in ((again.train_step, "train-step"), (again.inference, "inference")):
            report = onnx_check.check_model(graph, what)
            assert report.nodes > 0 and set(report.ops) <= onnx_check.ALLOWED_OPS
            seen |= set(report.ops)
    assert seen == onnx_check.ALLOWED_OPS  # no stale entries: regenerate the list with the exporter


def test_the_variants_trace_to_exactly_the_supported_aten_ops(exported):
    assert TRACED_OPS == SUPPORTED_ATEN_OPS  # no stale entries in condenser/export/supported.py either


def test_exported_bundle_still_trains_with_onnx(exported):
    trainer = onnx_backend.OnnxTrainer(exported["resnet-ap10"], threads=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, *SHAPE)).astype(np.float32)
    loss = trainer.step(0.01, x, np.full((B, K), 1 / K, np.float32), np.ones(B, np.float32))
    assert math.isfinite(loss)


def test_check_needs_neither_onnx_nor_torch(tmp_path, blob):
    path = tmp_path / "t.trainer"
    path.write_bytes(blob)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from runtime.bundle import TrainerBundle
        TrainerBundle.load({str(path)!r})
        assert "onnx" not in sys.modules and "torch" not in sys.modules, "imported"
        print("ok")
    """)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ------------------------------------------------------------------------------------ external data


def test_external_initializer_is_refused_before_any_session(tmp_path, monkeypatch, exported, blob, no_sessions):
    secret = tmp_path / "secret.bin"
    np.arange(4, dtype=np.float32).tofile(secret)
    model = real_graph(exported["convnet"])
    model.graph.initializer.append(external_tensor("stolen", secret.name))
    hostile = with_graph(blob, model)
    mdc = tmp_path / "hostile.mdc"
    formats.write_mdc(mdc, make_data(num_classes=K, ipc_max=2, image_shape=SHAPE, views=0, trainer_bundle=hostile))
    monkeypatch.chdir(tmp_path)  # where onnxruntime would resolve the relative location
    before = secret.stat()
    ds = runtime.load(mdc, budget=1)
    with pytest.raises(BundleError, match="initializer.*external_data"):
        runtime.train(ds, backend="onnx", epochs=1, batch_size=B, threads=1)
    assert no_sessions == [] and secret.stat().st_atime_ns == before.st_atime_ns


def test_external_data_in_a_constant_attribute_is_refused(blob):
    const = helper.make_node("Constant", [], ["w"])
    const.attribute.append(helper.make_attribute("value", external_tensor("v", "secret.bin")))
    model = tiny_model([const, helper.make_node("Add", ["x", "w"], ["y"])])
    with pytest.raises(BundleError, match=r"node 0 \(Constant\) attribute 'value'.*external_data"):
        TrainerBundle.from_bytes(with_graph(blob, model))


def test_external_data_location_alone_is_refused():
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    model = tiny_model([helper.make_node("Add", ["x", "w"], ["y"])], [t])
    with pytest.raises(BundleError, match="data_location 1"):
        onnx_check.check_model(model.SerializeToString())


def test_session_options_resolve_external_data_in_an_empty_directory(tmp_path, monkeypatch):
    """Behind the check: even an unchecked graph cannot read a file next to the working directory."""
    np.arange(4, dtype=np.float32).tofile(tmp_path / "secret.bin")
    monkeypatch.chdir(tmp_path)
    model = reading_graph("secret.bin").SerializeToString()
    feed = {"x": np.zeros(4, np.float32)}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain.log_severity_level = 4
    (y,) = ort.InferenceSession(model, plain, providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_array_equal(y, [0, 1, 2, 3])  # the attack works without the options
    empty = tmp_path / "empty"
    empty.mkdir()
    ours = onnx_backend._options(ort, 1, str(empty))
    ours.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ours.log_severity_level = 4
    with pytest.raises(Exception, match="External data path"):
        ort.InferenceSession(model, ours, providers=["CPUExecutionProvider"])
    monkeypatch.setattr(onnx_backend, "check_model", lambda *a: None)
    with pytest.raises(TrainerError, match="cannot load the trainer's train-step graph"):
        onnx_backend._session(model, 1, "train-step")


def test_onnx_backend_checks_the_bytes_it_hands_to_onnxruntime(exported, no_sessions):
    bundle = dataclasses.replace(exported["convnet"])
    bundle.train_step = reading_graph("secret.bin").SerializeToString()  # swapped after construction
    with pytest.raises(BundleError, match="external_data"):
        onnx_backend.OnnxTrainer(bundle, threads=1)
    assert no_sessions == []


# ----------------------------------------------------------------------- ops, functions, subgraphs


@pytest.mark.parametrize(("domain", "op"), [("", "Upsample"), ("", "If"), ("com.microsoft", "FusedMatMul"),
                                            ("ai.onnx", "Add"), ("", "add")])
def test_op_outside_the_allow_list_is_named(blob, domain, op):
    model = tiny_model([helper.make_node(op, ["x"], ["y"], domain=domain)])
    with pytest.raises(BundleError, match=f"node 0: op '{op}' \\(domain '{domain}'\\)"):
        TrainerBundle.from_bytes(with_graph(blob, model, "inference"))


def test_op_with_terminal_escapes_in_its_name_is_named_escaped():
    model = tiny_model([helper.make_node("\x1b[2JEvil", ["x"], ["y"])])
    with pytest.raises(BundleError) as exc:
        onnx_check.check_model(model.SerializeToString())
    assert "\x1b" not in str(exc.value) and "\\x1b[2JEvil" in str(exc.value)


@pytest.mark.parametrize("graphs", [1, 2], ids=["g", "graphs"])
def test_graph_attribute_subgraph_is_refused_even_on_an_allowed_op(graphs):
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "body", [], [])
    node = helper.make_node("Identity", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("body", body if graphs == 1 else [body, body]))
    with pytest.raises(BundleError, match="subgraph"):
        onnx_check.check_model(tiny_model([node]).SerializeToString())


def test_local_functions_are_refused():
    fn = helper.make_function("evil", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    model = tiny_model([helper.make_node("Identity", ["x"], ["y"])], functions=[fn])
    with pytest.raises(BundleError, match="functions"):
        onnx_check.check_model(model.SerializeToString())


@pytest.mark.parametrize("opset", [("", 17), ("", 21), ("com.microsoft", 1)])
def test_opset_outside_the_allow_list_is_refused(opset):
    model = tiny_model([helper.make_node("Identity", ["x"], ["y"])])
    model.opset_import.append(helper.make_opsetid(*opset))
    with pytest.raises(BundleError, match=f"opset '{opset[0]}' version {opset[1]}"):
        onnx_check.check_model(model.SerializeToString())


def test_sparse_initializer_and_string_tensors_are_refused():
    model = tiny_model([helper.make_node("Identity", ["x"], ["y"])])
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    with pytest.raises(BundleError, match="sparse_initializer"):
        onnx_check.check_model(model.SerializeToString())
    strings = tiny_model([helper.make_node("Identity", ["x"], ["y"])],
                         [helper.make_tensor("s", TensorProto.STRING, [1], [b"a"])])
    with pytest.raises(BundleError, match="data_type 8"):
        onnx_check.check_model(strings.SerializeToString())


# ------------------------------------------------------------------------------------------ size caps


def test_oversize_graph_bytes_nodes_and_fields(monkeypatch, exported):
    graph = exported["convnet"].train_step
    report = onnx_check.check_model(graph)
    monkeypatch.setattr(onnx_check, "MAX_MODEL_BYTES", len(graph) - 1)
    with pytest.raises(BundleError, match=f"{len(graph)} bytes, more than"):
        onnx_check.check_model(graph)
    monkeypatch.undo()
    monkeypatch.setattr(onnx_check, "MAX_NODES", report.nodes - 1)
    with pytest.raises(BundleError, match=f"more than {report.nodes - 1} nodes"):
        onnx_check.check_model(graph)
    monkeypatch.undo()
    monkeypatch.setattr(onnx_check, "MAX_FIELDS", 1000)
    with pytest.raises(BundleError, match="more than 1000 protobuf fields"):
        onnx_check.check_model(graph)


def test_tensor_element_bomb_is_refused_without_allocating():
    bomb = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 1 << 20])
    model = tiny_model([helper.make_node("Add", ["x", "w"], ["y"])], [bomb]).SerializeToString()
    rss = psutil.Process().memory_info().rss
    with pytest.raises(BundleError, match="tensor elements"):
        onnx_check.check_model(model)
    assert psutil.Process().memory_info().rss - rss < 64 << 20
    negative = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-4])
    with pytest.raises(BundleError, match="negative dimension -4"):
        onnx_check.check_model(tiny_model([helper.make_node("Add", ["x", "w"], ["y"])], [negative])
                               .SerializeToString())


# -------------------------------------------------------------------------------- wire-format lies


def _key(number: int, wire: int) -> bytes:
    """A one-byte field key (field numbers below 16)."""
    assert number < 16
    return bytes([number << 3 | wire])


def _len_field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return _key(number, 2) + bytes([len(payload)]) + payload


def _model_with_node(node: bytes) -> bytes:
    opset = _len_field(8, _len_field(1, b"") + _key(2, 0) + bytes([18]))
    return opset + _len_field(7, _len_field(1, node))


@pytest.mark.parametrize(("model", "match"), [
    (b"\x08", "truncated varint"),
    (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (b"\x3a\x7f\x00", "runs past the end"),
    (b"\x3b", "wire type 3"),
    (b"\xfa\x07\x00", "unknown field 127"),
    (b"", "empty"),
    (_model_with_node(b""), "op '' \\(domain ''\\)"),
    (_model_with_node(_len_field(4, b"Add") + _len_field(4, b"If")), "op_type appears twice"),
    (_model_with_node(_len_field(4, b"\xff\xfe")), "op_type is not UTF-8"),
    (_model_with_node(_key(4, 0) + b"\x01"), "op_type has wire type 0"),
    (_model_with_node(_len_field(4, b"Add") + _len_field(8, b"f")), "overload"),
    (_len_field(8, _len_field(1, b"") + _key(2, 0) + bytes([18])), "0 graph fields"),
    (_len_field(7, b"") * 2, "2 graph fields"),
    (_len_field(7, b""), r"imports opsets \[\], expected \[''\]"),
    (_len_field(8, _len_field(1, b"") + _key(2, 0) + bytes([18])) * 2 + _len_field(7, b""), "appears twice"),
], ids=["truncated", "long-varint", "past-end", "group", "unknown-field", "empty", "no-op", "op-twice",
        "not-utf8", "op-varint", "overload", "no-graph", "two-graphs", "no-opset", "opset-twice"])
def test_wire_format_lies(model, match):
    with pytest.raises(BundleError, match=match):
        onnx_check.check_model(model)


def test_every_truncation_of_a_real_graph_is_a_bundle_error(exported):
    graph = exported["convnet-sigmoid-plain"].inference
    assert onnx_check.check_model(graph).nodes > 0
    for cut in range(0, len(graph), max(1, len(graph) // 400)):
        with pytest.raises(BundleError):
            onnx_check.check_model(graph[:cut])


# ------------------------------------------------------------------------------- hostile bundle maps


def _set(path: str, value: Any):
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return edit


_DELETE = object()
HOSTILE_BUNDLES = {
    "meta-not-map": (_set("meta", [1, 2]), "'meta' is not a map"),
    "in_shape-string": (_set("meta.in_shape", "abc"), "meta.in_shape"),
    "in_shape-2d": (_set("meta.in_shape", [8, 8]), "in_shape"),
    "in_shape-negative": (_set("meta.in_shape", [1, -8, 8]), "meta.in_shape"),
    "in_shape-huge": (_set("meta.in_shape", [1, 2**63, 8]), "meta.in_shape"),
    "num_classes-string": (_set("meta.num_classes", "3"), "meta.num_classes"),
    "num_classes-bool": (_set("meta.num_classes", True), "meta.num_classes"),
    "num_classes-float": (_set("meta.num_classes", 1.5), "meta.num_classes"),
    "batch_size-none": (_set("meta.batch_size", None), "meta.batch_size"),
    "batch_size-missing": (_set("meta.batch_size", _DELETE), "lacks key 'batch_size'"),
    "batch_size-zero": (_set("meta.batch_size", 0), "meta.batch_size"),
    "param_names-int": (_set("meta.param_names", 5), "meta.param_names"),
    "param_names-mixed": (_set("meta.param_names", ["a", 1]), "meta.param_names"),
    "param_names-repeated": (None, "meta.param_names repeats"),
    "param_shapes-string": (_set("meta.param_shapes", "x"), "meta.param_shapes"),
    "param_shape-element": (None, r"meta.param_shapes\[0\]"),
    "param_shape-overflow": (None, "has 0 bytes, shape"),
    "param_shape-ndim": (None, r"meta.param_shapes\[0\]"),
    "optimizer-list": (_set("meta.optimizer", []), "meta.optimizer"),
    "optimizer-momentum-string": (_set("meta.optimizer.momentum", "x"), "meta.optimizer.momentum"),
    "optimizer-momentum-nan": (_set("meta.optimizer.momentum", float("nan")), "meta.optimizer.momentum"),
    "optimizer-no-decay": (_set("meta.optimizer.weight_decay", _DELETE), "lacks key 'weight_decay'"),
    "optimizer-adam": (_set("meta.optimizer.name", "adam"), "unsupported optimizer 'adam'"),
    "train_inputs-none": (_set("meta.train_inputs", None), "meta.train_inputs"),
    "train_inputs-short": (None, "train-step names do not fit"),
    "arch-int": (_set("meta.arch", 5), "meta.arch"),
    "arch_kwargs-string": (_set("meta.arch_kwargs", "width=2"), "meta.arch_kwargs"),
    "arch_kwargs-nested": (_set("meta.arch_kwargs", {"width": [1, 2]}), "meta.arch_kwargs"),
    "mean-string": (_set("meta.mean", "abc"), "meta.mean"),
    "std-inf": (_set("meta.std", [float("inf")]), "meta.std"),
    "seed-string": (_set("meta.seed", "0"), "meta.seed"),
    "opset-negative": (_set("meta.opset", -1), "meta.opset"),
    "producer-int-values": (_set("meta.producer", {"torch": [1]}), "meta.producer"),
    "version-bool": (_set("version", True), "unsupported version True"),
    "version-string": (_set("version", "1"), "unsupported version '1'"),
    "version-future": (_set("version", 2), "unsupported version 2"),
    "format-other": (_set("format", "onnx"), "not a 'multisize-trainer' blob"),
    "graph-string": (_set("train_step", "model"), "'train_step' graph is missing or not bytes"),
    "graph-empty": (_set("inference", b""), "'inference' graph is missing or not bytes"),
    "params-string": (_set("params", "x"), "'params' must list"),
    "params-not-bytes": (None, "has int bytes"),
    "params-short": (None, "bytes, shape"),
    "params-nan": (None, "holds NaN or inf"),
}


def _special(name: str, d: dict[str, Any]) -> None:
    meta = d["meta"]
    if name == "param_names-repeated":
        meta["param_names"] = [meta["param_names"][0]] * len(meta["param_names"])
    elif name == "param_shape-element":
        meta["param_shapes"][0] = [2, "a"]
    elif name == "param_shape-overflow":  # np.prod in int64 wraps 2**93 to 0, which b"" would match
        meta["param_shapes"][0] = [2**31] * 3
        d["params"][0] = b""
    elif name == "param_shape-ndim":
        meta["param_shapes"][0] = [1] * 71
    elif name == "train_inputs-short":
        meta["train_inputs"] = meta["train_inputs"][:-1]
    elif name == "params-not-bytes":
        d["params"][0] = 7
    elif name == "params-short":
        d["params"][0] = d["params"][0][:-4]
    elif name == "params-nan":
        d["params"][0] = np.full(len(d["params"][0]) // 4, np.nan, "<f4").tobytes()


@pytest.mark.parametrize("name", list(HOSTILE_BUNDLES))
def test_hostile_bundle_is_a_bundle_error_naming_the_field(blob, name):
    edit, match = HOSTILE_BUNDLES[name]
    d = msgpack.unpackb(blob)
    if edit is None:
        _special(name, d)
    else:
        edit(d)
    hostile = msgpack.packb(d, use_bin_type=True)
    with pytest.raises(BundleError, match=match) as exc:
        TrainerBundle.from_bytes(hostile)
    assert isinstance(exc.value, formats.FormatError) and isinstance(exc.value, runtime.TrainerError)


@pytest.mark.parametrize("blob_", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({1: 2}), b"\x91" * 5000],
                         ids=["empty", "reserved-byte", "list", "int-keys", "deep-nesting"])
def test_garbage_blobs_are_bundle_errors(blob_):
    with pytest.raises(BundleError):
        TrainerBundle.from_bytes(blob_)


def test_bundle_file_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, tmp_path / "missing"):
        with pytest.raises(BundleError, match=re.escape(str(path))):
            TrainerBundle.load(path)


def test_save_uses_the_atomic_helper_and_leaves_no_temp(tmp_path, exported, monkeypatch):
    calls: list[Path] = []
    real = formats.atomic.atomic_write
    monkeypatch.setattr("runtime.bundle.atomic_write", lambda p, w: calls.append(Path(p)) or real(p, w))
    target = tmp_path / "t.trainer"
    exported["convnet"].save(target)
    assert calls == [target] and sorted(p.name for p in tmp_path.iterdir()) == ["t.trainer"]
    assert TrainerBundle.load(target).meta == exported["convnet"].meta


# ------------------------------------------------------------------------------------------ budgets


@pytest.fixture(scope="module")
def ten_blocks(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("budget") / "ten.mdc"
    formats.write_mdc(path, make_data(num_classes=2, ipc_max=10, views=0))
    return path


@pytest.mark.parametrize("budget", [0, -1, 11, "3", 1.5, True, np.bool_(True), np.float32(2), [3]])
@pytest.mark.parametrize("clause", [runtime.BudgetError, formats.BudgetError])
def test_every_bad_budget_is_caught_by_either_packages_budget_error(ten_blocks, budget, clause):
    with pytest.raises(clause) as exc:
        runtime.load(ten_blocks, budget=budget)
    assert type(exc.value) is runtime.BudgetError and isinstance(exc.value, ValueError)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                   np.uint64])
def test_numpy_integer_budgets_are_python_ints(ten_blocks, dtype):
    ds = runtime.load(ten_blocks, budget=dtype(3))
    assert ds.ipc == 3 and len(ds) == 6
    with pytest.raises(runtime.BudgetError, match="outside 1..10"):
        runtime.load(ten_blocks, budget=dtype(11))


def test_budget_errors_of_the_budget_object_are_formats_budget_errors_too():
    with pytest.raises(formats.BudgetError):
        runtime.Budget(seconds=-1)


# ------------------------------------------------------------------------------------------ printing


def test_info_escapes_control_characters_from_the_header(tmp_path, capsys):
    data = dataclasses.replace(make_data(num_classes=2, ipc_max=2, views=1),
                               dataset="evil\x1b[2J\x1b]0;owned\x07\r\u202egnp.exe\nfake line")
    path = tmp_path / "evil.mdc"
    formats.write_mdc(path, data)
    assert cli_main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out.replace("\n", "") for ch in "\x1b\x07\r\u202e")
    assert "evil\\x1b[2J\\x1b]0;owned\\x07\\r\\u202egnp.exe\\nfake line" in out
    assert len(out.splitlines()) == 2 + 1 + 2  # file, views, trainer, one line per block: no injected line


def test_cli_error_messages_are_escaped(monkeypatch, capsys):
    """Error messages may quote a header (a class name, a codec); they reach the terminal escaped too."""
    def hostile(_a: Any) -> int:
        raise formats.InconsistentHeaderError("class name '\x1b[31mred' is too long")

    monkeypatch.setattr("runtime.cli._info", hostile)
    assert cli_main(["info", "any.mdc"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "'\\x1b[31mred'" in err


@pytest.mark.parametrize(("value", "kind", "shown"), [
    ({"a": 1}, "str", "<invalid dict>"), (True, "int", "<invalid bool>"), ("3", "int", "<invalid str>"),
    ([1, "2"], "shape", "<invalid list>"), ((1, 8, 8), "shape", "(1, 8, 8)"), (2.5, "num", "2.5"),
    (float("nan"), "num", "nan"), (None, "num", "<invalid NoneType>"), ("tab\there", "str", "tab\\there"),
    ("Fashion-MNIST ü", "str", "Fashion-MNIST ü"),
])
def test_header_values_are_type_checked_before_printing(value, kind, shown):
    assert _shown(value, kind) == shown
