"""Hostile input: every damaged or lying .mdc file gives a correct read or a FormatError.

Never another exception, a hang, or an allocation out of proportion to the file.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import formats
from formats.layout import PREAMBLE_SIZE, align
from formats.testing import PeakRSS, assert_prefix_equal, make_data

pytestmark = pytest.mark.filterwarnings("error")  # a numpy overflow warning on hostile input is a bug too
BUNDLE = b"trainer-bytes" * 5
MAX_ALLOC = 2 << 20  # bytes; the test file is a few KB, so anything near this is out of proportion


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[formats.Prefix], formats.MDCReader]:
    path = tmp_path_factory.mktemp("mdc") / "small.mdc"
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=3, views=2, image_shape=(1, 4, 4),
                                      trainer_bundle=BUNDLE))
    r = formats.open_mdc(path)
    return path.read_bytes(), [r.read(k) for k in range(1, 4)], r


@contextmanager
def bounded_memory(limit: int = MAX_ALLOC) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < limit, f"peak allocation {peak} bytes"
    finally:
        tracemalloc.stop()


def put(path: Path, data: bytes) -> None:
    """Replace the file's bytes. Unlink first: truncating a file in place makes ext4 flush it (slow)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def check_file(path: Path, data: bytes, good: list[formats.Prefix], bundle: bytes | None = None,
               header_may_differ: bool = False) -> str:
    """Open and read every prefix; each outcome must be a FormatError or the undamaged result.

    With header_may_differ (a rewritten header with a valid checksum) a read may legitimately mean
    something else (other mean/std, a renamed section): then only "FormatError or success" is checked.
    """
    put(path, data)
    try:
        r = formats.open_mdc(path)
    except formats.FormatError:
        return "open-error"
    outcome = "ok"
    with r:
        for k in range(1, r.ipc_max + 1):
            try:
                got = r.read(k)
            except formats.FormatError:
                outcome = "read-error"
                continue
            assert k <= len(good), "read more blocks than were written"
            assert len(got) == k * r.num_classes
            if not header_may_differ:
                assert_prefix_equal(got, good[k - 1])
        try:
            got_bundle = r.trainer_bundle()
        except formats.FormatError:
            return "read-error"
        assert got_bundle == bundle or (header_may_differ and got_bundle is None)
    return outcome


def test_every_single_byte_corruption_of_the_header_region(small, tmp_path: Path) -> None:
    data, good, r = small
    path = tmp_path / "c.mdc"
    outcomes: dict[str, int] = {}
    with bounded_memory():
        for pos in range(r.body_offset):
            for flip in (0x01, 0x80, 0xFF):
                bad = bytearray(data)
                bad[pos] ^= flip
                o = check_file(path, bytes(bad), good, BUNDLE)
                outcomes[o] = outcomes.get(o, 0) + 1
    assert outcomes.get("open-error", 0) > 0.9 * sum(outcomes.values())
    # Reserved preamble bytes and header padding are not needed: those reads must succeed.
    assert outcomes.get("ok", 0) > 0


