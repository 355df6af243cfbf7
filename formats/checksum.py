"""The container's checksum, CRC-32 (ISO-HDLC, zlib's), computed by the fastest implementation installed.

ISA-L's crc32 (the `isal` package) folds with carry-less multiplies: 13.2 GB/s on one core of the dev box against
zlib's 1.9 (docs/RESULTS.md "The checksum through ISA-L"); zlib.crc32 was the larger half of a verified prefix
read. Both give the same value for every input (tests/test_formats_checksum.py); without `isal` (a platform it has no
wheel for, or the device distribution without its `fast` extra) zlib's is used.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

Buffer = bytes | bytearray | memoryview


def _fastest() -> tuple[str, Callable[[Buffer], int]]:
    try:
        from isal import isal_zlib
    except ImportError:
        return "zlib", zlib.crc32
    return "isal", isal_zlib.crc32


IMPLEMENTATION, _crc32 = _fastest()


def crc32(data: Buffer) -> int:
    """CRC-32 of `data` as an unsigned int, zlib.crc32's value; releases the GIL on large buffers."""
    return _crc32(data)
