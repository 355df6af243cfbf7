"""One IDX reader and one root order (runtime.data) for the device's test data and the condenser's datasets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import runtime
from condenser.data import get_source, load_dataset, roots
from condenser.errors import CondenserError
from runtime.data import DataRoot, data_roots, idx_files, read_idx, read_idx_dir
from runtime.errors import DataError


def _idx(array: np.ndarray, element_type: int = 0x08) -> bytes:
    return bytes([0, 0, element_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    stem = "t10k" if split == "test" else "train"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (directory / f"{stem}-labels-idx1-ubyte").write_bytes(_idx(labels))


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MULTISIZE_DATA", raising=False)
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_read_idx_reads_plain_and_gzip_files_as_writable_arrays(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(a)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        np.testing.assert_array_equal(got, a)
        assert got.dtype == np.uint8 and got.flags.writeable


@pytest.mark.parametrize(("content", "message"), [
    (b"\x01\x00\x08\x01", "is not an IDX file"),
    (b"", "magic missing"),
    (_idx(np.zeros(3, np.uint8), element_type=0x0D), "element type 0x0d is not unsigned byte"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (_idx(np.zeros(3, np.uint8)) + b"\x00", "IDX header says 3 bytes for shape (3,), found 4"),
    (_idx(np.zeros(3, np.uint8))[:-1], "IDX header says 3 bytes for shape (3,), found 2"),
])
def test_a_malformed_idx_file_is_a_data_error_naming_it(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad-idx1-ubyte") as info:
        read_idx(path)
    assert message in str(info.value)


def test_a_truncated_or_corrupt_gzip_is_a_data_error(tmp_path):
    packed = gzip.compress(_idx(np.arange(200, dtype=np.uint8)))
    (tmp_path / "cut.gz").write_bytes(packed[:-12])
    (tmp_path / "junk.gz").write_bytes(packed[:10] + b"\xff" * 40)
    for name in ("cut.gz", "junk.gz"):
        with pytest.raises(DataError, match=f"cannot read IDX file .*{name}"):
            read_idx(tmp_path / name)


def test_read_idx_dir_checks_the_pair_and_the_split(tmp_path):
    _write_split(tmp_path, "test", np.zeros((3, 2, 2), np.uint8), np.array([1, 0, 2], np.uint8))
    x, y = read_idx_dir(tmp_path)
    assert x.shape == (3, 2, 2) and y.dtype == np.int64 and y.tolist() == [1, 0, 2]
    assert idx_files(tmp_path, "test") == (tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte")
    assert idx_files(tmp_path, "train") is None
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        read_idx_dir(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split 'val'; known: test, train"):
        read_idx_dir(tmp_path, "val")
    _write_split(tmp_path, "train", np.zeros((3, 2, 2), np.uint8), np.zeros((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"IDX images \(3, 2, 2\) and labels \(3, 1\) do not match"):
        read_idx_dir(tmp_path, "train")


def test_roots_are_explicit_env_cache_then_system(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTISIZE_DATA", str(tmp_path / "env"))
    got = data_roots(tmp_path / "root", tmp_path / "cache", system=[tmp_path / "sys"])
    assert got == [DataRoot(tmp_path / "root", "--data-root"), DataRoot(tmp_path / "env", "$MULTISIZE_DATA"),
                   DataRoot(tmp_path / "cache", "user cache"), DataRoot(tmp_path / "sys", "system")]
    monkeypatch.delenv("MULTISIZE_DATA")
    assert data_roots() == [DataRoot(Path("/usr/share/datasets"), "system")]


def test_the_condenser_searches_the_runtime_roots(clean_env, monkeypatch):
    monkeypatch.setenv("MULTISIZE_DATA", str(clean_env / "env"))
    monkeypatch.setattr(roots, "SYSTEM_ROOTS", [clean_env / "sys"])
    tried = roots.candidate_dirs(("mnist", "MNIST"), clean_env / "root")
    bases = data_roots(clean_env / "root", roots.user_cache_dir(), system=[clean_env / "sys"])
    expected = [DataRoot(b.path / d, b.origin) for b in bases for d in ("mnist", "MNIST")]
    expected.insert(2, bases[0])  # --data-root may be the dataset's directory itself
    assert tried == expected


def test_condenser_and_device_read_the_same_idx_files(clean_env, monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), (np.arange(12) % 10).astype(np.uint8)
    _write_split(clean_env / "env" / "mnist", "test", images, labels)
    monkeypatch.setenv("MULTISIZE_DATA", str(clean_env / "env"))
    x, y = runtime.load_test_data("mnist")
    server = load_dataset("mnist", "test")
    np.testing.assert_array_equal(server.images.numpy()[:, 0], x)
    np.testing.assert_array_equal(server.labels.numpy(), y)
    np.testing.assert_array_equal(x, images)


def test_the_condenser_reports_a_bad_idx_file_as_its_own_error(clean_env):
    directory = clean_env / "root" / "mnist"
    _write_split(directory, "train", np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    (directory / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01\x00\x00\x00\x02\x00\x00")
    with pytest.raises(CondenserError, match="train-labels-idx1-ubyte: IDX element type 0x09") as info:
        get_source("mnist").read(directory, "train")
    assert isinstance(info.value.__cause__, DataError)
    _write_split(directory, "test", np.zeros((2, 28), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(CondenserError, match=r"IDX images \(2, 28\) are not \[N, H, W\]"):
        get_source("mnist").read(directory, "test")


def test_the_apt_hint_names_the_debian_directory(clean_env):
    hints = get_source("fashion-mnist").hints(clean_env)
    assert hints[0].endswith("(installs /usr/share/datasets/fashion-mnist)")
