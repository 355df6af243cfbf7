"""Check an ONNX trainer graph against what the exporter emits, before onnxruntime parses it.

A .mdc file is downloaded, so its embedded graphs are untrusted (docs/trainer.md lists every check).
onnxruntime would resolve external tensor data against the working directory, inline local
functions, run subgraphs and any registered contrib op. This module walks the protobuf wire format
itself (the `onnx` package is not part of the device install) and accepts only what the exporter
(condenser/export/) writes: ops and opsets from an allow-list, tensors with inline data, no local
functions, subgraphs, sparse tensors or training sections, within size caps. Anything else raises
BundleError naming the graph, the node and the op or field.

Field numbers are those of onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
TensorProto, OperatorSetIdProto). Unknown fields are refused: the exporter writes none.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from runtime.errors import BundleError

# What condenser/export/ emits, as (domain, op_type); "" is the default ai.onnx domain.
# Regenerate after an exporter change: export a bundle of every exportable variant (convnet with each
# act in relu/leakyrelu/sigmoid, pool in avg/max/none, norm in instance/none/batch; resnet-ap10; the user
# models of examples/user_models.py; each optimizer and loss: tests/test_runtime_hostile.py VARIANTS) with
# `condenser export-trainer`, then run `python -m runtime.onnx_check BUNDLE...`, which prints the ops of
# their graphs in this form.
ALLOWED_OPS: frozenset[tuple[str, str]] = frozenset(("", op) for op in (
    "Add", "ArgMax", "BatchNormalization", "Cast", "CastLike", "Concat", "Constant", "Conv", "ConvTranspose",
    "Div", "Equal", "Erf", "Exp", "Expand", "Gather", "GatherElements", "Gemm", "Greater", "GreaterOrEqual",
    "HardSigmoid", "Identity", "IsNaN", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "MatMul", "Max",
    "MaxPool", "Mul", "Neg", "Pad", "Pow", "Reciprocal", "ReduceMean", "ReduceSum", "Relu", "Reshape",
    "ScatterElements", "Shape", "Sigmoid", "Slice", "Sqrt", "Sub", "Tile", "Transpose", "Unsqueeze", "Where",
))
ALLOWED_OPSETS: dict[str, int] = {"": 18}  # condenser/export/train_step.py OPSET
# Element types of Constant values and initializers (onnx.proto TensorProto.DataType): FLOAT, INT64.
ALLOWED_TENSOR_TYPES: frozenset[int] = frozenset({1, 7})
# Attribute kinds (AttributeProto.AttributeType): FLOAT, INT, STRING, TENSOR, INTS.
ALLOWED_ATTRIBUTE_TYPES: frozenset[int] = frozenset({1, 2, 3, 4, 7})

# Caps, far above what the exporter writes (ConvNet-D3 width 128: 1.3 MB and about 1,000 nodes per
# train-step graph; ResNet-AP10: about 2,800 nodes) and far below what would exhaust a device.
MAX_MODEL_BYTES = 256 << 20
MAX_NODES = 200_000
MAX_TENSOR_ELEMENTS = 64 << 20  # all initializers and Constant values of one graph together
MAX_FIELDS = 4_000_000  # protobuf fields walked: bounds the check's own time on a crafted graph

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Fields each message may hold, and those refused with a reason (field number -> name).
_MODEL = {1: "ir_version", 2: "producer_name", 3: "producer_version", 4: "domain", 5: "model_version",
          6: "doc_string", 7: "graph", 8: "opset_import", 14: "metadata_props"}
_MODEL_REFUSED = {20: "training_info", 25: "functions (local functions)", 26: "configuration"}
_GRAPH = {1: "node", 2: "name", 5: "initializer", 10: "doc_string", 11: "input", 12: "output",
          13: "value_info", 16: "metadata_props"}
_GRAPH_REFUSED = {14: "quantization_annotation", 15: "sparse_initializer"}
_NODE = {1: "input", 2: "output", 3: "name", 4: "op_type", 5: "attribute", 6: "doc_string", 7: "domain",
         9: "metadata_props"}
_NODE_REFUSED = {8: "overload (a function call)", 10: "device_configurations"}
_ATTRIBUTE = {1: "name", 2: "f", 3: "i", 4: "s", 5: "t", 8: "ints", 13: "doc_string", 20: "type"}
_ATTRIBUTE_REFUSED = {6: "g (a subgraph)", 7: "floats", 9: "strings", 10: "tensors", 11: "graphs (subgraphs)",
                      14: "tp", 15: "type_protos", 21: "ref_attr_name (only valid in a function)",
                      22: "sparse_tensor", 23: "sparse_tensors"}
_TENSOR = {1: "dims", 2: "data_type", 4: "float_data", 5: "int32_data", 6: "string_data", 7: "int64_data",
           8: "name", 9: "raw_data", 10: "double_data", 11: "uint64_data", 12: "doc_string",
           14: "data_location", 16: "metadata_props"}
_TENSOR_REFUSED = {3: "segment", 13: "external_data"}
_OPSET = {1: "domain", 2: "version"}


class _Field(NamedTuple):
    number: int
    wire: int
    value: int | memoryview  # a varint's value, or the payload of a length-delimited or fixed field


@dataclass
class GraphReport:
    """What one checked graph holds: its ops (counted), nodes, and inline tensor elements."""

    ops: Counter[tuple[str, str]] = field(default_factory=Counter)
    nodes: int = 0
    tensor_elements: int = 0
    fields: int = 0


def _short(text: str) -> str:
    """repr() escapes control characters, so a crafted name cannot drive a terminal from an error message."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


