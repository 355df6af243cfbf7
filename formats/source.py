"""Where a reader's bytes come from: a regular file, an in-memory buffer, or a binary file object.

A path is checked with stat before it is opened, and opened non-blocking, so a FIFO, a device, a
directory or a symlink loop is refused with a SourceError instead of blocking or leaking an OSError.
Device apps often hold a downloaded buffer rather than a path: bytes, bytearray and memoryview are
read in place, and a seekable binary file object (io.BytesIO, open(path, "rb")) through seek + readinto.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Any, Protocol

from formats.errors import SourceError

_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


class Source(Protocol):
    """Positional reads of a fixed-size byte source."""

    name: str  # for messages: the path, or "<bytes>", or the file object's name
    size: int
    concurrent: bool  # readinto may run on several threads at once (positional reads, no shared position)

    def readinto(self, offset: int, view: memoryview) -> int: ...

    def advise(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


class FileSource:
    """A regular file opened by this reader (its own descriptor; positional reads, so thread-safe)."""

    concurrent = hasattr(os, "preadv")  # the lseek + readv fallback shares the descriptor's position

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fsdecode(path)
        self._fd = -1
        self._check(self._stat(lambda: os.stat(path)))
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot open: {exc.strerror or exc}") from None
        try:
            st = self._stat(lambda: os.fstat(fd))
            self._check(st)  # the path may have been replaced between stat and open
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.size = fd, st.st_size

    def _stat(self, call: Any) -> os.stat_result:
        try:
            return call()
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot open: {exc.strerror or exc}") from None

    def _check(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{self.name}: is a {_kind(st.st_mode)}, not a regular file")

    def readinto(self, offset: int, view: memoryview) -> int:
        try:
            if hasattr(os, "preadv"):
                return os.preadv(self._fd, [view], offset)
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.readv(self._fd, [view])
        except OSError as exc:
            raise SourceError(f"{self.name}: read failed at byte {offset}: {exc.strerror or exc}") from None

    def advise(self, offset: int, length: int) -> None:
        """Tell the kernel which range comes next, so it reads ahead while blocks are checked."""
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BufferSource:
    """An .mdc file already in memory (bytes, bytearray, memoryview): read in place, never copied whole."""

    concurrent = True

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._mv: memoryview | None = memoryview(data).cast("B")
        except TypeError as exc:
            raise SourceError(f"<{type(data).__name__}>: cannot read it as bytes: {exc}") from None
        self.name = f"<{type(data).__name__}>"
        self.size = len(self._mv)

    def readinto(self, offset: int, view: memoryview) -> int:
        if self._mv is None:
            raise SourceError(f"{self.name}: the reader is closed")
        chunk = self._mv[offset:offset + len(view)]
        view[:len(chunk)] = chunk
        return len(chunk)

    def advise(self, offset: int, length: int) -> None:
        pass

    def close(self) -> None:
        if self._mv is not None:
            self._mv.release()
            self._mv = None


class StreamSource:
    """A seekable binary file object owned by the caller (io.BytesIO, open(path, "rb")); offsets from 0.

    The reader seeks it for every read and never closes it.
    """

    concurrent = False  # seek + read share the object's position

    def __init__(self, f: Any) -> None:
        name = getattr(f, "name", None)
        self.name = name if isinstance(name, str) else f"<{type(f).__name__}>"
        self._f = f
        if isinstance(f, io.TextIOBase):
            raise SourceError(f"{self.name}: is a text stream; open the file in binary mode ('rb')")
        try:
            if hasattr(f, "seekable") and not f.seekable():
                raise SourceError(f"{self.name}: is not seekable (a pipe or socket); read it into bytes first")
            self.size = int(f.seek(0, os.SEEK_END))
        except (OSError, ValueError) as exc:
            raise SourceError(f"{self.name}: cannot seek: {exc}") from None

    def readinto(self, offset: int, view: memoryview) -> int:
        if self._f is None:
            raise SourceError(f"{self.name}: the reader is closed")
        try:
            self._f.seek(offset)
            if hasattr(self._f, "readinto"):
                got = self._f.readinto(view)
            else:
                data = self._f.read(len(view))
                if not isinstance(data, (bytes, bytearray)):
                    raise SourceError(f"{self.name}: read() returned {type(data).__name__}, not bytes")
                view[:len(data)] = data
                got = len(data)
        except (OSError, ValueError) as exc:
            raise SourceError(f"{self.name}: read failed at byte {offset}: {exc}") from None
        if not isinstance(got, int):
            raise SourceError(f"{self.name}: readinto() returned {got!r}; a blocking binary stream is needed")
        return got

    def advise(self, offset: int, length: int) -> None:
        pass

    def close(self) -> None:
        self._f = None


MDCSource = str | os.PathLike | bytes | bytearray | memoryview | io.IOBase


def open_source(src: Any) -> Source:
    """The Source for a path, a buffer or a binary file object; SourceError for anything else."""
    if isinstance(src, (str, os.PathLike)):
        return FileSource(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return BufferSource(src)
    if callable(getattr(src, "seek", None)) and (callable(getattr(src, "readinto", None))
                                                   or callable(getattr(src, "read", None))):
        return StreamSource(src)
    raise SourceError(f"cannot read an .mdc file from a {type(src).__name__}: pass a path, bytes, or a "
                      f"seekable binary file object")


__all__ = ["BufferSource", "FileSource", "MDCSource", "Source", "StreamSource", "open_source"]