def test_every_single_byte_corruption_of_the_body(small, tmp_path: Path) -> None:
    """Damage in a block breaks exactly the prefixes containing it; padding is never read."""
    data, good, r = small
    path = tmp_path / "c.mdc"
    for pos in range(r.body_offset, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        put(path, bytes(bad))
        block = next((i for i in range(r.ipc_max) if r.block_range(i)[0] <= pos < r.block_range(i)[1]), None)
        with formats.open_mdc(path) as rr:
            for k in range(1, r.ipc_max + 1):
                if block is not None and k > block:
                    with pytest.raises(formats.ChecksumError, match=f"IPC block {block} "):
                        rr.read_raw(k)
                else:
                    assert_prefix_equal(rr.read(k), good[k - 1])
            if r.body_offset <= pos < r.body_offset + len(BUNDLE):
                with pytest.raises(formats.ChecksumError, match="trainer_bundle"):
                    rr.trainer_bundle()
            else:
                assert rr.trainer_bundle() == BUNDLE


def test_truncation_at_every_boundary(small, tmp_path: Path) -> None:
    """Cuts in the preamble and header, and around every section and block boundary."""
    data, good, r = small
    ends = [r.block_range(i)[1] for i in range(r.ipc_max)]
    marks = {r.body_offset, r.body_offset + len(BUNDLE), r.body_offset + r.spec.blocks_offset, len(data)}
    marks |= {x for i in range(r.ipc_max) for x in r.block_range(i)}
    cuts = set(range(r.body_offset + 1)) | {m + d for m in marks for d in (-1, 0, 1)}
    path = tmp_path / "t.mdc"
    with bounded_memory():
        for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
            put(path, data[:cut])
            try:
                rr = formats.open_mdc(path)
            except formats.TruncatedError:
                assert cut < r.body_offset
                continue
            except formats.FormatError:
                assert cut < PREAMBLE_SIZE  # only a short magic is anything but "truncated"
                continue
            with rr:
                present = sum(e <= cut for e in ends)
                assert rr.blocks_present == present
                for k in range(1, present + 1):
                    assert_prefix_equal(rr.read(k), good[k - 1])
                if present < r.ipc_max:
                    with pytest.raises(formats.TruncatedError, match=f"holds {present} of {r.ipc_max}"):
                        rr.read(present + 1)
                    assert rr.prefix_nbytes(present + 1) > cut


def test_cut_after_block_k_is_a_valid_ipc_k_file(small, tmp_path: Path) -> None:
    data, good, r = small
    for k in range(1, r.ipc_max + 1):
        path = tmp_path / f"cut{k}.mdc"
        path.write_bytes(data[: r.prefix_nbytes(k)])
        with formats.open_mdc(path) as rr:
            assert rr.blocks_present == k
            for j in range(1, k + 1):
                assert_prefix_equal(rr.read(j), good[j - 1])
            if k < r.ipc_max:
                with pytest.raises(formats.FormatError, match=f"holds {k} of {r.ipc_max} IPC blocks"):
                    rr.read(k + 1)
            with pytest.raises(formats.BudgetError, match="outside 1..3"):
                rr.read(r.ipc_max + 1)
            with pytest.raises(formats.BudgetError):
                rr.read(0)


# ------------------------------------------------------------------------- lying but well-formed headers


def rebuild(data: bytes, header: Any, *, major: int = 1, minor: int = 0, raw: bytes | None = None) -> bytes:
    """The same body behind a new header with a valid checksum (what a malicious writer produces)."""
    old = struct.unpack_from("<I", data, 12)[0]
    body = data[align(PREAMBLE_SIZE + old):]
    hb = raw if raw is not None else msgpack.packb(header, use_bin_type=True)
    head = struct.pack("<8sHHII4x", formats.MAGIC, major, minor, len(hb), zlib.crc32(hb)) + hb
    return head + b"\0" * (align(len(head)) - len(head)) + body


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(h: dict) -> None:
        keys = path.split(".")
        d: Any = h
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(keys[-1])] = value
        elif value is _DELETE:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return apply


_DELETE = object()
HUGE = 1 << 62
LIES = [
    ("ipc_max", HUGE), ("ipc_max", 0), ("ipc_max", -1), ("ipc_max", "3"), ("ipc_max", True), ("num_classes", 7),
    ("class_names", []), ("class_names", [1, 2, 3]), ("image_shape", [1, 4]), ("image_shape", [1, 4, HUGE]),
    ("image_shape", [1, 0, 4]), ("pixels.encoding", "jpeg"), ("pixels.mean", [0.1, 0.2]), ("pixels.std", [0.0]),
    ("pixels.std", [float("nan")]), ("views.count", HUGE), ("views.count", 0), ("views.codec", "zstd"),
    ("views.topk", 99), ("views.label_kind", "scores"), ("views.temperature", -1.0), ("views", [1]),
    ("layout.blocks.length", HUGE), ("layout.blocks.stride", 64), ("layout.blocks.stride", HUGE),
    ("layout.blocks.offset", HUGE), ("layout.blocks.offset", 3), ("layout.blocks.count", 2),
    ("layout.blocks.crc32", [0]), ("layout.blocks.crc32", [-1, 0, 0]), ("layout.alignment", 3),
    ("layout.checksum", "md5"), ("layout.arrays.1.offset", 0), ("layout.arrays.1.offset", HUGE),
    ("layout.arrays.1.shape", [3, 1, 4, HUGE]), ("layout.arrays.1.length", HUGE),
    ("layout.arrays.1.dtype", "float64"), ("layout.arrays.1.name", "labels"), ("layout.arrays.0", "x"),
    ("layout.arrays", {}), ("layout.sections.0.length", HUGE),
    ("layout.sections.0.offset", HUGE), ("layout.sections", [1]), ("layout", _DELETE), ("pixels", _DELETE),
    ("views.topk", _DELETE), ("dataset", 5),
]


