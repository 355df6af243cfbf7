"""`condenser show`: a labelled grid (class names as rows, IPC indices as columns) without importing torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import formats
from condenser.cli import app
from formats.testing import make_data

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture
def ipc10(tmp_path: Path) -> Path:
    """An IPC-10 Fashion-MNIST-shaped file (10 classes, 28x28), written with numpy only."""
    data = dataclasses.replace(make_data(num_classes=10, ipc_max=10, image_shape=(1, 28, 28), views=0),
                               class_names=NAMES)
    path = tmp_path / "f.mdc"
    formats.write_mdc(path, data)
    return path


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_show_imports_no_torch(ipc10: Path, tmp_path: Path):
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from condenser.cli import app
        result = CliRunner().invoke(app, ["show", {str(ipc10)!r}, "--out", {str(tmp_path / "g.png")!r}])
        assert result.exit_code == 0, result.output
        print("torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert _png(tmp_path / "g.png").ndim == 2  # grayscale images stay grayscale


def test_labels_sit_in_margins_around_the_unchanged_grid(ipc10: Path, tmp_path: Path):
    for name, extra in (("plain.png", ["--no-labels"]), ("labelled.png", [])):
        result = CliRunner().invoke(app, ["show", str(ipc10), "--out", str(tmp_path / name), "--pad", "1", *extra])
        assert result.exit_code == 0, result.output
    plain, labelled = _png(tmp_path / "plain.png"), _png(tmp_path / "labelled.png")
    assert plain.shape == (10 * 29 + 1, 10 * 29 + 1)
    top, left = labelled.shape[0] - plain.shape[0], labelled.shape[1] - plain.shape[1]
    assert top > 0 and left > 0
    np.testing.assert_array_equal(labelled[top:, left:], plain)  # the images are where they were, unchanged
    for c in range(10):  # a class name left of every row
        row = labelled[top + 1 + c * 29: top + 1 + c * 29 + 28, :left]
        assert (row < 128).any(), NAMES[c]
    for i in range(10):  # an IPC index above every column (28-pixel tiles leave room for "10")
        column = labelled[:top, left + 1 + i * 29: left + 1 + i * 29 + 28]
        assert (column < 128).any(), i + 1
    width_for = {}
    for names in (["a"] * 10, NAMES):  # the margin follows the longest class name
        data = dataclasses.replace(make_data(num_classes=10, ipc_max=1, image_shape=(1, 28, 28), views=0),
                                   class_names=names)
        formats.write_mdc(tmp_path / "n.mdc", data)
        CliRunner().invoke(app, ["show", str(tmp_path / "n.mdc"), "--out", str(tmp_path / "n.png")])
        width_for[names[0]] = _png(tmp_path / "n.png").shape[1]
    assert width_for["a"] < width_for["T-shirt/top"]


def test_show_draws_the_requested_prefix(ipc10: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["show", str(ipc10), "--ipc", "3", "--out", str(tmp_path / "g.png"),
                                      "--no-labels", "--pad", "0"])
    assert result.exit_code == 0, result.output
    assert _png(tmp_path / "g.png").shape == (10 * 28, 3 * 28)


def test_multi_formation_files_show_stored_or_decoded_images(tmp_path: Path):
    """f = 2: the stored grid has one 28x28 tile per stored image; --decoded one per training image, each the
    decoded patch (formats/formation.py), columns labelled stored-image.patch."""
    from condenser.grid import column_labels, to_uint8
    from formats.formation import decode_images, to_decoded_order

    data = make_data(num_classes=10, ipc_max=2, image_shape=(1, 28, 28), views=1, formation_factor=2)
    path = tmp_path / "f2.mdc"
    formats.write_mdc(path, data)
    for name, extra in (("stored.png", []), ("decoded.png", ["--decoded"])):
        result = CliRunner().invoke(app, ["show", str(path), "--out", str(tmp_path / name), "--no-labels",
                                          "--pad", "0", *extra])
        assert result.exit_code == 0, result.output
    stored, decoded = _png(tmp_path / "stored.png"), _png(tmp_path / "decoded.png")
    assert stored.shape == (10 * 28, 2 * 28) and decoded.shape == (10 * 28, 8 * 28)
    with formats.open_mdc(path) as r:
        prefix = r.read(2)
    want = to_uint8(to_decoded_order(decode_images(prefix.images, 2), 10), data.mean, data.std)
    np.testing.assert_array_equal(decoded[3 * 28:4 * 28, 5 * 28:6 * 28], want[5 * 10 + 3, 0])  # class 3, sample 5
    np.testing.assert_array_equal(stored[3 * 28:4 * 28, 28:56], to_uint8(prefix.images, data.mean, data.std)[13, 0])
    assert column_labels(8, 2, decoded=True)[:5] == ["1.1", "1.2", "1.3", "1.4", "2.1"]
    assert column_labels(2, 2) == ["1", "2"]
    result = CliRunner().invoke(app, ["show", str(path), "--out", str(tmp_path / "l.png"), "--decoded"])
    assert result.exit_code == 0, result.output