class _Walker:
    """Reads the few messages the check needs; counts fields so a crafted graph cannot make it slow."""

    def __init__(self, what: str, allowed_ops: frozenset[tuple[str, str]] | None = ALLOWED_OPS):
        self.what = what
        self.allowed_ops = allowed_ops  # None: collect every op (the inventory), nothing else relaxed
        self.report = GraphReport()

    def fail(self, where: str, problem: str) -> BundleError:
        return BundleError(f"trainer bundle: {self.what} graph: {where}: {problem}")

    def varint(self, buf: memoryview, pos: int, where: str) -> tuple[int, int]:
        if pos < len(buf) and buf[pos] < 0x80:
            return buf[pos], pos + 1
        result = shift = 0
        while True:
            if pos >= len(buf):
                raise self.fail(where, "truncated varint")
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.fail(where, "varint longer than 10 bytes")

    def fields(self, buf: memoryview, where: str, allowed: dict[int, str],
               refused: dict[int, str]) -> Iterator[_Field]:
        """Each field of one message, in order; refused and unknown field numbers raise."""
        pos, end = 0, len(buf)
        while pos < end:
            key = buf[pos]  # one-byte varints (keys of fields 1..15, short lengths) are the common case
            key, pos = (key, pos + 1) if key < 0x80 else self.varint(buf, pos, where)
            number, wire = key >> 3, key & 7
            if number not in allowed:
                problem = f"{refused[number]} (field {number}) is not allowed" if number in refused else (
                    f"unknown field {number}")
                raise self.fail(where, problem)
            if wire == _VARINT:
                value, pos = self.varint(buf, pos, where)
            elif wire == _LEN:
                size, pos = self.varint(buf, pos, where)
                value, pos = buf[pos:pos + size], pos + size
            elif wire in (_I64, _I32):
                size = 8 if wire == _I64 else 4
                value, pos = buf[pos:pos + size], pos + size
            else:
                raise self.fail(where, f"field {allowed[number]} has wire type {wire}, not used by ONNX")
            if pos > end:
                raise self.fail(where, f"field {allowed[number]} runs past the end of its message")
            self.report.fields += 1
            if self.report.fields > MAX_FIELDS:
                raise self.fail(where, f"more than {MAX_FIELDS} protobuf fields")
            yield _Field(number, wire, value)

    def payload(self, f: _Field, where: str, name: str) -> memoryview:
        if f.wire != _LEN:
            raise self.fail(where, f"{name} has wire type {f.wire}, expected length-delimited")
        return f.value  # type: ignore[return-value]

    def integer(self, f: _Field, where: str, name: str) -> int:
        if f.wire != _VARINT:
            raise self.fail(where, f"{name} has wire type {f.wire}, expected a varint")
        v = int(f.value)  # type: ignore[arg-type]
        return v - (1 << 64) if v >= 1 << 63 else v  # int64 two's complement

    def text(self, f: _Field, where: str, name: str) -> str:
        try:
            return bytes(self.payload(f, where, name)).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(where, f"{name} is not UTF-8") from None

    def singular(self, seen: set[int], f: _Field, where: str, names: dict[int, str]) -> None:
        """Protobuf lets a later copy of a scalar field win; the exporter never repeats one, so refuse it."""
        if f.number in seen:
            raise self.fail(where, f"{names[f.number]} appears twice")
        seen.add(f.number)

    # ------------------------------------------------------------------------------------ messages
    def model(self, buf: memoryview) -> None:
        graphs, opsets = 0, set()
        for f in self.fields(buf, "model", _MODEL, _MODEL_REFUSED):
            if f.number == 7:
                graphs += 1
                self.graph(self.payload(f, "model", "graph"))
            elif f.number == 8:
                domain = self.opset(self.payload(f, "model", "opset_import"))
                if domain in opsets:
                    raise self.fail("opset_import", f"domain {_short(domain)} appears twice")
                opsets.add(domain)
        if graphs != 1:
            raise self.fail("model", f"{graphs} graph fields, expected exactly 1")
        if opsets != set(ALLOWED_OPSETS):
            raise self.fail("model", f"imports opsets {sorted(opsets)}, expected {sorted(ALLOWED_OPSETS)}")

    def opset(self, buf: memoryview) -> str:
        """One opset import, checked against ALLOWED_OPSETS; returns its domain."""
        domain, version = "", None
        for f in self.fields(buf, "opset_import", _OPSET, {}):
            if f.number == 1:
                domain = self.text(f, "opset_import", "domain")
            else:
                version = self.integer(f, "opset_import", "version")
        if ALLOWED_OPSETS.get(domain) != version:
            raise self.fail("opset_import", f"opset {_short(domain)} version {version} is not in the "
                                            f"exporter's allow-list {ALLOWED_OPSETS}")
        return domain

    def graph(self, buf: memoryview) -> None:
        for f in self.fields(buf, "graph", _GRAPH, _GRAPH_REFUSED):
            if f.number == 1:
                self.report.nodes += 1
                if self.report.nodes > MAX_NODES:
                    raise self.fail("graph", f"more than {MAX_NODES} nodes")
                self.node(self.payload(f, "graph", "node"), self.report.nodes - 1)
            elif f.number == 5:
                self.tensor(self.payload(f, "graph", "initializer"), "initializer")

    def node(self, buf: memoryview, index: int) -> None:
        where = f"node {index}"
        op_type = domain = ""
        attributes: list[memoryview] = []
        seen: set[int] = set()
        for f in self.fields(buf, where, _NODE, _NODE_REFUSED):
            if f.number == 4:
                self.singular(seen, f, where, _NODE)
                op_type = self.text(f, where, "op_type")
            elif f.number == 7:
                self.singular(seen, f, where, _NODE)
                domain = self.text(f, where, "domain")
            elif f.number == 5:
                attributes.append(self.payload(f, where, "attribute"))
        if self.allowed_ops is not None and (domain, op_type) not in self.allowed_ops:
            raise self.fail(where, f"op {_short(op_type)} (domain {_short(domain)}) is not in the "
                                   "exporter's allow-list")
        self.report.ops[(domain, op_type)] += 1
        for a in attributes:
            self.attribute(a, f"{where} ({op_type})")

    def attribute(self, buf: memoryview, where: str) -> None:
        seen: set[int] = set()
        name = ""
        for f in self.fields(buf, f"{where} attribute", _ATTRIBUTE, _ATTRIBUTE_REFUSED):
            if f.number == 1:
                name = self.text(f, where, "attribute name")
            elif f.number == 20:
                self.singular(seen, f, where, _ATTRIBUTE)
                kind = self.integer(f, where, "attribute type")
                if kind not in ALLOWED_ATTRIBUTE_TYPES:
                    raise self.fail(where, f"attribute {_short(name)} has type {kind}, not one the "
                                           "exporter writes (subgraphs, sparse and type attributes are refused)")
            elif f.number == 5:
                self.tensor(self.payload(f, where, "attribute tensor"), f"{where} attribute {_short(name)}")

    def tensor(self, buf: memoryview, where: str) -> None:
        elements, data_type = 1, None
        seen: set[int] = set()
        for f in self.fields(buf, where, _TENSOR, _TENSOR_REFUSED):
            if f.number == 1:
                for d in self.dims(f, where):
                    if d < 0:
                        raise self.fail(where, f"tensor has a negative dimension {d}")
                    elements = min(elements * d, MAX_TENSOR_ELEMENTS + 1)
            elif f.number == 2:
                self.singular(seen, f, where, _TENSOR)
                data_type = self.integer(f, where, "data_type")
            elif f.number == 14:
                location = self.integer(f, where, "data_location")
                if location != 0:
                    raise self.fail(where, f"tensor data_location {location} (external data) is not allowed")
        if data_type not in ALLOWED_TENSOR_TYPES:
            raise self.fail(where, f"tensor data_type {data_type} is not one the exporter writes")
        self.report.tensor_elements += elements
        if self.report.tensor_elements > MAX_TENSOR_ELEMENTS:
            raise self.fail(where, f"more than {MAX_TENSOR_ELEMENTS} tensor elements in inline data")

    def dims(self, f: _Field, where: str) -> Iterator[int]:
        """TensorProto.dims, unpacked (one varint each, what onnx writes) or packed."""
        if f.wire == _VARINT:
            yield self.integer(f, where, "dims")
            return
        buf, pos = self.payload(f, where, "dims"), 0
        while pos < len(buf):
            v, pos = self.varint(buf, pos, where)
            yield v - (1 << 64) if v >= 1 << 63 else v


