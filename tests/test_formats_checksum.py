"""The container's CRC-32 (formats/checksum.py): the fast implementation gives zlib's value for every input, and
without it the reader falls back to zlib and reads the same files."""

from __future__ import annotations

import builtins
import importlib
import zlib

import numpy as np
import pytest

import formats.checksum as checksum


@pytest.mark.parametrize("size", [0, 1, 7, 64, 4095, 1 << 20])
def test_crc32_equals_zlib_on_bytes_and_array_views(size):
    data = np.random.default_rng(size).integers(0, 256, size + 3, dtype=np.uint8)
    view = data[3:]  # an unaligned view, as a block row of formats/writer.py is
    assert checksum.crc32(view) == zlib.crc32(view.tobytes())
    assert checksum.crc32(memoryview(view)) == zlib.crc32(view.tobytes())
    assert checksum.crc32(bytes(view)) == zlib.crc32(view.tobytes())


def test_without_isal_the_checksum_is_zlibs(monkeypatch):
    real_import = builtins.__import__

    def no_isal(name, *args, **kwargs):
        if name.startswith("isal"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_isal)
    fallback = importlib.reload(checksum)
    try:
        assert fallback.IMPLEMENTATION == "zlib" and fallback.crc32(b"multisize") == zlib.crc32(b"multisize")
    finally:
        monkeypatch.undo()
        importlib.reload(checksum)


def test_the_server_distribution_checks_with_isal():
    """isal is a dependency of the server distribution (pyproject.toml): a verified read there is not zlib-bound."""
    assert checksum.IMPLEMENTATION == "isal"
