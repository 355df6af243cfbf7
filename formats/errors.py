"""Error types of the .mdc container.

Every malformed input ends in one of these, never in an IndexError, MemoryError or a silently
wrong array. Messages name the problem and the byte offset or header key involved.
"""

from __future__ import annotations


class FormatError(Exception):
    """Base class: the file (or the data handed to the writer) breaks the .mdc format."""


class BadMagicError(FormatError):
    """The first bytes are not the .mdc magic: not an .mdc file at all."""


class UnsupportedVersionError(FormatError):
    """The file's major format version is one this reader does not know."""


class TruncatedError(FormatError):
    """The file ends before a section the caller needs (preamble, header, section, IPC block)."""


class ChecksumError(FormatError):
    """Stored bytes do not match their recorded checksum (header, section or IPC block)."""


class InconsistentHeaderError(FormatError):
    """The header is not valid msgpack, misses a required key, or contradicts itself or the file."""


class InvalidDataError(FormatError, ValueError):
    """Array contents break a rule of the format (writer input, or a block that passed its checksum)."""


class BudgetError(FormatError, ValueError):
    """A requested IPC budget is not an integer, or is outside 1..ipc_max."""


class DecodeLimitError(FormatError):
    """Decoding a prefix would allocate more than the caller's limit; raised before anything is allocated."""


class SourceError(FormatError, OSError):
    """The source cannot be read as an .mdc file: missing, not a regular file, unreadable, or an unusable object.

    Also an OSError, so code that handled the operating system's errors before keeps working.
    """


class UnknownCodecError(FormatError, KeyError):
    """A soft-label codec name is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