@pytest.mark.parametrize("key, value", LIES, ids=[f"{k}={'del' if v is _DELETE else v!r}"[:40] for k, v in LIES])
def test_lying_header_values_raise_format_errors(small, tmp_path: Path, key: str, value: Any) -> None:
    data, good, r = small
    header = msgpack.unpackb(msgpack.packb(r.header))
    _set(key, value)(header)
    with bounded_memory():
        outcome = check_file(tmp_path / "l.mdc", rebuild(data, header), good, BUNDLE, header_may_differ=True)
    assert outcome in ("open-error", "read-error")


def test_huge_declared_blocks_are_refused_before_allocation(small, tmp_path: Path) -> None:
    """A consistent header describing terabyte blocks opens, reports 0 blocks, and reads nothing."""
    data, good, r = small
    header = msgpack.unpackb(msgpack.packb(r.header))
    lay = header["layout"]
    images = next(a for a in lay["arrays"] if a["name"] == "images")
    header["image_shape"] = [1, 1 << 20, 1 << 20]
    images["shape"] = [3, 1, 1 << 20, 1 << 20]
    images["length"] = 3 << 40
    for a in lay["arrays"]:
        if a["offset"] > images["offset"]:
            a["offset"] += (3 << 40)
    lay["blocks"]["length"] += 3 << 40
    lay["blocks"]["stride"] = align(lay["blocks"]["length"])
    path = tmp_path / "h.mdc"
    path.write_bytes(rebuild(data, header))
    with bounded_memory(), formats.open_mdc(path) as rr:
        assert rr.blocks_present == 0
        with pytest.raises(formats.TruncatedError, match="holds 0 of 3"):
            rr.read(1)


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"\xc1", formats.InconsistentHeaderError),  # never-used msgpack byte
        (b"\x93\x01\x02\x03", formats.InconsistentHeaderError),  # an array, not a map
        (b"\x81\x01\x02", formats.InconsistentHeaderError),  # integer map key
        (b"\xdd\xff\xff\xff\xff", formats.InconsistentHeaderError),  # array32 claiming 4G items
        (b"\xdb\xff\xff\xff\x7f", formats.InconsistentHeaderError),  # str32 claiming 2 GB
        (b"\x91" * 5000 + b"\xc0", formats.InconsistentHeaderError),  # nesting too deep
        (b"\x80\x80", formats.InconsistentHeaderError),  # extra data
        (b"\x80", formats.InconsistentHeaderError),  # empty map: required keys missing
    ],
)
def test_bad_msgpack_headers(small, tmp_path: Path, raw: bytes, error: type) -> None:
    data, good, _ = small
    path = tmp_path / "m.mdc"
    path.write_bytes(rebuild(data, None, raw=raw))
    with bounded_memory(), pytest.raises(error):
        formats.open_mdc(path)


def test_many_small_containers_are_bounded(small, tmp_path: Path) -> None:
    data, good, _ = small
    path = tmp_path / "m.mdc"
    path.write_bytes(rebuild(data, None, raw=b"\xdc\xff\xff" + b"\x90" * 0xFFFF))  # 65535 empty arrays, no map
    with bounded_memory(), pytest.raises(formats.InconsistentHeaderError, match="is a list, not a map"):
        formats.open_mdc(path)  # the first byte says so: nothing is unpacked
    many = b"\x81\xa1a\xdd" + struct.pack(">I", 300_000) + b"\x90" * 300_000
    path.write_bytes(rebuild(data, None, raw=many))
    # counted while scanning, before msgpack builds a single list
    with bounded_memory(), pytest.raises(formats.InconsistentHeaderError, match="more than 200000 maps and arrays"):
        formats.open_mdc(path)


def test_versions_and_magic(small, tmp_path: Path) -> None:
    data, good, r = small
    path = tmp_path / "v.mdc"
    path.write_bytes(rebuild(data, r.header, major=2))
    with pytest.raises(formats.UnsupportedVersionError, match="version 2.0"):
        formats.open_mdc(path)
    header = dict(r.header, future_key={"anything": [1, 2]})
    path.write_bytes(rebuild(data, header, minor=7))  # newer minor + unknown keys: still readable
    with formats.open_mdc(path) as rr:
        assert rr.version == (1, 7)
        assert_prefix_equal(rr.read(3), good[2])
    path.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(formats.BadMagicError, match="offset 0"):
        formats.open_mdc(path)
    path.write_bytes(b"")
    with pytest.raises(formats.TruncatedError, match="0 bytes"):
        formats.open_mdc(path)
    big = bytearray(data)
    big[12:16] = struct.pack("<I", 1 << 31)
    path.write_bytes(bytes(big))
    with pytest.raises(formats.InconsistentHeaderError, match="offset 12"):
        formats.open_mdc(path)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzzed_header_leaves(small, tmp_path_factory, data) -> None:
    """Replace random leaves of the header with random values: FormatError or a correct read."""
    raw_file, good, r = small
    header = msgpack.unpackb(msgpack.packb(r.header))
    leaves: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, (dict, list)) and v:
                walk(v)
            else:
                leaves.append((node, k))

    walk(header)
    values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=5),
                       st.binary(max_size=5), st.lists(st.integers(-5, 100), max_size=4), st.just({}))
    for _ in range(data.draw(st.integers(1, 3))):
        node, key = leaves[data.draw(st.integers(0, len(leaves) - 1))]
        node[key] = data.draw(values)
    path = tmp_path_factory.mktemp("fz") / "f.mdc"
    with bounded_memory():
        check_file(path, rebuild(raw_file, header), good, BUNDLE, header_may_differ=True)


