"""The .mdc container: one condensed dataset, stored so that every IPC-k prefix is one byte range.

numpy + msgpack only; importing this package never imports torch. Spec: docs/format.md.
"""

from formats.codecs import REGISTRY as CODECS
from formats.codecs import Codec, CodecParams, get_codec
from formats.data import MDCData, Prefix, RawPrefix, Views
from formats.errors import (
    BadMagicError,
    BudgetError,
    ChecksumError,
    DecodeLimitError,
    FormatError,
    InconsistentHeaderError,
    InvalidDataError,
    SourceError,
    TruncatedError,
    UnknownCodecError,
    UnsupportedVersionError,
)
from formats.layout import DEFAULT_MAX_DECODE_BYTES, FORMAT_MAJOR, FORMAT_MINOR, MAGIC
from formats.reader import MDCReader, open_mdc
from formats.targets import CompactTargets
from formats.writer import encode, label_nbytes, set_results, update_header, write_mdc

__all__ = [
    "CODECS", "Codec", "CodecParams", "get_codec",
    "CompactTargets", "MDCData", "Prefix", "RawPrefix", "Views",
    "FormatError", "BadMagicError", "BudgetError", "ChecksumError", "DecodeLimitError", "InconsistentHeaderError",
    "InvalidDataError", "SourceError", "TruncatedError", "UnknownCodecError", "UnsupportedVersionError",
    "DEFAULT_MAX_DECODE_BYTES", "FORMAT_MAJOR", "FORMAT_MINOR", "MAGIC",
    "MDCReader", "open_mdc", "encode", "label_nbytes", "set_results", "update_header", "write_mdc",
]
