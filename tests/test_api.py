"""The Python API: the README's example runs as written, and `from_arrays` refuses bad input by name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import formats
from condenser.build import BuildConfig, build
from condenser.data import ArrayDataError, from_arrays, load_dataset
from condenser.data.holdout import HoldoutError
from condenser.errors import CondenserError, UnknownNameError
from condenser.profiles import get_profile

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ["cat", "dog", "bird"]


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    section = README.read_text().split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under ## Python API"
    return match.group(1)


def arrays(per_class: int, seed: int, channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of 3 classes (a bright, a dark and a striped pattern plus noise) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(3 * per_class) % 3
    base = np.stack([np.full((8, 8, 3), 200.0), np.full((8, 8, 3), 50.0),
                     np.tile([[0.0], [255.0]], (4, 8))[..., None].repeat(3, axis=2)])
    images = (base[labels] + rng.normal(0, 20, (len(labels), 8, 8, 3))).clip(0, 255).astype(np.uint8)
    return (images if channels_last else images.transpose(0, 3, 1, 2).copy()), labels


def test_the_readme_example_builds_from_arrays_and_trains_on_the_device(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_images, train_labels = arrays(12, seed=0)
    test_images, test_labels = arrays(4, seed=1)
    lines: list[str] = []
    namespace = {"train_images": train_images, "train_labels": train_labels, "test_images": test_images,
                 "test_labels": test_labels, "print": lambda *a: lines.append(" ".join(map(str, a)))}
    exec(compile(readme_example(), str(README), "exec"), namespace)

    with formats.open_mdc(tmp_path / "pets-ipc5.mdc") as reader:
        assert reader.ipc_max == 5 and reader.header["dataset"] == "arrays:pets"
        assert reader.header["class_names"] == NAMES
        data = reader.header["provenance"]["data"]
    assert data["test"] == "given arrays" and data["train_images"] == 36 and data["test_images"] == 12
    assert namespace["ds"].ipc == 2 and len(namespace["ds"]) == 6
    accuracy = float(lines[-1])
    assert 0.0 <= accuracy <= 1.0 and lines[0].startswith("teacher ")


def test_both_layouts_and_grayscale_make_the_same_dataset():
    nhwc, labels = arrays(4, seed=0)
    a = from_arrays(nhwc, labels, NAMES, test_images=nhwc, test_labels=labels, name="a")
    b = from_arrays(nhwc.transpose(0, 3, 1, 2), torch.from_numpy(labels), NAMES, test_images=nhwc,
                    test_labels=labels, name="b")
    assert tuple(a.train.images.shape) == (12, 3, 8, 8)
    assert torch.equal(a.train.images, b.train.images) and a.train.fingerprint == b.train.fingerprint
    gray = from_arrays(nhwc[..., 0], labels, NAMES, test_images=nhwc[:3, ..., 0], test_labels=labels[:3],
                       name="gray")
    assert gray.spec().image_shape == (1, 8, 8) and len(gray.spec().mean) == 1
    assert torch.equal(gray.train.images[:, 0], torch.from_numpy(nhwc[..., 0]))


def test_the_dataset_keeps_its_own_copy_of_the_arrays():
    images, labels = arrays(4, seed=0, channels_last=False)
    source = from_arrays(images, labels, NAMES, test_images=images, test_labels=labels, name="copy")
    fingerprint = source.train.fingerprint
    images[:] = 0  # the caller reuses its buffer
    assert int(source.train.images.max()) > 0 and source.train.fingerprint == fingerprint


def test_a_held_out_split_is_stratified_disjoint_and_deterministic():
    images, labels = arrays(10, seed=0)
    first = from_arrays(images, labels, NAMES, name="held", holdout=0.3, seed=5)
    again = from_arrays(images, labels, NAMES, name="held", holdout=0.3, seed=5)
    other = from_arrays(images, labels, NAMES, name="held", holdout=0.3, seed=6)
    assert first.test.class_counts.tolist() == [3, 3, 3] and first.train.class_counts.tolist() == [7, 7, 7]
    assert torch.equal(first.test.images, again.test.images)
    assert not torch.equal(first.test.images, other.test.images)
    rows = {x.tobytes() for x in images.transpose(0, 3, 1, 2)}
    train = {x.numpy().tobytes() for x in first.train.images}
    test = {x.numpy().tobytes() for x in first.test.images}
    assert not train & test and train | test == rows
    assert first.describe() == {"name": "arrays:held", "train_images": 21, "test_images": 9,
                                "test": "held out of the training arrays", "holdout": 0.3, "seed": 5}


def test_from_arrays_registers_its_name_for_every_stage():
    images, labels = arrays(4, seed=0)
    source = from_arrays(images, labels, NAMES, name="stage")
    assert load_dataset("arrays:stage", "train") is source.train
    assert load_dataset("arrays:stage", "test") is source.test
    with pytest.raises(UnknownNameError, match="no in-memory dataset 'arrays:never'"):
        load_dataset("arrays:never")


@pytest.mark.parametrize(("change", "needle"), [
    ({"train_images": np.zeros((6, 8, 8, 3), np.float32)}, "train_images must be uint8 pixels (0..255), got float32"),
    ({"train_images": np.zeros((6, 64), np.uint8)}, "train_images must be [N, H, W, C] or [N, C, H, W]"),
    ({"train_images": np.zeros((6, 3, 8, 3), np.uint8)}, "cannot tell the channel axis"),
    ({"train_images": [[0]]}, "must be a numpy array or torch tensor, got list"),
    ({"train_labels": np.zeros(6, np.float32)}, "train_labels must be integers"),
    ({"train_labels": np.zeros(5, np.int64)}, "train_labels must have shape [6]"),
    ({"train_labels": np.array([0, 1, 2, 0, 1, 3])}, "train_labels[5] = 3 is outside 0..2"),
    ({"train_labels": np.array([0, 1, 0, 1, 0, 1])}, "classes ['bird'] have no training images"),
    ({"class_names": ["cat", "cat", "bird"]}, "class_names repeat a name"),
    ({"class_names": "cat"}, "class_names must be 2 or more non-empty strings"),
    ({"test_images": np.zeros((2, 8, 8, 3), np.uint8)}, "give test_images and test_labels together"),
    ({"test_images": np.zeros((2, 3, 4, 4), np.uint8), "test_labels": np.array([0, 1])},
     "test_images are [3, 4, 4] per image"),
    ({"test_images": np.zeros((2, 8, 8, 3), np.uint8), "test_labels": np.array([0, -1])},
     "test_labels[1] = -1 is outside 0..2"),
    ({"name": "my pets/2"}, "name 'my pets/2'"),
    ({"layout": "HWC"}, "layout 'HWC': use one of NHWC, NCHW"),
    ({"mean": (0.5,)}, "mean and std need 3 values"),
])
def test_bad_arrays_raise_an_error_that_names_the_argument(change: dict, needle: str):
    kwargs = {"train_images": np.zeros((6, 8, 8, 3), np.uint8), "train_labels": np.arange(6) % 3,
              "class_names": NAMES, **change}
    with pytest.raises(ArrayDataError) as info:
        from_arrays(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, CondenserError)


def test_holding_out_needs_two_images_of_every_class():
    with pytest.raises(HoldoutError, match="class 'bird' has 1 image"):
        from_arrays(np.zeros((5, 8, 8, 3), np.uint8), np.array([0, 1, 2, 0, 1]), NAMES)
    with pytest.raises(HoldoutError, match="holdout=1.0 must be a fraction"):
        from_arrays(np.zeros((6, 8, 8, 3), np.uint8), np.arange(6) % 3, NAMES, holdout=1.0)


def test_build_takes_data_or_a_dataset_name_not_both(tmp_path):
    images, labels = arrays(4, seed=0)
    data = from_arrays(images, labels, NAMES, name="both")
    with pytest.raises(CondenserError, match="both name the data"):
        build(BuildConfig(dataset="mnist", ipc=1, settings=get_profile("smoke")), tmp_path / "x.mdc", data=data)
    with pytest.raises(CondenserError, match="data= takes condenser.data.from_arrays"):
        build(BuildConfig(ipc=1, settings=get_profile("smoke")), tmp_path / "x.mdc", data="mnist")
    assert not (tmp_path / "x.mdc").exists()
