"""The preamble and the msgpack header: packing, bounded unpacking, and validation.

`parse_header` turns an untrusted header map into a `Header` whose every offset, length, dtype and
shape has been checked against the rest of the header, so the reader can trust it for slicing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import msgpack
import numpy as np

from formats.bounded import unpack as bounded_unpack
from formats.checksum import crc32
from formats.codecs import REGISTRY, CodecParams
from formats.errors import (
    BadMagicError,
    ChecksumError,
    InconsistentHeaderError,
    InvalidDataError,
    TruncatedError,
    UnknownCodecError,
    UnsupportedVersionError,
)
from formats.layout import (
    ALIGNMENT,
    DTYPES,
    FORMAT_MAJOR,
    MAGIC,
    MAX_ARRAY_DIMS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    PREAMBLE,
    PREAMBLE_SIZE,
    ArraySpec,
    align,
)
from formats.pixels import PIXEL_DTYPES
from formats.views import ALLOWED_DTYPES, VIEW_ARRAYS, VIEW_SHAPES

# Keys whose meaning fixes the bytes of the body; update_header must not change them.
STRUCTURAL_KEYS = frozenset({"dataset", "class_names", "num_classes", "ipc_max", "image_shape", "pixels",
                             "nesting", "views", "layout"})


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    header_length: int
    header_crc32: int

    @property
    def body_offset(self) -> int:
        """Absolute offset that every layout offset is relative to."""
        return align(PREAMBLE_SIZE + self.header_length)


@dataclass(frozen=True)
class Section:
    name: str
    offset: int  # relative to the body
    length: int
    crc32: int


@dataclass(frozen=True)
class ViewsInfo:
    count: int
    codec: str
    topk: int | None
    label_kind: str
    temperature: float

    def codec_params(self, num_classes: int) -> CodecParams:
        return CodecParams(num_classes, self.topk, self.label_kind, self.temperature)


@dataclass(frozen=True)
class Header:
    """A validated header. Offsets are relative to the body start (Preamble.body_offset)."""

    raw: dict[str, Any]
    dataset: str
    class_names: tuple[str, ...]
    ipc_max: int
    image_shape: tuple[int, int, int]
    encoding: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    formation_factor: int
    views: ViewsInfo | None
    sections: tuple[Section, ...]
    blocks_offset: int
    block_stride: int
    block_length: int
    block_crc32: tuple[int, ...]
    arrays: dict[str, ArraySpec]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def block_range(self, i: int) -> tuple[int, int]:
        """(offset, end) of block i, relative to the body."""
        start = self.blocks_offset + i * self.block_stride
        return start, start + self.block_length

    def body_extent(self) -> int:
        """Body bytes of a complete file (the last block has no trailing padding)."""
        return self.block_range(self.ipc_max - 1)[1]


# ----------------------------------------------------------------------------------------- preamble


def pack_preamble(header_length: int, header_crc32: int, major: int = FORMAT_MAJOR, minor: int = 0) -> bytes:
    return PREAMBLE.pack(MAGIC, major, minor, header_length, header_crc32)


def parse_preamble(data: bytes, file_size: int) -> Preamble:
    """Check magic, version and header length against the file size (nothing is allocated yet)."""
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise BadMagicError(f"bad magic at offset 0: {bytes(head)!r} is not {MAGIC!r}; not an .mdc file")
    if len(data) < PREAMBLE_SIZE:
        raise TruncatedError(f"file is {file_size} bytes; the preamble alone needs {PREAMBLE_SIZE}")
    _, major, minor, hlen, hcrc = PREAMBLE.unpack(data[:PREAMBLE_SIZE])
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"format version {major}.{minor} at offset 8: this reader knows major version {FORMAT_MAJOR}")
    if hlen == 0 or hlen > MAX_HEADER_BYTES:
        raise InconsistentHeaderError(
            f"header length {hlen} at offset 12 is outside 1..{MAX_HEADER_BYTES} bytes")
    if PREAMBLE_SIZE + hlen > file_size:
        raise TruncatedError(
            f"header length {hlen} at offset 12 runs to byte {PREAMBLE_SIZE + hlen}, past the end of the "
            f"{file_size}-byte file")
    return Preamble(major, minor, hlen, hcrc)


# ------------------------------------------------------------------------------------------ msgpack


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in an .mdc header")


def pack_header(header: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(header, use_bin_type=True, default=_default, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidDataError(f"header is not serialisable to msgpack: {exc}") from None


def unpack_header(data: bytes, stored_crc32: int) -> dict[str, Any]:
    """Verify the header checksum, then unpack it within a memory bound proportional to its size."""
    actual = crc32(data)
    if actual != stored_crc32:
        raise ChecksumError(f"header checksum mismatch: stored crc32 {stored_crc32:#010x} at offset 16, "
                            f"computed {actual:#010x} over bytes {PREAMBLE_SIZE}..{PREAMBLE_SIZE + len(data)}")
    return bounded_unpack(data)


# ------------------------------------------------------------------------------------------ parsing


def _bad(key: str, msg: str) -> InconsistentHeaderError:
    return InconsistentHeaderError(f"header key {key!r}: {msg}")


def _int(d: dict, key: str, path: str, lo: int = 0, hi: int | None = None) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{path}{key}", f"expected an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(f"{path}{key}", f"{v} is outside {lo}..{'' if hi is None else hi}")
    return v


def _num(d: dict, key: str, path: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"{path}{key}", f"expected a finite number, got {v!r}")
    return float(v)


def _str(d: dict, key: str, path: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _bad(f"{path}{key}", f"expected a string, got {type(v).__name__}")
    return v


def _map(d: dict, key: str, path: str) -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise _bad(f"{path}{key}", f"expected a map, got {type(v).__name__}")
    return v


def _list(d: dict, key: str, path: str) -> list:
    v = d.get(key)
    if not isinstance(v, list):
        raise _bad(f"{path}{key}", f"expected an array, got {type(v).__name__}")
    return v


def _floats(d: dict, key: str, path: str, n: int) -> tuple[float, ...]:
    v = _list(d, key, path)
    if len(v) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                              for x in v):
        raise _bad(f"{path}{key}", f"expected {n} finite numbers")
    return tuple(float(x) for x in v)


def _views_info(raw: dict, num_classes: int) -> ViewsInfo | None:
    v = raw.get("views")
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad("views", f"expected a map or nil, got {type(v).__name__}")
    count = _int(v, "count", "views.", lo=1)
    codec = _str(v, "codec", "views.")
    if codec not in REGISTRY:
        raise UnknownCodecError(f"header key 'views.codec': unknown soft-label codec {codec!r}; "
                                f"known: {', '.join(REGISTRY)}")
    topk = v.get("topk")
    if topk is not None:
        topk = _int(v, "topk", "views.", lo=1, hi=num_classes)
    kind = _str(v, "label_kind", "views.")
    temperature = _num(v, "temperature", "views.")
    info = ViewsInfo(count, codec, topk, kind, temperature)
    try:
        REGISTRY.get(codec).check_params(info.codec_params(num_classes))
    except InvalidDataError as exc:
        raise _bad("views", str(exc)) from None
    return info


def expected_arrays(num_classes: int, image_shape: tuple[int, ...], encoding: str,
                    views: ViewsInfo | None) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Arrays every block must hold: name -> (allowed dtypes, shape per block)."""
    c = num_classes
    out = {"labels": (("int32",), (c,)), "images": ((PIXEL_DTYPES[encoding],), (c, *image_shape))}
    if views is not None:
        v = views.count
        for name in VIEW_ARRAYS:
            out[name] = (ALLOWED_DTYPES[name], (c, v, *VIEW_SHAPES[name]))
        for sa in REGISTRY.get(views.codec).stored(views.codec_params(c)):
            out[sa.name] = (sa.dtypes, (c, v, *sa.shape))
    return out


