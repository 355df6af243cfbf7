"""Bounded msgpack: price a header before msgpack builds it, then unpack it with per-object limits.

msgpack's own limits (max_map_len, max_str_len, ...) bound one object at a time; a 16 MiB header of
millions of tiny keys stays within them and still costs hundreds of MB of Python objects. `scan`
walks the encoded bytes once, building nothing, and charges each object what CPython will spend on
it (a conservative estimate, below). Unpacking starts only when the whole header fits
`memory_limit(len(data))`, which is proportional to the header's size (docs/format.md, section 2.2).
The scan also rejects what the spec forbids before any object exists: non-string map keys, a
top-level value that is not a map, bytes after it, and nesting deeper than MAX_HEADER_DEPTH.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np

from formats.errors import InconsistentHeaderError
from formats.layout import (
    HEADER_MEMORY_FLOOR,
    HEADER_MEMORY_PER_BYTE,
    MAX_HEADER_CONTAINERS,
    MAX_HEADER_DEPTH,
    MAX_HEADER_MEMORY,
    PREAMBLE_SIZE,
)

# Estimated CPython bytes per object (tracemalloc on CPython 3.12, rounded up), each including the
# 8-byte slot of the container holding it. nil, bools and small ints are shared objects: SMALL is
# their slot plus a little, so that scanning time stays in proportion to the bound too.
SMALL, INT, FLOAT = 16, 40, 32
LIST, MAP, MAP_ENTRY = 64, 200, 96  # + 8 per array item; a map entry is charged on top of its key and value
STR, BIN, EXT = 80, 56, 64  # + 4 per str byte (a str may take 4 bytes per character), + 1 per bin/ext byte

_LEN_SIZE = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xc7: 1, 0xc8: 2, 0xc9: 4, 0xd9: 1, 0xda: 2, 0xdb: 4,
             0xdc: 2, 0xdd: 4, 0xde: 2, 0xdf: 4}
_UNPACK = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}
_RUN_CHUNK = 4096  # values checked per numpy step when pricing a run inside an array


def _scalar_tables() -> tuple[list[int], list[int]]:
    """Per first byte: total bytes and cost of a value of fixed size (0 = not fixed-size)."""
    width, cost = [0] * 256, [0] * 256
    for b in [*range(0x00, 0x80), *range(0xe0, 0x100), 0xc0, 0xc2, 0xc3]:
        width[b], cost[b] = 1, SMALL
    for b, n in {0xca: 4, 0xcb: 8}.items():
        width[b], cost[b] = 1 + n, FLOAT
    for b, n in {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}.items():
        width[b], cost[b] = 1 + n, SMALL if b == 0xcc else INT  # uint8 is always a shared small int
    for b, n in {0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}.items():  # fixext: type byte + data
        width[b], cost[b] = 1 + n, EXT + n
    for n in range(32):
        width[0xa0 + n], cost[0xa0 + n] = 1 + n, STR + 4 * n
    return width, cost


_WIDTH, _COST = _scalar_tables()
_ONE_BYTE = np.array([_WIDTH[b] == 1 for b in range(256)])


def memory_limit(header_length: int) -> int:
    """Estimated bytes of Python objects a header of this length may unpack to."""
    return min(MAX_HEADER_MEMORY, HEADER_MEMORY_FLOOR + HEADER_MEMORY_PER_BYTE * header_length)


def type_name(b: int) -> str:
    """The Python type msgpack gives a value starting with byte b (for messages)."""
    names = [((0x00, 0x7f), "int"), ((0x80, 0x8f), "dict"), ((0x90, 0x9f), "list"), ((0xa0, 0xbf), "str"),
             ((0xc0, 0xc0), "nil"), ((0xc1, 0xc1), "reserved byte 0xc1"), ((0xc2, 0xc3), "bool"),
             ((0xc4, 0xc6), "bytes"), ((0xc7, 0xc9), "ext"), ((0xca, 0xcb), "float"), ((0xcc, 0xd3), "int"),
             ((0xd4, 0xd8), "ext"), ((0xd9, 0xdb), "str"), ((0xdc, 0xdd), "list"), ((0xde, 0xdf), "dict")]
    return next((name for (lo, hi), name in names if lo <= b <= hi), "int")


class _Scan:
    """One pass over the encoded header: the position, the open containers and the running cost."""

    def __init__(self, data: bytes | bytearray | memoryview, limit: int) -> None:
        self.data = bytes(data)
        self.bytes = np.frombuffer(self.data, dtype=np.uint8)
        self.n = len(self.data)
        self.limit = limit
        self.cost = 0
        self.containers = 0
        # one frame per open container: values still to read, is it a map, where its current key is
        self.left: list[int] = []
        self.is_map: list[bool] = []
        self.key: list[tuple[int, int]] = []

    # ------------------------------------------------------------------------------------ errors
    def path(self) -> str:
        """Dotted path of the value being read, from the keys of the open maps (for messages)."""
        return ".".join(self.data[a:b].decode("utf-8", "replace")
                        for is_map, (a, b) in zip(self.is_map, self.key, strict=True) if is_map and b > a)

    def fail(self, pos: int, msg: str) -> InconsistentHeaderError:
        where = self.path()
        at = f"header key {where!r}, " if where else "header "
        return InconsistentHeaderError(f"{at}byte {PREAMBLE_SIZE + pos}: {msg}")

    def over_limit(self, pos: int) -> InconsistentHeaderError:
        return self.fail(pos, f"unpacking the {self.n}-byte header would take more than {self.limit} bytes of "
                              f"memory (the bound for its size); refused before unpacking")

    # ------------------------------------------------------------------------------------ helpers
    def charge(self, pos: int, amount: int) -> None:
        self.cost += amount
        if self.cost > self.limit:
            raise self.over_limit(pos)

    def need(self, pos: int, count: int) -> None:
        if pos + count > self.n:
            raise self.fail(pos, f"a value needs {count} more bytes but the header ends at byte "
                                 f"{PREAMBLE_SIZE + self.n}")

    def length(self, pos: int, size: int) -> int:
        self.need(pos + 1, size)
        return _UNPACK[size].unpack_from(self.data, pos + 1)[0]

    def open(self, pos: int, count: int, is_map: bool) -> None:
        self.containers += 1
        if self.containers > MAX_HEADER_CONTAINERS:
            raise self.fail(pos, f"header holds more than {MAX_HEADER_CONTAINERS} maps and arrays")
        if len(self.left) >= MAX_HEADER_DEPTH:
            raise self.fail(pos, f"maps and arrays nest deeper than {MAX_HEADER_DEPTH} levels")
        self.charge(pos, MAP + MAP_ENTRY * count if is_map else LIST + 8 * count)
        self.left.append(2 * count if is_map else count)
        self.is_map.append(is_map)
        self.key.append((0, 0))

    # ------------------------------------------------------------------------------------ values
    def variable(self, pos: int) -> int:
        """A value that is not fixed-size: a container (opened, its items come next), str, bin or ext."""
        b = self.data[pos]
        if 0x80 <= b <= 0x9f:
            self.open(pos, b & 0x0f, b <= 0x8f)
            return pos + 1
        size = _LEN_SIZE.get(b)
        if size is None:
            raise self.fail(pos, "byte 0xc1 is never used in msgpack")
        length = self.length(pos, size)
        if b >= 0xdc:
            self.open(pos, length, b >= 0xde)
            return pos + 1 + size
        head = 1 + size + (1 if 0xc7 <= b <= 0xc9 else 0)  # ext has a type byte after its length
        self.need(pos + head, length)
        self.charge(pos, STR + 4 * length if b >= 0xd9 else (BIN if b <= 0xc6 else EXT) + length)
        return pos + head + length

    def run(self, pos: int, b: int, count: int) -> int:
        """How many of the next `count` array values are fixed-size and priced alike, starting with byte b."""
        width = _WIDTH[b]
        count = min(count, (self.n - pos) // width)
        done = 0
        while done < count:
            k = min(_RUN_CHUNK, count - done)
            first = self.bytes[pos + done * width: pos + (done + k) * width: width]
            same = _ONE_BYTE[first] if width == 1 else first == b
            if same.all():
                done += k
            else:
                return done + int(np.argmin(same))
        return done

    def map_key(self, pos: int) -> int:
        b = self.data[pos]
        if 0xa0 <= b <= 0xbf:
            start, length = pos + 1, b & 0x1f
        elif 0xd9 <= b <= 0xdb:
            size = _LEN_SIZE[b]
            start, length = pos + 1 + size, self.length(pos, size)
        else:
            raise self.fail(pos, f"a map key is a {type_name(b)}; header map keys must be strings")
        self.need(start, length)
        self.key[-1] = (start, start + length)
        self.charge(pos, STR + 4 * length)
        return start + length

    def walk(self) -> None:
        if self.n == 0:
            raise self.fail(0, "the header is empty")
        first = self.data[0]
        if type_name(first) != "dict":
            raise InconsistentHeaderError(f"header at offset {PREAMBLE_SIZE} is a {type_name(first)}, not a map")
        pos = self.variable(0)
        data, n, left, is_map = self.data, self.n, self.left, self.is_map
        while left:
            todo = left[-1]
            if todo == 0:
                left.pop(), is_map.pop(), self.key.pop()
                continue
            if pos >= n:
                raise self.fail(pos, f"the header ends at byte {PREAMBLE_SIZE + n} inside a map or array")
            b = data[pos]
            if is_map[-1] and todo % 2 == 0:
                pos = self.map_key(pos)
                left[-1] -= 1
                continue
            width = _WIDTH[b]
            if not width:
                left[-1] -= 1
                pos = self.variable(pos)
                continue
            count = 1
            if not is_map[-1] and todo > 2 and pos + width < n and _COST[data[pos + width]] == _COST[b]:
                count = max(1, self.run(pos, b, todo))
            self.cost += _COST[b] * count
            if self.cost > self.limit:
                raise self.over_limit(pos)
            pos += width * count
            if pos > n:
                raise self.fail(pos - width, f"a value needs {width} bytes but the header ends at byte "
                                             f"{PREAMBLE_SIZE + n}")
            left[-1] -= count
        if pos != n:
            raise InconsistentHeaderError(f"header holds {n - pos} bytes after its map, from offset "
                                          f"{PREAMBLE_SIZE + pos}: it must be exactly one msgpack map")


def scan(data: bytes | bytearray | memoryview, limit: int | None = None) -> int:
    """Check the structure and price of an encoded header; returns the estimated cost in bytes."""
    s = _Scan(data, memory_limit(len(data)) if limit is None else limit)
    s.walk()
    return s.cost


def unpack(data: bytes | bytearray | memoryview) -> dict:
    """Scan, then unpack an encoded header (a map with string keys) within msgpack's per-object limits."""
    scan(data)
    n = len(data)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=n, max_bin_len=n,
                               max_array_len=n, max_map_len=n // 2, max_ext_len=n)
    except Exception as exc:  # msgpack raises several unrelated types on bad input (invalid UTF-8, ...)
        raise InconsistentHeaderError(
            f"header at offset {PREAMBLE_SIZE} is not valid msgpack: {type(exc).__name__}: {exc}") from None


__all__ = ["memory_limit", "scan", "type_name", "unpack"]
