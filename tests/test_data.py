"""condenser.data: root resolution, the real Fashion-MNIST files, per-class index, folders, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from condenser.data import (
    DATASETS,
    DatasetSpec,
    denormalize_to_uint8,
    get_source,
    get_spec,
    load_dataset,
    normalize,
    roots,
    synthetic,
)
from condenser.errors import CondenserError, DatasetNotFoundError, UnknownNameError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $MULTISIZE_DATA, an empty user cache, the real system roots."""
    monkeypatch.delenv(roots.ENV_VAR, raising=False)
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(directory: Path, n: int = 20) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


# --- the installed Fashion-MNIST (CI installs dataset-fashion-mnist; never skipped) -----------


def test_resolution_finds_debian_fashion_mnist(isolated):
    assert get_source("fashion-mnist").resolve("train") == SYSTEM_FMNIST
    assert get_source("fashion-mnist").resolve("test") == SYSTEM_FMNIST


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")


def test_fashion_mnist_shapes(fmnist):
    train, test = fmnist
    assert len(train) == 60000 and len(test) == 10000
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert tuple(ds.images.shape[1:]) == (1, 28, 28)
        assert ds.spec == get_spec("fashion-mnist") == get_spec()
        assert ds.spec.num_classes == 10 and len(ds.spec.class_names) == 10 and ds.spec.allow_flip
    assert train.class_counts.tolist() == [6000] * 10
    assert test.class_counts.tolist() == [1000] * 10
    assert load_dataset() is train  # default name and split; cached per process


def test_per_class_index(fmnist):
    train, _ = fmnist
    seen = []
    for c in range(10):
        idx = train.class_indices(c)
        assert idx.dtype == torch.int64 and idx.numel() == 6000
        assert bool((train.labels[idx] == c).all())
        assert bool((idx[1:] > idx[:-1]).all())  # dataset order
        seen.append(idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(train)))
    with pytest.raises(ValueError):
        train.class_indices(10)


def test_first_of_class_is_dataset_order(fmnist):
    train, _ = fmnist
    labels = train.labels.numpy()
    for c in (0, 7):
        expected = np.nonzero(labels == c)[0]
        assert train.first_of_class(c, 5).tolist() == expected[:5].tolist()
        assert train.first_of_class(c, 3, offset=5).tolist() == expected[5:8].tolist()
    with pytest.raises(ValueError, match="6000 images"):
        train.first_of_class(0, 10, offset=5995)


