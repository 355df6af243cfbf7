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
