"""Byte-level constants of the container and the array descriptor used in the header.

Kept apart from the header logic so the writer, the reader and the spec share one source of truth.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod

import numpy as np

MAGIC = b"\x89MDC\r\n\x1a\n"  # PNG-style: high bit, CR-LF and ^Z catch text-mode and 7-bit mangling
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
PREAMBLE = struct.Struct("<8sHHII4x")  # magic, major, minor, header length, header crc32, reserved
PREAMBLE_SIZE = PREAMBLE.size  # 24
ALIGNMENT = 64
MAX_HEADER_BYTES = 16 << 20  # a header beyond this is refused before reading it
MAX_HEADER_CONTAINERS = 200_000  # msgpack maps + arrays: bounds memory for a crafted header
MAX_HEADER_DEPTH = 64  # nesting of maps and arrays; real headers need about 6
# Python objects an unpacked header may cost (estimated before unpacking, formats/bounded.py):
# HEADER_MEMORY_PER_BYTE per header byte plus HEADER_MEMORY_FLOOR, never more than MAX_HEADER_MEMORY.
HEADER_MEMORY_PER_BYTE = 64
HEADER_MEMORY_FLOOR = 1 << 20
MAX_HEADER_MEMORY = 32 << 20
MAX_BODY_BYTES = 1 << 62  # every layout offset, length and the body's extent: far past any file, inside int64
MAX_ARRAY_DIMS = 32  # dimensions of one block array (numpy's own limit is 32 or 64)
DEFAULT_MAX_DECODE_BYTES = 1 << 30  # what read(k) may allocate for its decoded arrays unless told otherwise

# Dtype names used in the header -> little-endian numpy dtypes. Names, not numpy codes, so that a
# reader in another language needs no numpy knowledge.
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}


def align(n: int, a: int = ALIGNMENT) -> int:
    """Round n up to a multiple of a."""
    return -(-n // a) * a


def dtype_name(dt: np.dtype) -> str:
    for name, d in DTYPES.items():
        if np.dtype(dt) == d:
            return name
    raise ValueError(f"dtype {dt} has no .mdc name")


@dataclass(frozen=True)
class ArraySpec:
    """One array inside every IPC block: shape is per block (first axis = records in the block)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # from the start of the block
    length: int  # bytes

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_header(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "offset": self.offset, "length": self.length}


def pack_arrays(items: list[tuple[str, str, tuple[int, ...]]]) -> tuple[list[ArraySpec], int]:
    """Lay out arrays back to back, each at an aligned offset; returns specs and block length."""
    specs: list[ArraySpec] = []
    pos = 0
    for name, dt, shape in items:
        pos = align(pos)
        length = prod(shape) * DTYPES[dt].itemsize
        specs.append(ArraySpec(name, dt, tuple(int(s) for s in shape), pos, length))
        pos += length
    return specs, pos