def _shape(a: dict, key: str, itemsize: int) -> list[int]:
    """An array's per-block shape, bounded so that numpy can always build it (zero dimensions included)."""
    shape = _list(a, "shape", key)
    if len(shape) > MAX_ARRAY_DIMS:
        raise _bad(f"{key}shape", f"has {len(shape)} dimensions; at most {MAX_ARRAY_DIMS}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise _bad(f"{key}shape", f"expected non-negative integers, got {shape!r}")
    if math.prod(max(1, s) for s in shape) * itemsize > MAX_BODY_BYTES:
        raise _bad(f"{key}shape", f"{shape!r} spans more than {MAX_BODY_BYTES} bytes, even ignoring zero "
                                  f"dimensions")
    return shape


def _arrays(layout: dict, expected: dict, block_length: int, alignment: int) -> dict[str, ArraySpec]:
    specs: dict[str, ArraySpec] = {}
    for j, a in enumerate(_list(layout, "arrays", "layout.")):
        key = f"layout.arrays[{j}]."
        if not isinstance(a, dict):
            raise _bad(key[:-1], "expected a map")
        name, dt = _str(a, "name", key), _str(a, "dtype", key)
        if dt not in DTYPES:
            raise _bad(f"{key}dtype", f"unknown dtype {dt!r}; known: {', '.join(DTYPES)}")
        shape = _shape(a, key, DTYPES[dt].itemsize)
        offset = _int(a, "offset", key)
        length = _int(a, "length", key)
        if offset % alignment:
            raise _bad(f"{key}offset", f"{offset} is not a multiple of the alignment {alignment}")
        if length != math.prod(shape) * DTYPES[dt].itemsize:
            raise _bad(f"{key}length", f"{length} bytes does not match shape {shape} of {dt}")
        if offset + length > block_length:
            raise _bad(f"{key}offset", f"array {name!r} ends at {offset + length}, past the block length "
                                        f"{block_length}")
        if name in specs:
            raise _bad(f"{key}name", f"array {name!r} is listed twice")
        specs[name] = ArraySpec(name, dt, tuple(shape), offset, length)
    ordered = sorted((s for s in specs.values() if s.length), key=lambda s: s.offset)  # empty ones hold no bytes
    for prev, nxt in zip(ordered[:-1], ordered[1:], strict=True):
        if nxt.offset < prev.end:
            raise _bad("layout.arrays", f"arrays {prev.name!r} and {nxt.name!r} overlap")
    for name, (dtypes, shape) in expected.items():
        spec = specs.get(name)
        if spec is None:
            raise _bad("layout.arrays", f"required array {name!r} is missing")
        if spec.dtype not in dtypes or spec.shape != shape:
            raise _bad(f"layout.arrays[{name}]", f"expected dtype in {list(dtypes)} and shape {list(shape)}, "
                                                 f"got {spec.dtype} {list(spec.shape)}")
    return specs


def _sections(layout: dict, alignment: int) -> tuple[Section, ...]:
    out = []
    for j, s in enumerate(_list(layout, "sections", "layout.")):
        key = f"layout.sections[{j}]."
        if not isinstance(s, dict):
            raise _bad(key[:-1], "expected a map")
        sec = Section(_str(s, "name", key), _int(s, "offset", key), _int(s, "length", key),
                      _int(s, "crc32", key, hi=0xFFFFFFFF))
        if sec.offset % alignment:
            raise _bad(f"{key}offset", f"{sec.offset} is not a multiple of the alignment {alignment}")
        out.append(sec)
    ordered = sorted(out, key=lambda s: s.offset)
    for prev, nxt in zip(ordered[:-1], ordered[1:], strict=True):
        if nxt.offset < prev.offset + prev.length:
            raise _bad("layout.sections", f"sections {prev.name!r} and {nxt.name!r} overlap")
    if len({s.name for s in out}) != len(out):
        raise _bad("layout.sections", "a section name is listed twice")
    return tuple(out)


def _formation_factor(nesting: dict, image_shape: list[int]) -> int:
    """f (docs/format.md, section 4): each stored image is an f x f grid, so f divides H and W."""
    if "formation_factor" not in nesting:
        return 1
    f = _int(nesting, "formation_factor", "nesting.", lo=1, hi=min(image_shape[1:]))
    if image_shape[1] % f or image_shape[2] % f:
        raise _bad("nesting.formation_factor", f"{f} does not divide the image size "
                                               f"{image_shape[1]}x{image_shape[2]}")
    return f


def _blocks(layout: dict, ipc_max: int, alignment: int) -> tuple[int, int, int]:
    """(offset, stride, length) of the IPC blocks, all inside MAX_BODY_BYTES together."""
    blocks = _map(layout, "blocks", "layout.")
    key = "layout.blocks."
    b_off = _int(blocks, "offset", key, hi=MAX_BODY_BYTES)
    stride = _int(blocks, "stride", key, lo=1, hi=MAX_BODY_BYTES)
    length = _int(blocks, "length", key, lo=1, hi=MAX_BODY_BYTES)
    count = _int(blocks, "count", key)
    if count != ipc_max:
        raise _bad(f"{key}count", f"{count} but ipc_max is {ipc_max}")
    if b_off % alignment or stride % alignment:
        raise _bad("layout.blocks", f"offset {b_off} and stride {stride} must be multiples of {alignment}")
    if stride < length:
        raise _bad(f"{key}stride", f"{stride} is smaller than the block length {length}")
    if b_off + (ipc_max - 1) * stride + length > MAX_BODY_BYTES:
        raise _bad(f"{key}stride", f"{ipc_max} blocks of stride {stride} from offset {b_off} end past "
                                   f"{MAX_BODY_BYTES} bytes")
    return b_off, stride, length


def parse_header(raw: dict[str, Any]) -> Header:
    """Validate an unpacked header map; every error names the offending key."""
    names = _list(raw, "class_names", "")
    if not names or not all(isinstance(n, str) for n in names):
        raise _bad("class_names", "expected a non-empty array of strings")
    c = _int(raw, "num_classes", "", lo=1)
    if c != len(names):
        raise _bad("num_classes", f"{c} but class_names has {len(names)} entries")
    ipc_max = _int(raw, "ipc_max", "", lo=1)
    shape = _list(raw, "image_shape", "")
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise _bad("image_shape", f"expected 3 positive integers (C, H, W), got {shape!r}")
    pixels = _map(raw, "pixels", "")
    encoding = _str(pixels, "encoding", "pixels.")
    if encoding not in PIXEL_DTYPES:
        raise _bad("pixels.encoding", f"{encoding!r} is not one of {sorted(PIXEL_DTYPES)}")
    mean = _floats(pixels, "mean", "pixels.", shape[0])
    std = _floats(pixels, "std", "pixels.", shape[0])
    if any(not 1e-6 <= s <= 1e6 for s in std) or any(abs(m) > 1e6 for m in mean):
        raise _bad("pixels", "std must lie in [1e-6, 1e6] and |mean| <= 1e6")
    nesting = raw.get("nesting", {})
    if not isinstance(nesting, dict):
        raise _bad("nesting", "expected a map")
    factor = _formation_factor(nesting, shape)
    views = _views_info(raw, c)
    if views is not None and views.count % (factor * factor):
        raise _bad("views.count", f"{views.count} views per stored image do not split into the "
                                  f"{factor * factor} patches of formation factor {factor}")

    layout = _map(raw, "layout", "")
    alignment = _int(layout, "alignment", "layout.", lo=1)
    if alignment & (alignment - 1):
        raise _bad("layout.alignment", f"{alignment} is not a power of two")
    if layout.get("checksum", "crc32") != "crc32":
        raise _bad("layout.checksum", f"unknown checksum {layout.get('checksum')!r}; known: crc32")
    sections = _sections(layout, alignment)
    b_off, stride, length = _blocks(layout, ipc_max, alignment)
    for s in sections:
        if s.offset + s.length > b_off:
            raise _bad("layout.sections", f"section {s.name!r} runs past the first block at {b_off}")
    crcs = _list(layout["blocks"], "crc32", "layout.blocks.")
    if len(crcs) != ipc_max or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 0xFFFFFFFF
                                       for x in crcs):
        raise _bad("layout.blocks.crc32", f"expected {ipc_max} unsigned 32-bit integers")
    expected = expected_arrays(c, tuple(shape), encoding, views)
    arrays = _arrays(layout, expected, length, alignment)
    return Header(raw=raw, dataset=_str(raw, "dataset", ""), class_names=tuple(names), ipc_max=ipc_max,
                  image_shape=(shape[0], shape[1], shape[2]), encoding=encoding, mean=mean, std=std,
                  formation_factor=factor, views=views, sections=sections, blocks_offset=b_off,
                  block_stride=stride, block_length=length, block_crc32=tuple(crcs), arrays=arrays)


__all__ = ["ALIGNMENT", "Header", "Preamble", "Section", "ViewsInfo", "STRUCTURAL_KEYS", "expected_arrays",
           "pack_header", "pack_preamble", "parse_header", "parse_preamble", "unpack_header"]
