"""A plain inference model from the bundle's inference graph, with trained parameters baked in.

The bundle's inference graph takes the images and every parameter as inputs (so a device feeds the
parameters it trained). `bake_params` turns each parameter input into an initializer that holds the
trained values, leaving `x -> logits`: a model that onnxruntime, or any ONNX consumer, runs alone.

It edits the protobuf wire format directly (field numbers of onnx/onnx.proto: ModelProto.graph = 7,
GraphProto.initializer = 5 and input = 11, ValueInfoProto.name = 1, TensorProto dims = 1,
data_type = 2, name = 8, raw_data = 9), because the `onnx` package is not part of the device install.
The result passes runtime/onnx_check.py, which the caller runs on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from runtime.errors import BundleError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT = 5, 11
_FLOAT = 1  # TensorProto.DataType.FLOAT


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BundleError("inference graph: malformed protobuf varint")
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return result, pos


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview, memoryview]]:
    """(number, wire type, payload, the whole encoded field) for each field of one message."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, end = _read_varint(buf, pos)
            payload = buf[pos:end]
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            end, payload = pos + size, buf[pos:pos + size]
        elif wire in (_I64, _I32):
            end = pos + (8 if wire == _I64 else 4)
            payload = buf[pos:end]
        else:
            raise BundleError(f"inference graph: protobuf wire type {wire} is not used by ONNX")
        if end > len(buf):
            raise BundleError("inference graph: a protobuf field runs past the end of its message")
        pos = end
        yield number, wire, payload, buf[start:end]


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _value_name(value_info: memoryview) -> str:
    for number, wire, payload, _ in _fields(value_info):
        if number == 1 and wire == _LEN:
            return bytes(payload).decode("utf-8")
    return ""


def tensor_proto(name: str, array: np.ndarray) -> bytes:
    """A float32 TensorProto with inline raw little-endian data (unpacked dims, as onnx writes them)."""
    a = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(_varint(1 << 3 | _VARINT) + _varint(int(d)) for d in a.shape)
    return (dims + _varint(2 << 3 | _VARINT) + _varint(_FLOAT) + _len_field(8, name.encode("utf-8"))
            + _len_field(9, a.tobytes()))


def _bake_graph(graph: memoryview, params: dict[str, np.ndarray]) -> bytes:
    out = bytearray()
    found: set[str] = set()
    for number, wire, payload, whole in _fields(graph):
        if number == _GRAPH_INPUT and wire == _LEN and _value_name(payload) in params:
            found.add(_value_name(payload))
            continue
        out += whole
    missing = sorted(set(params) - found)
    if missing:
        raise BundleError(f"inference graph: no graph input named {missing[0]!r} to bake a parameter into")
    for name, array in params.items():
        out += _len_field(_GRAPH_INITIALIZER, tensor_proto(name, array))
    return bytes(out)


def bake_params(model: bytes, names: Sequence[str], arrays: Sequence[np.ndarray]) -> bytes:
    """The serialized ModelProto `model` with graph inputs `names` replaced by initializers of `arrays`."""
    if len(names) != len(arrays):
        raise BundleError(f"inference graph: {len(names)} parameter names for {len(arrays)} arrays")
    params = dict(zip(names, arrays, strict=True))
    out = bytearray()
    graphs = 0
    for number, wire, payload, whole in _fields(memoryview(model)):
        if number == _MODEL_GRAPH and wire == _LEN:
            graphs += 1
            out += _len_field(_MODEL_GRAPH, _bake_graph(payload, params))
        else:
            out += whole
    if graphs != 1:
        raise BundleError(f"inference graph: {graphs} graph fields, expected exactly 1")
    return bytes(out)


__all__ = ["bake_params", "tensor_proto"]
