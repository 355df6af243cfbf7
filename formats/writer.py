"""Writing .mdc files: validate MDCData, encode it into IPC blocks, write atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO

import numpy as np

from formats.atomic import atomic_write
from formats.checksum import crc32
from formats.codecs import CodecParams, get_codec
from formats.data import MDCData, Views
from formats.errors import InvalidDataError
from formats.formation import check_factor
from formats.header import STRUCTURAL_KEYS, pack_header, pack_preamble, parse_header
from formats.layout import (
    ALIGNMENT,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    PREAMBLE_SIZE,
    align,
    dtype_name,
    pack_arrays,
)
from formats.pixels import PIXEL_DTYPES, encode_pixels
from formats.views import encode_views

WRITER = "multisize formats"
TRAINER_SECTION = "trainer_bundle"


@dataclass
class Encoded:
    """A file ready to be written: header bytes, pre-block sections and the block buffer."""

    head: bytes  # preamble + header + padding up to the body
    sections: list[tuple[int, bytes]]  # (offset in body, bytes)
    blocks_offset: int
    blocks: np.ndarray  # uint8 [ipc_max, stride]
    block_length: int
    header: dict[str, Any]

    @property
    def nbytes(self) -> int:
        ipc_max, stride = self.blocks.shape
        return len(self.head) + self.blocks_offset + (ipc_max - 1) * stride + self.block_length

    def write_to(self, f: BinaryIO) -> None:
        f.write(self.head)
        pos = 0
        for off, data in self.sections:
            f.write(b"\0" * (off - pos))
            f.write(data)
            pos = off + len(data)
        f.write(b"\0" * (self.blocks_offset - pos))
        ipc_max, stride = self.blocks.shape
        f.write(memoryview(self.blocks.reshape(-1))[: (ipc_max - 1) * stride + self.block_length])


def results_to_header(results: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """Per-size table: keys become strings (msgpack headers only have string keys); ipc 10 -> "10"."""
    if results is None:
        return None
    if not isinstance(results, Mapping):
        raise InvalidDataError(f"results must be a map, got {type(results).__name__}")
    return {str(k): v for k, v in results.items()}


def _check_basics(data: MDCData) -> tuple[int, int]:
    names = list(data.class_names)
    if not names or not all(isinstance(n, str) for n in names):
        raise InvalidDataError("class_names must be a non-empty list of strings")
    c = len(names)
    shape = tuple(int(s) for s in data.image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidDataError(f"image_shape must be 3 positive integers (C, H, W), got {data.image_shape!r}")
    images = np.asarray(data.images)
    if images.ndim != 4 or images.shape[1:] != shape or images.shape[0] == 0 or images.shape[0] % c:
        raise InvalidDataError(f"images must be [ipc_max * {c}, {', '.join(map(str, shape))}], "
                               f"got {list(images.shape)}")
    n = images.shape[0]
    labels = np.asarray(data.labels)
    want = np.tile(np.arange(c), n // c)
    if labels.shape != (n,) or not np.array_equal(labels, want):
        raise InvalidDataError("labels must be IPC-major: labels[r] == r % num_classes for r in 0..n-1")
    if data.pixel_encoding not in PIXEL_DTYPES:
        raise InvalidDataError(
            f"pixel_encoding must be one of {sorted(PIXEL_DTYPES)}, got {data.pixel_encoding!r}")
    if len(data.mean) != shape[0] or len(data.std) != shape[0]:
        raise InvalidDataError(f"mean and std need {shape[0]} values each")
    if not all(1e-6 <= s <= 1e6 for s in data.std) or not all(abs(m) <= 1e6 for m in data.mean):
        raise InvalidDataError("std must lie in [1e-6, 1e6] and |mean| <= 1e6")
    check_factor(data.formation_factor, shape[1:])
    bundle = data.trainer_bundle
    if bundle is not None and not isinstance(bundle, (bytes, bytearray, memoryview)):
        raise InvalidDataError("trainer_bundle must be bytes or None")
    return n, c


def encode_labels(views: Views, n: int, num_classes: int, image_hw: tuple[int, int], *, codec: str,
                  topk: int | None, label_kind: str, temperature: float,
                  factor: int = 1) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Validate and encode the soft-label views of n records: the stored arrays ([n, V, ...] each) and the
    header's `views` map."""
    c = num_classes
    stored = encode_views(views, n, c, image_hw, factor)
    v = views.num_views
    kind = get_codec(codec)
    params = CodecParams(c, topk if kind.uses_topk else None, label_kind, float(temperature))
    kind.check_params(params)
    targets = np.asarray(views.targets)
    if targets.shape != (n, v, c):
        raise InvalidDataError(f"views.targets must have shape [{n}, {v}, {c}], got {list(targets.shape)}")
    for name, a in kind.encode(targets.reshape(n * v, c), params).items():
        stored[name] = a.reshape(n, v, *a.shape[1:])
    header = {"count": v, "codec": kind.name, "topk": params.topk, "label_kind": params.label_kind,
              "temperature": params.temperature}
    return stored, header