def test_sample_class_normalized_subset(fmnist):
    train, _ = fmnist
    a = train.sample_class(3, 64, generator=torch.Generator().manual_seed(1))
    b = train.sample_class(3, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.unique().numel() == 64 and bool((train.labels[a] == 3).all())
    with pytest.raises(ValueError):
        train.sample_class(3, 6001)
    assert train.sample_class(3, 7000, replace=True).numel() == 7000
    x = train.normalized(a)
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
    manual = (train.images[a].float() / 255 - 0.2861) / 0.3530
    assert torch.allclose(x, manual, atol=1e-6)
    assert torch.equal(denormalize_to_uint8(x, train.spec), train.images[a])
    sub = train.subset(a)
    assert len(sub) == 64 and sub.class_counts[3] == 64 and sub.spec == train.spec


def test_normalize_statistics(fmnist):
    x = normalize(fmnist[0].images[:20000], fmnist[0].spec)
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


# --- resolution order and the not-found message ---------------------------------------------


def test_explicit_root_and_env_take_precedence(isolated, monkeypatch):
    write_tiny_mnist(isolated / "root" / "fashion-mnist", n=20)
    write_tiny_mnist(isolated / "env" / "FashionMNIST" / "raw", n=30)
    monkeypatch.setenv(roots.ENV_VAR, str(isolated / "env"))
    assert len(load_dataset("fashion-mnist", root=isolated / "root")) == 20
    assert len(load_dataset("fashion-mnist")) == 30  # torchvision's layout under $MULTISIZE_DATA
    ds = load_dataset("fashion-mnist", "test", root=isolated / "root" / "fashion-mnist")  # root = the dir
    assert len(ds) == 20 and ds.labels.tolist() == [i % 10 for i in range(20)]


def test_missing_dataset_lists_paths_and_hints(isolated, monkeypatch):
    system = isolated / "system"
    monkeypatch.setattr(roots, "SYSTEM_ROOTS", [system])
    monkeypatch.setenv(roots.ENV_VAR, str(isolated / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "train", root=isolated / "root")
    msg = str(info.value)
    for tried in (
        isolated / "root" / "fashion-mnist",
        isolated / "root",
        isolated / "env" / "fashion-mnist",
        isolated / "cache" / "data" / "fashion-mnist",
        system / "fashion-mnist",
    ):
        assert str(tried) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg and "--download" in msg
    assert "imagefolder:PATH" in msg and "train-images-idx3-ubyte" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_idx_is_a_clear_error(isolated):
    directory = isolated / "root" / "fashion-mnist"
    write_tiny_mnist(directory)
    (directory / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 9))
    with pytest.raises(CondenserError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", root=isolated / "root")


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_dataset("no-such-set")
    with pytest.raises(KeyError):  # UnknownNameError is also a KeyError
        get_spec("no-such-set")
    with pytest.raises(UnknownNameError, match="split"):
        load_dataset("synthetic", "validation")
    with pytest.raises(UnknownNameError):
        get_spec("synthetic:oops")


def test_static_specs():
    expected = {
        "fashion-mnist": (10, (1, 28, 28), True),
        "mnist": (10, (1, 28, 28), False),
        "cifar10": (10, (3, 32, 32), True),
        "cifar100": (100, (3, 32, 32), True),
        "svhn": (10, (3, 32, 32), False),
        "tiny-imagenet": (200, (3, 64, 64), True),
    }
    for name, (k, shape, flip) in expected.items():
        spec = get_spec(name)
        assert isinstance(spec, DatasetSpec) and name in DATASETS
        assert (spec.num_classes, spec.image_shape, spec.allow_flip) == (k, shape, flip)
        assert len(spec.class_names) == k == len(set(spec.class_names))
        assert len(spec.mean) == len(spec.std) == shape[0]


# --- imagefolder ------------------------------------------------------------------------------


def make_folder(root: Path, mode: str = "RGB") -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels: dict[str, list[np.ndarray]] = {}
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("dog", "cat", "bird"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                shape = (8, 8, 3) if mode == "RGB" else (8, 8)
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode=mode).save(d / f"{i}.png")
                pixels.setdefault(f"{split}/{cls}", []).append(arr)
    big = rng.integers(0, 256, (12, 16, 3) if mode == "RGB" else (12, 16), dtype=np.uint8)
    Image.fromarray(big, mode=mode).save(root / "train" / "cat" / "z_big.png")  # resized + cropped
    return pixels


def test_imagefolder(tmp_path):
    pixels = make_folder(tmp_path / "imgs")
    name = f"imagefolder:{tmp_path / 'imgs'}"
    spec = get_spec(name)
    assert spec.class_names == ("bird", "cat", "dog") and spec.image_shape == (3, 8, 8)
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert len(train) == 13 and len(test) == 6 and train.spec == spec
    assert train.class_counts.tolist() == [4, 5, 4] and test.class_counts.tolist() == [2, 2, 2]
    first_dog = train.images[train.first_of_class(2, 1)][0]
    assert torch.equal(first_dog, torch.from_numpy(pixels["train/dog"][0]).permute(2, 0, 1))
    assert train.images.dtype == torch.uint8 and len(spec.mean) == 3
    assert load_dataset(name, "train") is train


def test_imagefolder_gray_and_size(tmp_path):
    make_folder(tmp_path / "gray", mode="L")
    ds = load_dataset(f"imagefolder:{tmp_path / 'gray'}:6", "test")
    assert tuple(ds.images.shape) == (6, 1, 6, 6) and ds.spec.image_shape == (1, 6, 6)
    with pytest.raises(DatasetNotFoundError, match="PATH/train/<class>"):
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic():
    ds = synthetic(num_classes=200, image_shape=(3, 64, 64), per_class=2, seed=0)
    assert tuple(ds.images.shape) == (400, 3, 64, 64) and ds.spec.num_classes == 200
    assert ds.class_counts.tolist() == [2] * 200
    again = synthetic(num_classes=200, image_shape=(3, 64, 64), per_class=2, seed=0)
    assert torch.equal(ds.images, again.images)
    named = load_dataset("synthetic:200:3x64x64:4")
    assert len(named) == 800 and len(load_dataset("synthetic:200:3x64x64:4", "test")) == 400
    assert get_spec("synthetic").image_shape == (1, 28, 28)
    train, test = load_dataset("synthetic"), load_dataset("synthetic", "test")
    assert not torch.equal(train.images[: len(test)], test.images)


# --- on-disk formats of the other datasets, on tiny generated files ---------------------------


def test_user_cache_mnist(isolated):
    write_tiny_mnist(roots.user_cache_dir() / "mnist", n=10)
    ds = load_dataset("mnist", "test")
    assert len(ds) == 10 and not ds.spec.allow_flip and ds.spec.name == "mnist"


def test_cifar_pickles(isolated):
    import pickle

    rng = np.random.default_rng(0)
    for name, key, files in (
        ("cifar-10-batches-py", "labels", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
        ("cifar-100-python", "fine_labels", ["train", "test"]),
    ):
        directory = isolated / "root" / name
        directory.mkdir(parents=True)
        for f in files:
            batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), key: [0, 1, 2, 3]}
            (directory / f).write_bytes(pickle.dumps(batch))
    c10 = load_dataset("cifar10", "train", root=isolated / "root")
    assert tuple(c10.images.shape) == (20, 3, 32, 32) and c10.labels.tolist()[:4] == [0, 1, 2, 3]
    c100 = load_dataset("cifar100", "test", root=isolated / "root")
    assert len(c100) == 4 and c100.spec.num_classes == 100


def test_svhn_mat(isolated):
    import scipy.io

    directory = isolated / "root" / "svhn"
    directory.mkdir(parents=True)
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    scipy.io.savemat(directory / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [4]])})
    ds = load_dataset("svhn", "test", root=isolated / "root")
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]  # digit 0 is stored as 10
    assert torch.equal(ds.images[2], torch.from_numpy(x[:, :, :, 2]).permute(2, 0, 1))


