"""Reading .mdc files: the header on open, then any IPC-k prefix by positional reads of its byte range only."""

from __future__ import annotations

import io
import os
import zlib
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

from formats.codecs import get_codec
from formats.data import Prefix, RawPrefix
from formats.errors import BudgetError, ChecksumError, InvalidDataError, TruncatedError
from formats.header import Header, Preamble, parse_header, parse_preamble, unpack_header
from formats.layout import PREAMBLE_SIZE
from formats.pixels import decode_pixels
from formats.views import VIEW_ARRAYS, decode_views

_COPY_CHUNK = 16 << 20
_READ_CHUNK = 4 << 20


class MDCReader:
    """An open .mdc file. Opening reads and validates only the preamble and the header."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._f: io.FileIO = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self.bytes_read = 0
        try:
            self.file_size = os.fstat(self._f.fileno()).st_size
            self.preamble: Preamble = parse_preamble(self._pread(0, min(PREAMBLE_SIZE, self.file_size)),
                                                     self.file_size)
            raw = unpack_header(self._pread(PREAMBLE_SIZE, self.preamble.header_length),
                                self.preamble.header_crc32)
            self.spec: Header = parse_header(raw)
        except BaseException:
            self._f.close()
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
        if not 0 <= i < self.spec.ipc_max:
            raise BudgetError(f"block index {i} is outside 0..{self.spec.ipc_max - 1}")
        start, end = self.spec.block_range(i)
        return self.body_offset + start, self.body_offset + end

    def prefix_nbytes(self, ipc: int) -> int:
        """Bytes from offset 0 that hold the IPC-`ipc` prefix (what a range request must fetch)."""
        self._check_budget(ipc)
        return self.block_range(ipc - 1)[1]

    def decoded_nbytes(self, ipc: int) -> int:
        """Memory that read(ipc) returns: float32 images, int64 labels, dense float32 targets."""
        self._check_budget(ipc)
        n = ipc * self.num_classes
        c, h, w = self.spec.image_shape
        total = n * (c * h * w * 4 + 8)
        if self.spec.views is not None:
            total += n * self.spec.views.count * (self.num_classes * 4 + 4 * 4 * 2 + 4 + 4 + 1)
        return total

    # ---------------------------------------------------------------------------------- reading
    def read(self, ipc: int, *, verify: bool = True) -> Prefix:
        """The IPC-`ipc` prefix (records 0 .. ipc*C-1), decoded to float32 normalized images."""
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
            v = s.views.count
            params = s.views.codec_params(c)
            codec = get_codec(s.views.codec)
            stored = {sa.name: a[sa.name].reshape(n * v, *sa.shape) for sa in codec.stored(params)}
            targets = codec.decode(stored, params).reshape(n, v, c)
            flat = {k: a[k].reshape(n, *a[k].shape[2:]) for k in VIEW_ARRAYS}
            views = decode_views(flat, targets, c, s.image_shape[1:])
        return Prefix(ipc=ipc, images=images, labels=labels, views=views, num_classes=c,
                      label_kind=s.views.label_kind if s.views else None,
                      temperature=s.views.temperature if s.views else None)

    def read_raw(self, ipc: int, *, verify: bool = True) -> RawPrefix:
        """The stored arrays of blocks 0..ipc-1, undecoded, checksums verified.

        Each array has shape [ipc, *per-block shape] and is a read-only view of one read buffer (no
        copy); `.reshape(ipc * C, ...)` indexes it by record (that copies).
        """
        self._check_budget(ipc)
        s = self.spec
        present = self.blocks_present
        if ipc > present:
            raise TruncatedError(
                f"{self.path}: file holds {present} of {s.ipc_max} IPC blocks ({self.file_size} bytes); "
                f"IPC-{ipc} needs {self.prefix_nbytes(ipc)} bytes")
        stride, length = s.block_stride, s.block_length
        start = self.body_offset + s.blocks_offset
        nbytes = (ipc - 1) * stride + length
        buf = np.empty(nbytes, dtype=np.uint8)  # <= the file size: checked above via blocks_present
        # One row per block, without the padding after the last one (stride may be >> length).
        rows = as_strided(buf, shape=(ipc, length), strides=(stride, 1), writeable=False)
        self._advise(start, nbytes)
        pos = checked = 0
        while pos < nbytes:  # read in chunks; check each block as soon as it is in, while the kernel reads on
            end = min(nbytes, pos + _READ_CHUNK)
            self._readinto(start + pos, memoryview(buf)[pos:end])
            pos = end
            while verify and checked < ipc and checked * stride + length <= pos:
                got = zlib.crc32(rows[checked])
                if got != s.block_crc32[checked]:
                    b0 = start + checked * stride
                    raise ChecksumError(f"IPC block {checked} (bytes {b0}..{b0 + length}) fails its checksum: "
                                        f"stored crc32 {s.block_crc32[checked]:#010x}, computed {got:#010x}")
                checked += 1
        arrays = {spec.name: rows[:, spec.offset:spec.end].view(spec.np_dtype).reshape(ipc, *spec.shape)
                  for spec in s.arrays.values()}
        return RawPrefix(ipc=ipc, arrays=arrays, nbytes=nbytes)

    def section(self, name: str) -> bytes:
        """A pre-block section's bytes (checksum verified)."""
        for sec in self.spec.sections:
            if sec.name == name:
                start = self.body_offset + sec.offset
                if start + sec.length > self.file_size:
                    raise TruncatedError(f"section {name!r} (bytes {start}..{start + sec.length}) runs past "
                                         f"the end of the {self.file_size}-byte file")
                data = self._pread(start, sec.length)
                if zlib.crc32(data) != sec.crc32:
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
                    if zlib.crc32(memoryview(data)[lo:lo + s.block_length]) != s.block_crc32[b]:
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
    def _check_budget(self, ipc: int) -> None:
        if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)):
            raise BudgetError(f"IPC budget must be an integer, got {type(ipc).__name__}")
        if not 1 <= ipc <= self.spec.ipc_max:
            raise BudgetError(f"IPC budget {ipc} is outside 1..{self.spec.ipc_max} (ipc_max of {self.path})")

    def _advise(self, offset: int, length: int) -> None:
        """Tell the kernel which range comes next, so it reads ahead while blocks are checked."""
        if length >= _READ_CHUNK and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._f.fileno(), offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass

    def _readinto(self, offset: int, view: memoryview) -> None:
        """Fill view from the file at offset (positional reads where the OS has them: thread-safe)."""
        got = 0
        fd = self._f.fileno()
        while got < len(view):
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[got:]], offset + got)
            else:
                self._f.seek(offset + got)
                n = self._f.readinto(view[got:])
            if not n:
                raise TruncatedError(f"{self.path}: unexpected end of file at byte {offset + got}")
            got += n
        self.bytes_read += got

    def _pread(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self._readinto(offset, memoryview(buf))
        return buf

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MDCReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None:
            f.close()

    def __repr__(self) -> str:
        return (f"MDCReader({self.path!r}, dataset={self.spec.dataset!r}, ipc_max={self.ipc_max}, "
                f"blocks_present={self.blocks_present})")


def open_mdc(path: str | os.PathLike[str]) -> MDCReader:
    """Open an .mdc file and validate its header; block bytes are read only by read()."""
    return MDCReader(path)
