"""Sources: regular files only (stat first, never blocking), and in-memory buffers and binary file objects.

Every unusable path or object is a formats.SourceError (also an OSError) that names it; a buffer or a
file object reads exactly what the path reads, in formats and in runtime.load.
"""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import formats
import runtime
from formats.testing import assert_prefix_equal, make_data

pytestmark = pytest.mark.usefixtures("bounded_memory")
MEMORY_BOUND = 64 << 20  # per test, checked by tests/conftest.py bounded_memory

BUNDLE = b"bundle-bytes" * 3


@pytest.fixture(scope="module")
def mdc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "x.mdc"
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=3, views=2, trainer_bundle=BUNDLE))
    return path


@contextmanager
def deadline(seconds: int = 5) -> Iterator[None]:
    """Fail instead of hanging (a FIFO's open() blocks until a writer comes)."""
    def boom(*_: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused(source: object, message: str) -> formats.SourceError:
    with deadline(), pytest.raises(formats.SourceError, match=message) as exc:
        formats.open_mdc(source)
    assert type(exc.value) is formats.SourceError and isinstance(exc.value, OSError)
    return exc.value


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mdc"
    os.mkfifo(fifo)
    refused(fifo, f"{fifo}: is a FIFO \\(named pipe\\), not a regular file")
    with deadline(), pytest.raises(formats.SourceError, match="FIFO"):
        runtime.load(fifo)


def test_directories_loops_devices_and_missing_paths(tmp_path: Path) -> None:
    refused(tmp_path, f"{tmp_path}: is a directory, not a regular file")
    loop = tmp_path / "loop.mdc"
    loop.symlink_to(loop)
    refused(loop, f"{loop}: cannot open: Too many levels of symbolic links")
    refused(tmp_path / "missing.mdc", "missing.mdc: cannot open: No such file or directory")
    if os.path.exists("/dev/zero"):
        refused("/dev/zero", "/dev/zero: is a character device, not a regular file")


def test_a_symlink_to_a_regular_file_reads(mdc: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.mdc"
    link.symlink_to(mdc)
    with formats.open_mdc(link) as a, formats.open_mdc(mdc) as b:
        assert_prefix_equal(a.read(3), b.read(3))


def _sources(data: bytes, path: Path) -> dict[str, object]:
    return {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data),
            "numpy memoryview": memoryview(np.frombuffer(data, np.uint8)), "BytesIO": io.BytesIO(data),
            "open file": open(path, "rb")}  # noqa: SIM115 - closed below


def test_buffers_and_file_objects_read_what_the_path_reads(mdc: Path) -> None:
    data = mdc.read_bytes()
    sources = _sources(data, mdc)
    with formats.open_mdc(mdc) as ref:
        for name, src in sources.items():
            with formats.open_mdc(src) as r:
                assert r.file_size == len(data) and r.header == ref.header, name
                for k in (1, 3):
                    assert_prefix_equal(r.read(k), ref.read(k))
                    assert_prefix_equal(r.read(k, targets="compact"), ref.read(k))
                np.testing.assert_array_equal(r.read_raw(2).arrays["images"], ref.read_raw(2).arrays["images"])
                assert r.trainer_bundle() == BUNDLE
            assert r.bytes_read > 0
    assert not sources["open file"].closed  # the caller owns a file object: close() leaves it open
    assert sources["BytesIO"].getvalue() == data
    sources["open file"].close()


def test_a_cut_buffer_is_a_valid_shorter_file(mdc: Path) -> None:
    data = mdc.read_bytes()
    with formats.open_mdc(mdc) as ref:
        cut = data[:ref.prefix_nbytes(2)]
    for src in (cut, io.BytesIO(cut)):
        with formats.open_mdc(src) as r:
            assert r.blocks_present == 2
            with pytest.raises(formats.TruncatedError, match="holds 2 of 3 IPC blocks"):
                r.read(3)
    with pytest.raises(formats.TruncatedError, match="file is 10 bytes"):
        formats.open_mdc(data[:10])
    with pytest.raises(formats.TruncatedError, match="0 bytes"):
        formats.open_mdc(io.BytesIO())


def test_unusable_objects_are_source_errors(tmp_path: Path) -> None:
    refused(io.StringIO("text"), "<StringIO>: is a text stream; open the file in binary mode")
    with open(tmp_path / "t.txt", "w") as text:
        refused(text, "t.txt: is a text stream")
    r, w = os.pipe()
    with open(r, "rb") as pipe, open(w, "wb"):
        refused(pipe, "is not seekable")
    refused(5, "cannot read an .mdc file from a int")
    refused(memoryview(np.zeros((4, 4), np.uint8)[:, ::2]), "<memoryview>: cannot read it as bytes")
    closed = io.BytesIO(b"x")
    closed.close()
    refused(closed, "<BytesIO>: cannot seek")


def test_reads_after_close_are_source_errors(mdc: Path) -> None:
    for src in (mdc.read_bytes(), io.BytesIO(mdc.read_bytes())):
        r = formats.open_mdc(src)
        r.close()
        with pytest.raises(formats.SourceError, match="the reader is closed"):
            r.read(1)


def test_runtime_load_takes_buffers_and_file_objects(mdc: Path) -> None:
    ref = runtime.load(mdc, budget=2)
    with open(mdc, "rb") as f:
        for src in (mdc.read_bytes(), bytearray(mdc.read_bytes()), io.BytesIO(mdc.read_bytes()), f):
            ds = runtime.load(src, budget=2)
            np.testing.assert_array_equal(ds.images, ref.images)
            np.testing.assert_array_equal(ds.soft_labels, ref.soft_labels)
            a, b = ds.make_batch(np.arange(6), rng=np.random.default_rng(0)), ref.make_batch(
                np.arange(6), rng=np.random.default_rng(0))
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.targets, b.targets)
            assert ds.trainer_bundle == BUNDLE
    assert ref.path == str(mdc) and runtime.load(io.BytesIO(mdc.read_bytes())).path == "<BytesIO>"