def check_model(model: bytes | bytearray | memoryview, what: str = "trainer") -> GraphReport:
    """Raise BundleError unless the serialized ModelProto holds only what the exporter emits."""
    if not isinstance(model, (bytes, bytearray, memoryview)):
        raise BundleError(f"trainer bundle: {what} graph is {type(model).__name__}, not bytes")
    view = memoryview(model).cast("B")
    if len(view) == 0:
        raise BundleError(f"trainer bundle: {what} graph is empty")
    if len(view) > MAX_MODEL_BYTES:
        raise BundleError(f"trainer bundle: {what} graph is {len(view)} bytes, more than the "
                          f"{MAX_MODEL_BYTES} cap")
    walker = _Walker(what)
    walker.model(view)
    return walker.report


def _print_inventory(paths: list[str]) -> int:
    """The (domain, op) pairs of the graphs of each bundle file: the source of ALLOWED_OPS."""
    import msgpack

    ops: Counter[tuple[str, str]] = Counter()
    for path in paths:
        with open(path, "rb") as f:
            blob = msgpack.unpackb(f.read(), raw=False)
        for key in ("train_step", "inference"):
            walker = _Walker(key, allowed_ops=None)
            walker.model(memoryview(blob[key]))
            ops.update(walker.report.ops)
    print(sorted(ops))
    return 0


if __name__ == "__main__":
    sys.exit(_print_inventory(sys.argv[1:]))


__all__ = ["ALLOWED_OPS", "ALLOWED_OPSETS", "MAX_MODEL_BYTES", "MAX_NODES", "MAX_TENSOR_ELEMENTS",
           "GraphReport", "check_model"]