# ------------------------------------------------------------------ header amplification (bounded unpacking)


def _keys(n: int) -> bytes:
    return b"".join(msgpack.packb(f"k{i}") + b"\x00" for i in range(n))


def _array32(n: int, items: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + items


AMPLIFIERS = {  # ~2-4 MiB headers that unpack to 10-40x their size in Python objects
    "one map of 400k keys": b"\xdf" + struct.pack(">I", 400_000) + _keys(400_000),
    "maps of 65k keys": b"\x81\xa1a" + _array32(8, (b"\xde\xff\xff" + _keys(65_535)) * 8),
    "chain of string arrays": b"\x81\xa1a" + b"".join(_array32(40_001, b"\xa2ab" * 40_000) for _ in range(20))
                              + b"\x90",
    "4M fixints": b"\x81\xa1a" + _array32(4_000_000, b"\x01" * 4_000_000),
    "alternating floats and ints": b"\x81\xa1a" + _array32(1_000_000, (b"\xcb" + b"\0" * 8 + b"\xce" + b"\1" * 4)
                                                           * 500_000),
    "empty arrays": b"\x81\xa1a" + _array32(190_000, b"\x90" * 190_000),
}


@pytest.mark.parametrize("name", sorted(AMPLIFIERS))
def test_header_amplification_is_refused_before_unpacking(small, tmp_path: Path, name: str) -> None:
    import time

    data, _, _ = small
    raw = AMPLIFIERS[name]
    path = tmp_path / "a.mdc"
    path.write_bytes(rebuild(data, None, raw=raw))
    t0 = time.process_time()
    with rss_growth_below(2 * len(raw) + (32 << 20)), pytest.raises(
            formats.InconsistentHeaderError, match="refused before unpacking") as exc:
        formats.open_mdc(path)
    assert time.process_time() - t0 < 2.0
    assert type(exc.value) is formats.InconsistentHeaderError


@contextmanager
def rss_growth_below(limit: int) -> Iterator[None]:
    """Resident memory stays within `limit` of where it started (sampled; generous)."""
    with PeakRSS() as rss:
        yield
    assert rss.growth < limit, f"resident memory grew by {rss.growth >> 20} MiB"


def test_header_memory_bound_is_proportional_and_capped() -> None:
    from formats.bounded import memory_limit

    assert memory_limit(1000) == (1 << 20) + 64 * 1000
    assert memory_limit(16 << 20) == 32 << 20


_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=12), st.binary(max_size=12))
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=6)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=6), max_leaves=40)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _VALUES, max_size=8))
def test_scan_prices_at_least_what_unpacking_allocates(header: dict) -> None:
    """The estimate bounds what msgpack really allocates, so refusing by the estimate bounds memory."""
    from formats.bounded import scan, unpack

    raw = msgpack.packb(header, use_bin_type=True)
    cost = scan(raw, limit=1 << 40)
    tracemalloc.start()
    got = msgpack.unpackb(raw, raw=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= cost + 256, (peak, cost)
    assert msgpack.packb(unpack(raw), use_bin_type=True) == msgpack.packb(got, use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_scan_of_arbitrary_bytes_agrees_with_msgpack(raw: bytes) -> None:
    """Bytes are a header iff msgpack reads one map with string keys from them (within the bounds)."""
    from formats.bounded import unpack

    def string_keys(v: Any) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and string_keys(x) for k, x in v.items())
        return all(string_keys(x) for x in v) if isinstance(v, list) else True

    try:
        want = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        ok = isinstance(want, dict) and string_keys(want)
    except Exception:
        ok = False
    try:
        got = unpack(raw)
    except formats.InconsistentHeaderError:
        assert not ok
        return
    assert ok and msgpack.packb(got) == msgpack.packb(want)