def label_nbytes(views: Views, num_classes: int, image_hw: tuple[int, int], *, codec: str, topk: int | None,
                 label_kind: str, temperature: float, factor: int = 1) -> int:
    """Bytes that the views' parameters and soft labels take in a file, all records together."""
    stored, _ = encode_labels(views, len(views), num_classes, image_hw, codec=codec, topk=topk,
                              label_kind=label_kind, temperature=temperature, factor=factor)
    return sum(a.nbytes for a in stored.values())


def encode(data: MDCData, created: str | None = None) -> Encoded:
    """Validate and encode everything; nothing touches the disk."""
    n, c = _check_basics(data)
    shape = tuple(int(s) for s in data.image_shape)
    stored: dict[str, np.ndarray] = {
        "labels": np.asarray(data.labels).astype("<i4"),
        "images": encode_pixels(data.images, data.pixel_encoding, tuple(data.mean), tuple(data.std)),
    }
    views_hdr = None
    if data.views is not None:
        labels, views_hdr = encode_labels(data.views, n, c, shape[1:], codec=data.codec, topk=data.topk,
                                          label_kind=data.label_kind, temperature=data.temperature,
                                          factor=int(data.formation_factor))
        stored.update(labels)
    return assemble(data, stored, views_hdr, created)


def assemble(data: MDCData, stored: dict[str, np.ndarray], views_hdr: dict[str, Any] | None,
             created: str | None = None) -> Encoded:
    """Lay stored arrays ([ipc_max * C, ...] each, file dtypes) out in IPC blocks and build the header.

    encode() calls it after validating and encoding `data`; tests call it directly to build files whose
    dense targets would not fit in memory. The header still passes the reader's checks (parse_header).
    """
    c = data.num_classes
    ipc_max = int(stored["labels"].shape[0]) // c
    shape = tuple(int(s) for s in data.image_shape)
    items = [(name, dtype_name(a.dtype), (c, *a.shape[1:])) for name, a in stored.items()]
    specs, block_length = pack_arrays(items)
    stride = align(block_length)
    blocks = np.zeros((ipc_max, stride), dtype=np.uint8)
    for spec in specs:
        a = np.ascontiguousarray(stored[spec.name])
        blocks[:, spec.offset:spec.end] = a.view(np.uint8).reshape(ipc_max, spec.length)
    crcs = [crc32(blocks[i, :block_length]) for i in range(ipc_max)]

    sections: list[tuple[int, bytes]] = []
    section_hdr = []
    blocks_offset = 0
    if data.trainer_bundle is not None:
        bundle = bytes(data.trainer_bundle)
        sections.append((0, bundle))
        section_hdr.append({"name": TRAINER_SECTION, "offset": 0, "length": len(bundle),
                            "crc32": crc32(bundle)})
        blocks_offset = align(len(bundle))

    header: dict[str, Any] = {
        "format": "mdc",
        "dataset": str(data.dataset),
        "class_names": list(data.class_names),
        "num_classes": c,
        "ipc_max": ipc_max,
        "image_shape": list(shape),
        "pixels": {"encoding": data.pixel_encoding, "mean": [float(x) for x in data.mean],
                   "std": [float(x) for x in data.std]},
        "nesting": {"order": "ipc-major", "unit": "stored_image",
                    "formation_factor": int(data.formation_factor)},
        "views": views_hdr,
        "layout": {
            "alignment": ALIGNMENT,
            "checksum": "crc32",
            "sections": section_hdr,
            "blocks": {"offset": blocks_offset, "stride": stride, "length": block_length, "count": ipc_max,
                       "crc32": crcs},
            "arrays": [s.to_header() for s in specs],
        },
        "provenance": dict(data.provenance or {}),
        "results": results_to_header(data.results),
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "writer": WRITER,
    }
    # The writer's own output must pass the reader's checks; catches writer bugs early.
    parse_header(header)
    return Encoded(_head(header), sections, blocks_offset, blocks, block_length, header)


def _head(header: dict[str, Any], minor: int = FORMAT_MINOR) -> bytes:
    hb = pack_header(header)
    pre = pack_preamble(len(hb), crc32(hb), FORMAT_MAJOR, minor)
    head = pre + hb
    return head + b"\0" * (align(PREAMBLE_SIZE + len(hb)) - len(head))


def write_mdc(path: str | os.PathLike[str], data: MDCData) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename)."""
    enc = encode(data)
    atomic_write(path, enc.write_to)


def update_header(path: str | os.PathLike[str], updates: Mapping[str, Any]) -> None:
    """Rewrite `path` with header keys replaced (None removes a key); the body is copied verbatim.

    Only non-structural keys may change (results, provenance, extension keys); block checksums are
    verified while copying, so a damaged file is not silently re-blessed.
    """
    from formats.reader import open_mdc  # the reader imports nothing from here; avoid a cycle at load

    bad = sorted(set(updates) & STRUCTURAL_KEYS)
    if bad:
        raise InvalidDataError(f"update_header cannot change structural keys {bad}; write a new file instead")
    with open_mdc(path) as reader:
        raw = dict(reader.header)
        for key, value in updates.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = results_to_header(value) if key == "results" else value
        head = _head(raw, reader.version[1])
        atomic_write(path, lambda f: (f.write(head), reader.copy_body(f)))


def set_results(path: str | os.PathLike[str], results: Mapping[Any, Any] | None) -> None:
    """Store the per-size results table (ipc -> metrics) in the header of an existing file."""
    update_header(path, {"results": results})