def test_tiny_imagenet_layout(isolated):
    from PIL import Image

    base = isolated / "root" / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)))
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {i}, other" for i, w in enumerate(wnids)))
    img = Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    lines = []
    for i, w in enumerate(wnids[:3]):
        (base / "train" / w / "images").mkdir(parents=True)
        img.save(base / "train" / w / "images" / f"{w}_0.JPEG")
        img.save(base / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines))
    train = load_dataset("tiny-imagenet", "train", root=isolated / "root")
    test = load_dataset("tiny-imagenet", "test", root=isolated / "root")
    assert tuple(train.images.shape) == (3, 3, 64, 64) and train.labels.tolist() == [0, 1, 2]
    assert test.labels.tolist() == [0, 1, 2] and train.spec.class_names[1] == "thing 1"
    assert get_spec("tiny-imagenet", root=isolated / "root").class_names[199] == "thing 199"


def test_failed_download_is_reported(isolated, monkeypatch):
    monkeypatch.setattr(roots, "SYSTEM_ROOTS", [])
    source = get_source("fashion-mnist")

    def offline(base, split):
        raise OSError("network is unreachable")

    monkeypatch.setattr(source, "download", offline)
    with pytest.raises(DatasetNotFoundError, match="network is unreachable") as info:
        load_dataset("fashion-mnist", root=isolated / "root", download=True)
    assert str(isolated / "root") in str(info.value)
