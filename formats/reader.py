"""Reading .mdc files: the header on open, then any IPC-k prefix by positional reads of its byte range only."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from itertools import pairwise
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided

from formats.checksum import crc32
from formats.codecs import get_codec
from formats.data import Prefix, RawPrefix
from formats.errors import BudgetError, ChecksumError, InvalidDataError, TruncatedError
from formats.formation import decode_prefix
from formats.header import Header, Preamble, parse_header, parse_preamble, unpack_header
from formats.layout import DEFAULT_MAX_DECODE_BYTES, PREAMBLE_SIZE
from formats.pixels import decode_pixels
from formats.source import MDCSource, open_source
from formats.targets import CompactTargets, check_decode
from formats.views import VIEW_ARRAYS, decode_views

_COPY_CHUNK = 16 << 20
_READ_CHUNK = 4 << 20
_PART_MIN = 8 << 20  # bytes per reading thread, at least: below it a thread costs more than it saves
_MAX_THREADS = 4
VIEW_PARAM_BYTES = 16 + 1 + 4 + 16 + 4  # decoded crop, flip, partner, mix box, mix lam per view
TargetsMode = Literal["dense", "compact"]
FormationMode = Literal["stored", "decoded"]


def budget_int(ipc: Any) -> int:
    """An IPC budget as a Python int: ints and numpy integers pass, anything else (bools included) is a
    BudgetError. Converting first keeps numpy's fixed-width arithmetic out of offsets and sizes."""
    if isinstance(ipc, (bool, np.bool_)) or not isinstance(ipc, (int, np.integer)):
        raise BudgetError(f"IPC budget must be an integer, got {type(ipc).__name__} {ipc!r}")
    return int(ipc)


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _optional_int(name: str, value: Any, minimum: int) -> int | None:
    """None, or an integer >= minimum (a bool is refused): the reader's `threads` and `max_bytes` options."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer or None, got {value!r}")
    return int(value)


def _split(ipc: int, parts: int) -> list[tuple[int, int]]:
    """Blocks 0..ipc-1 as `parts` contiguous runs [lo, hi) of near-equal length."""
    bounds = [ipc * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in pairwise(bounds) if hi > lo]


def _run_parts(jobs: list[Callable[[Callable[[], bool]], None]]) -> None:
    """Run jobs[1:] on threads and jobs[0] on this one; once all have ended, raise the error of the first job
    that failed, in job order, so the caller sees what a sequential pass would have met first.

    Each job gets `stop()`: true once an earlier job failed, when its own work can no longer be reported.
    """
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            jobs[i](lambda: any(e is not None for e in errors[:i]))
        except BaseException as exc:  # noqa: BLE001 - re-raised below, on the calling thread
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"mdc-read-{i}", daemon=True)
               for i in range(1, len(jobs))]
    for t in threads:
        t.start()
    try:
        run(0)
    finally:
        for t in threads:
            t.join()
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


class MDCReader:
    """An open .mdc file. Opening reads and validates only the preamble and the header.

    `source` is a path, the file's bytes (bytes, bytearray, memoryview: read in place), or a seekable
    binary file object (io.BytesIO, open(path, "rb"); offsets count from its position 0, and the caller
    keeps ownership: close() does not close it).

    `threads` caps the threads that read and check a prefix's blocks at once (None: one per 8 MiB of
    prefix, up to 4 and the usable cores). The checksum (formats/checksum.py) releases the GIL, so a
    verified read of a large prefix from the page cache runs at up to `threads` times one core's rate. A
    file object is always read on one thread.
    """

    def __init__(self, source: MDCSource, *, threads: int | None = None) -> None:
        self._threads = _optional_int("threads", threads, 1)
        self._src = open_source(source)
        self.path = self._src.name  # for messages; the path itself when opened from one
        self.bytes_read = 0
        try:
            self.file_size = self._src.size
            self.preamble: Preamble = parse_preamble(self._pread(0, min(PREAMBLE_SIZE, self.file_size)),
                                                     self.file_size)
            raw = unpack_header(self._pread(PREAMBLE_SIZE, self.preamble.header_length),
                                self.preamble.header_crc32)
            self.spec: Header = parse_header(raw)
        except BaseException:
            self._src.close()
            raise

    # ------------------------------------------------------------------------------ properties
    @property
    def header(self) -> dict[str, Any]:
        """The header map as stored (unknown keys included)."""
        return self.spec.raw

    @property
    def version(self) -> tuple[int, int]:
        return self.preamble.major, self.preamble.minor

    @property
    def ipc_max(self) -> int:
        return self.spec.ipc_max

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def body_offset(self) -> int:
        return self.preamble.body_offset

    @property
    def blocks_present(self) -> int:
        """Complete IPC blocks in the file: a file cut after block k is a valid IPC-k file."""
        s = self.spec
        body = self.file_size - self.body_offset - s.blocks_offset - s.block_length
        if body < 0:
            return 0
        return min(s.ipc_max, body // s.block_stride + 1)

    def block_range(self, i: int) -> tuple[int, int]:
        """Absolute (offset, end) of IPC block i (0-based)."""
        i = budget_int(i)
        if not 0 <= i < self.spec.ipc_max:
            raise BudgetError(f"block index {i} is outside 0..{self.spec.ipc_max - 1}")
        start, end = self.spec.block_range(i)
        return self.body_offset + start, self.body_offset + end

    def prefix_nbytes(self, ipc: int) -> int:
        """Bytes from offset 0 that hold the IPC-`ipc` prefix (what a range request must fetch)."""
        ipc = self._check_budget(ipc)
        return self.block_range(ipc - 1)[1]

    def decoded_nbytes(self, ipc: int, *, targets: TargetsMode = "dense", formation: FormationMode = "stored") -> int:
        """Memory that read(ipc, targets=..., formation=...) returns: float32 images, int64 labels, the
        decoded view parameters, and dense float32 targets [n, V, K] or (compact) the codec's stored arrays;
        formation="decoded" adds the f*f decoded images and labels per stored image.

        Known from the header alone; read() compares it with max_bytes before allocating anything.
        """
        ipc = self._check_budget(ipc)
        _check_mode(targets)
        _check_formation(formation)
        s = self.spec
        n = ipc * self.num_classes
        c, h, w = s.image_shape
        total = n * (c * h * w * 4 + 8)
        if formation == "decoded" and s.formation_factor > 1:
            total += n * s.formation_factor ** 2 * (c * h * w * 4 + 8)
        if s.views is not None:
            total += n * s.views.count * VIEW_PARAM_BYTES
            if targets == "dense":
                total += n * s.views.count * self.num_classes * 4
            else:
                codec = get_codec(s.views.codec)
                total += ipc * sum(s.arrays[a.name].length for a in codec.stored(s.views.codec_params(c)))
        return total

    # ---------------------------------------------------------------------------------- reading
    def read(self, ipc: int, *, verify: bool = True, targets: TargetsMode = "dense",
             max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES, formation: FormationMode = "stored") -> Prefix:
        """The IPC-`ipc` prefix (records 0 .. ipc*C-1), decoded to float32 normalized images.

        targets="dense" decodes the soft labels to float32 [n, V, K]; "compact" keeps them as stored
        (formats.targets.CompactTargets: rows decode when indexed). formation="decoded" returns the
        training images of a multi-formation file (formats.formation.decode_prefix: k*f*f*C records, views
        per decoded image, the stored images in `stored_images`); "stored" the stored records.
        DecodeLimitError, before anything is read, when decoded_nbytes(ipc, targets=..., formation=...)
        exceeds max_bytes (default 1 GiB; None: no limit).
        """
        ipc = self._check_budget(ipc)
        _check_mode(targets)
        _check_formation(formation)
        limit = _optional_int("max_bytes", max_bytes, 0)
        self._check_present(ipc)
        check_decode(self.decoded_nbytes(ipc, targets=targets, formation=formation), limit,
                     f"IPC-{ipc} of {self.path}")
        prefix = self._read_stored(ipc, verify, targets, limit)
        return decode_prefix(prefix) if formation == "decoded" else prefix

    def _read_stored(self, ipc: int, verify: bool, targets: TargetsMode, limit: int | None) -> Prefix:
        """read() of the stored records, after its checks."""
        raw = self.read_raw(ipc, verify=verify)
        s = self.spec
        c = s.num_classes
        n = ipc * c
        a = raw.arrays  # [ipc, C, ...] views of the read buffer: decode straight from them, no extra copy
        labels = a["labels"].astype(np.int64).reshape(n)
        want = np.tile(np.arange(c, dtype=np.int64), ipc)
        if not np.array_equal(labels, want):
            r = int(np.nonzero(labels != want)[0][0])
            raise InvalidDataError(f"record {r} in IPC block {r // c} has label {int(labels[r])}; "
                                   f"IPC-major order needs {r % c}")
        images = decode_pixels(a["images"], s.encoding, s.mean, s.std).reshape(n, *s.image_shape)
        views = None
        if s.views is not None:
            compact = self._targets(a, n, limit)
            flat = {k: a[k].reshape(n, *a[k].shape[2:]) for k in VIEW_ARRAYS}
            views = decode_views(flat, compact if targets == "compact" else np.asarray(compact), c,
                                 s.image_shape[1:], s.formation_factor)
        return Prefix(ipc=ipc, images=images, labels=labels, views=views, num_classes=c,
                      label_kind=s.views.label_kind if s.views else None,
                      temperature=s.views.temperature if s.views else None, formation_factor=s.formation_factor)

    def _targets(self, a: dict[str, np.ndarray], n: int, limit: int | None) -> CompactTargets:
        """The codec's stored arrays of n records, copied out of the read buffer and checked (section 7)."""
        views = self.spec.views
        v = views.count
        params = views.codec_params(self.num_classes)
        codec = get_codec(views.codec)
        stored = {}
        for sa in codec.stored(params):
            arr = a[sa.name].reshape(n * v, *sa.shape)
            stored[sa.name] = arr.copy() if np.may_share_memory(arr, a[sa.name]) else arr
        codec.check_stored(stored, params)
        return CompactTargets(codec, params, stored, v, limit)

    def read_raw(self, ipc: int, *, verify: bool = True) -> RawPrefix:
        """The stored arrays of blocks 0..ipc-1, undecoded, checksums verified.

        Each array has shape [ipc, *per-block shape] and is a read-only view of one read buffer (no
        copy); `.reshape(ipc * C, ...)` indexes it by record (that copies).
        """
        ipc = self._check_budget(ipc)
        self._check_present(ipc)
        s = self.spec
        start = self.body_offset + s.blocks_offset
        nbytes = (ipc - 1) * s.block_stride + s.block_length
        buf = np.empty(nbytes, dtype=np.uint8)  # <= the file size: checked above via blocks_present
        # One row per block, without the padding after the last one (stride may be >> length).
        rows = as_strided(buf, shape=(ipc, s.block_length), strides=(s.block_stride, 1), writeable=False)
        self._advise(start, nbytes)
        runs = _split(ipc, self._parts(ipc, nbytes))
        got = [0] * len(runs)
        jobs = [lambda stop, i=i, lo=lo, hi=hi: self._fill_blocks(buf, rows, lo, hi, verify, got, i, stop)
                for i, (lo, hi) in enumerate(runs)]
        try:
            _run_parts(jobs)
        finally:
            self.bytes_read += sum(got)
        arrays = {spec.name: rows[:, spec.offset:spec.end].view(spec.np_dtype).reshape(ipc, *spec.shape)
                  for spec in s.arrays.values()}
        return RawPrefix(ipc=ipc, arrays=arrays, nbytes=nbytes)

    def _parts(self, ipc: int, nbytes: int) -> int:
        """How many threads read_raw splits a prefix of `ipc` blocks and `nbytes` bytes over."""
        if not self._src.concurrent:
            return 1
        if self._threads is not None:
            return min(self._threads, ipc)
        return max(1, min(_MAX_THREADS, usable_cores(), ipc, nbytes // _PART_MIN))

    def _fill_blocks(self, buf: np.ndarray, rows: np.ndarray, lo: int, hi: int, verify: bool, got: list[int],
                     part: int, stop: Callable[[], bool]) -> None:
        """Read blocks lo..hi-1 (with the padding after each, up to the end of the prefix) into `buf`, in
        chunks, checking each block's crc32 as soon as it is in while the kernel reads on; count the bytes
        in got[part]. Returns early when stop() says an earlier part failed."""
        s = self.spec
        stride, length = s.block_stride, s.block_length
        start = self.body_offset + s.blocks_offset
        pos, end = lo * stride, min(hi * stride, len(buf))
        checked = lo
        while pos < end and not stop():
            chunk = min(end, pos + _READ_CHUNK)
            got[part] += self._fill(start + pos, memoryview(buf)[pos:chunk])
            pos = chunk
            while verify and checked < hi and checked * stride + length <= pos:
                self._check_block(rows, checked)
                checked += 1

    def _check_block(self, rows: np.ndarray, i: int) -> None:
        """ChecksumError naming IPC block i and its byte range unless its bytes (rows[i]) match its crc32."""
        s = self.spec
        computed = crc32(rows[i])
        if computed != s.block_crc32[i]:
            b0 = self.body_offset + s.blocks_offset + i * s.block_stride
            raise ChecksumError(f"IPC block {i} (bytes {b0}..{b0 + s.block_length}) fails its checksum: "
                                f"stored crc32 {s.block_crc32[i]:#010x}, computed {computed:#010x}")

    def section(self, name: str) -> bytes:
        """A pre-block section's bytes (checksum verified)."""
        for sec in self.spec.sections:
            if sec.name == name:
                start = self.body_offset + sec.offset
                if start + sec.length > self.file_size:
                    raise TruncatedError(f"section {name!r} (bytes {start}..{start + sec.length}) runs past "
                                         f"the end of the {self.file_size}-byte file")
                data = self._pread(start, sec.length)
                if crc32(data) != sec.crc32:
                    raise ChecksumError(f"section {name!r} (bytes {start}..{start + sec.length}) fails its "
                                        f"checksum")
                return bytes(data)
        raise KeyError(f"no section {name!r}; present: {[s.name for s in self.spec.sections]}")

    def trainer_bundle(self) -> bytes | None:
        """The embedded trainer bundle, or None when the file carries none."""
        if not any(s.name == "trainer_bundle" for s in self.spec.sections):
            return None
        return self.section("trainer_bundle")

    def copy_body(self, out: BinaryIO) -> None:
        """Copy every body byte to `out`, verifying sections and complete blocks on the way."""
        s = self.spec
        for sec in s.sections:
            if self.body_offset + sec.offset + sec.length <= self.file_size:
                self.section(sec.name)
        pos = self.body_offset
        first = self.body_offset + s.blocks_offset
        present = self.blocks_present
        i = 0
        while pos < self.file_size:
            if pos < first:
                end = min(first, self.file_size)
            elif i < present:
                group = max(1, _COPY_CHUNK // s.block_stride)
                j = min(present, i + group)
                end = min(self.file_size, first + j * s.block_stride)
                data = self._pread(pos, end - pos)
                for b in range(i, j):
                    lo = first + b * s.block_stride - pos
                    if crc32(memoryview(data)[lo:lo + s.block_length]) != s.block_crc32[b]:
                        raise ChecksumError(f"IPC block {b} (bytes {pos + lo}..{pos + lo + s.block_length}) "
                                            f"fails its checksum; header not updated")
                out.write(data)
                pos, i = end, j
                continue
            else:
                end = min(self.file_size, pos + _COPY_CHUNK)
            out.write(self._pread(pos, end - pos))
            pos = end

    # ---------------------------------------------------------------------------------- plumbing
    def _check_budget(self, ipc: Any) -> int:
        ipc = budget_int(ipc)
        if not 1 <= ipc <= self.spec.ipc_max:
            raise BudgetError(f"IPC budget {ipc} is outside 1..{self.spec.ipc_max} (ipc_max of {self.path})")
        return ipc

    def _check_present(self, ipc: int) -> None:
        present = self.blocks_present
        if ipc > present:
            raise TruncatedError(
                f"{self.path}: file holds {present} of {self.spec.ipc_max} IPC blocks ({self.file_size} bytes); "
                f"IPC-{ipc} needs {self.prefix_nbytes(ipc)} bytes")

    def _advise(self, offset: int, length: int) -> None:
        if length >= _READ_CHUNK:
            self._src.advise(offset, length)

    def _fill(self, offset: int, view: memoryview) -> int:
        """Fill view from the source at offset; returns its length. Safe on several threads when the source
        is concurrent (it touches no reader state)."""
        got = 0
        while got < len(view):
            n = self._src.readinto(offset + got, view[got:])
            if not n:
                raise TruncatedError(f"{self.path}: unexpected end of file at byte {offset + got}")
            got += n
        return got

    def _pread(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.bytes_read += self._fill(offset, memoryview(buf))
        return buf

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> MDCReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        src = getattr(self, "_src", None)
        if src is not None:
            src.close()

    def __repr__(self) -> str:
        return (f"MDCReader({self.path!r}, dataset={self.spec.dataset!r}, ipc_max={self.ipc_max}, "
                f"blocks_present={self.blocks_present})")


def _check_mode(targets: Any) -> None:
    if targets not in ("dense", "compact"):
        raise ValueError(f"targets must be 'dense' or 'compact', got {targets!r}")


def _check_formation(formation: Any) -> None:
    if formation not in ("stored", "decoded"):
        raise ValueError(f"formation must be 'stored' or 'decoded', got {formation!r}")


def open_mdc(source: MDCSource, *, threads: int | None = None) -> MDCReader:
    """Open an .mdc file (a path, its bytes, or a binary file object) and validate its header; block bytes
    are read only by read(), on up to `threads` threads (MDCReader)."""
    return MDCReader(source, threads=threads)
