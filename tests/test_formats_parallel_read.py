"""A prefix read split over threads (formats/reader.py, issue 14 item 5) returns what one thread reads, and
fails as one thread fails: the lowest corrupted block's ChecksumError, naming that block."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import formats
from formats import reader as reader_module
from formats.testing import make_data

IPC_MAX = 7


@pytest.fixture(scope="module")
def mdc_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = make_data(num_classes=4, ipc_max=IPC_MAX, views=3, image_shape=(3, 8, 8), codec="topk-u8", topk=2)
    path = tmp_path_factory.mktemp("parallel") / "x.mdc"
    formats.write_mdc(path, data)
    return path.read_bytes()


@pytest.fixture
def path(tmp_path: Path, mdc_bytes: bytes) -> Path:
    p = tmp_path / "x.mdc"
    p.write_bytes(mdc_bytes)
    return p


def _corrupt(path: Path, blocks: list[int]) -> None:
    """Flip one byte in the middle of each listed block."""
    with formats.open_mdc(path) as r:
        ranges = [r.block_range(b) for b in blocks]
    raw = bytearray(path.read_bytes())
    for lo, hi in ranges:
        raw[(lo + hi) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("threads", [2, 3, 4, IPC_MAX, 64])
def test_split_read_returns_the_arrays_and_byte_count_of_one_thread(path: Path, threads: int) -> None:
    with formats.open_mdc(path, threads=1) as one, formats.open_mdc(path, threads=threads) as many:
        for k in (1, 3, IPC_MAX):
            a, b = one.read_raw(k), many.read_raw(k)
            assert a.arrays.keys() == b.arrays.keys()
            for name in a.arrays:
                np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
            assert many.bytes_read == one.bytes_read
        np.testing.assert_array_equal(one.read(IPC_MAX).views.crop, many.read(IPC_MAX).views.crop)


def test_split_read_runs_its_parts_on_other_threads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int]] = []
    fill = reader_module.MDCReader._fill_blocks

    def spy(self, buf, rows, lo, hi, *rest):  # noqa: ANN001, ANN202
        seen.append((threading.current_thread().name, lo, hi))
        return fill(self, buf, rows, lo, hi, *rest)

    monkeypatch.setattr(reader_module.MDCReader, "_fill_blocks", spy)
    formats.open_mdc(path, threads=3).read_raw(IPC_MAX)
    assert sorted((lo, hi) for _, lo, hi in seen) == [(0, 2), (2, 4), (4, 7)]
    assert {name for name, _, _ in seen} == {threading.current_thread().name, "mdc-read-1", "mdc-read-2"}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("bad", "named"), [([0], 0), ([5], 5), ([6, 1], 1), ([4, 6], 4)])
def test_a_corrupted_block_fails_with_its_name_whatever_the_split(path: Path, threads: int, bad: list[int],
                                                                    named: int) -> None:
    _corrupt(path, bad)
    with formats.open_mdc(path, threads=threads) as r:
        with pytest.raises(formats.ChecksumError, match=rf"^IPC block {named} \(bytes \d+\.\.\d+\) fails its checksum"):
            r.read_raw(IPC_MAX)
        r.read_raw(IPC_MAX, verify=False)
        if min(bad) > 0:
            r.read_raw(min(bad))  # the blocks before the first bad one still verify


def test_file_objects_are_read_on_one_thread(path: Path, mdc_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []
    fill = reader_module.MDCReader._fill_blocks
    monkeypatch.setattr(reader_module.MDCReader, "_fill_blocks",
                        lambda self, *a: (names.append(threading.current_thread().name), fill(self, *a))[1])
    with open(path, "rb") as f:
        got = formats.open_mdc(f, threads=4).read_raw(IPC_MAX)
    want = formats.open_mdc(mdc_bytes, threads=4).read_raw(IPC_MAX)
    for name in want.arrays:
        np.testing.assert_array_equal(got.arrays[name], want.arrays[name])
    assert names.count(threading.current_thread().name) == 1 + 1  # the file object's read, then the bytes' part 0
    assert len(names) == 1 + min(4, IPC_MAX)


def test_automatic_split_follows_prefix_size_and_cores(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = formats.open_mdc(path)
    monkeypatch.setattr(reader_module, "usable_cores", lambda: 3)
    assert r._parts(IPC_MAX, reader_module._PART_MIN - 1) == 1  # a small prefix stays on one thread
    assert r._parts(IPC_MAX, 2 * reader_module._PART_MIN) == 2
    assert r._parts(IPC_MAX, 100 * reader_module._PART_MIN) == 3  # no more threads than cores
    assert r._parts(2, 100 * reader_module._PART_MIN) == 2  # nor than blocks
    monkeypatch.setattr(reader_module, "usable_cores", lambda: 64)
    assert r._parts(IPC_MAX, 100 * reader_module._PART_MIN) == reader_module._MAX_THREADS


def test_split_covers_every_block_once() -> None:
    for ipc in range(1, 12):
        for parts in range(1, 14):
            runs = reader_module._split(ipc, parts)
            assert [b for lo, hi in runs for b in range(lo, hi)] == list(range(ipc))
            sizes = [hi - lo for lo, hi in runs]
            assert len(runs) == min(ipc, parts) and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("threads", [0, -1, True, 1.5, "2"])
def test_threads_must_be_a_positive_integer(path: Path, threads: object) -> None:
    with pytest.raises(ValueError, match=r"^threads must be a positive integer or None, got "):
        formats.open_mdc(path, threads=threads)
