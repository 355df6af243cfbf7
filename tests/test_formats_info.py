"""`condenser info FILE`: readable summary, --json byte ranges, errors, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import formats
from condenser.cli import app
from formats.testing import make_data


@pytest.fixture()
def mdc(tmp_path: Path) -> Path:
    data = make_data(num_classes=4, ipc_max=3, views=2, image_shape=(3, 6, 6), trainer_bundle=b"b" * 70)
    data.provenance = {"method": "multisize", "seeds": [0, 1]}
    data.results = {1: {"images": 4, "hard": {"mean": 41.5, "std": 1.25}}, 3: {"images": 12}}
    path = tmp_path / "toy.mdc"
    formats.write_mdc(path, data)
    return path


def test_summary_names_the_essentials(mdc: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(mdc)], terminal_width=160)
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("synthetic", "class0", "ipc_max", "3 of 3 (complete)", "3x6x6", "uint8", "topk-u8", "top-2",
                 "views per stored image", "label bytes per stored image",
                 "bytes per block", "trainer_bundle", "provenance.method", "multisize",
                 "Per-size results", "41.50 ± 1.25", "mix_partner"):
        assert text in out, text


def test_json_has_the_header_and_every_block_range(mdc: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(mdc), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    with formats.open_mdc(mdc) as r:
        assert report["header"]["ipc_max"] == 3 and report["blocks_present"] == 3
        assert [(b["offset"], b["end"]) for b in report["blocks"]] == [r.block_range(i) for i in range(3)]
        assert report["blocks"][-1]["end"] == r.file_size == report["file_size"]
        assert report["sections"][0]["name"] == "trainer_bundle"
        assert report["header"]["results"]["1"]["hard"]["mean"] == 41.5


def test_truncated_and_broken_files(mdc: Path, tmp_path: Path) -> None:
    with formats.open_mdc(mdc) as r:
        cut = r.prefix_nbytes(2)
    short = tmp_path / "short.mdc"
    short.write_bytes(mdc.read_bytes()[:cut])
    result = CliRunner().invoke(app, ["info", str(short)], terminal_width=160)
    assert result.exit_code == 0 and "2 of 3 (truncated: a valid IPC-2 file)" in result.output
    report = json.loads(CliRunner().invoke(app, ["info", str(short), "--json"]).output)
    assert [b["present"] for b in report["blocks"]] == [True, True, False]
    bad = tmp_path / "bad.mdc"
    bad.write_bytes(b"not an mdc file at all, just text")
    result = CliRunner().invoke(app, ["info", str(bad)])
    assert result.exit_code == 1 and "bad magic" in result.output


def test_info_does_not_import_torch(mdc: Path) -> None:
    code = ("import sys; from condenser.cli import app; app(['info', sys.argv[1]], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'condenser info imported torch'")
    subprocess.run([sys.executable, "-c", code, str(mdc)], check=True, capture_output=True)


def test_multi_formation_files_report_the_factor_and_the_decoded_counts(tmp_path: Path) -> None:
    data = make_data(num_classes=4, ipc_max=3, views=2, image_shape=(1, 6, 6), formation_factor=3)
    path = tmp_path / "f3.mdc"
    formats.write_mdc(path, data)
    result = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "300"})  # rich: no wrapped rows
    assert result.exit_code == 0, result.output
    for text in ("formation factor 3", "each stored image = 3x3 patches of 2x2, decoded to 9 training images of "
                 "1x6x6 (108 in all)", "18 (2 per decoded training image)", "(4 stored, 36 training images)"):
        assert text in result.output, text
    report = json.loads(CliRunner().invoke(app, ["info", str(path), "--json"]).output)
    assert report["formation_factor"] == 3 and report["training_images_per_block"] == 36
    with formats.open_mdc(path) as r:
        label_arrays = [a for n, a in r.spec.arrays.items() if n not in ("labels", "images")]
    assert report["label_bytes_per_stored_image"] == sum(a.length for a in label_arrays) / 4
    assert f"{report['label_bytes_per_stored_image']:.1f}" in result.output
