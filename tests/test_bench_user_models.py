"""benchmarks/bench_user_models.py's bookkeeping: bundle part sizes, loss parity rows, failed runs as rows.

The timed runs themselves (exports, compiles) take minutes and are docs/RESULTS.md's job, not a test's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import msgpack
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_user_models.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_user_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_part_bytes_splits_a_bundle_blob(bench):
    doc = {"format": "multisize-trainer", "version": 1, "meta": {"arch": "a"}, "train_step": b"t" * 300,
           "inference": b"i" * 70, "params": [b"\0" * 16, {"fill": 1.0}]}
    blob = msgpack.packb(doc, use_bin_type=True)
    parts = bench.part_bytes(blob)
    # msgpack: fixarray(1) + bin8 (2 + 16) + fixmap(1) + "fill" (5) + float64 (9); {"arch": "a"}: 1 + 5 + 2
    assert parts == {"train_step_bytes": 300, "inference_bytes": 70, "params_bytes": 34, "buffers_bytes": 0,
                     "meta_bytes": 8, "bundle_bytes": len(blob)}
    rest = len(blob) - sum(v for k, v in parts.items() if k != "bundle_bytes")
    assert 0 < rest < 100  # only the outer map's keys, format and version


def test_parity_compares_the_steps_both_ran(bench):
    row = bench.parity("m", {"backend": "torch", "losses": [1.0, 2.0, 4.0]},
                       {"backend": "compile", "losses": [1.5, 2.0, 4.0, 9.0]})
    assert row == {"bench": "parity", "model": "m", "backends": "compile vs torch", "steps": 3,
                   "max_abs_loss_diff": 0.5, "max_rel_loss_diff": 0.5}


def test_a_failed_step_process_is_a_row_with_its_last_error_line(bench, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    row = bench.run_step("mobilenet", "onnx", tmp_path, 1, env)
    assert set(row) == {"bench", "model", "backend", "error"}
    assert row["backend"] == "onnx"
    assert "BundleError" in row["error"] and str(tmp_path / "mobilenet.trainer") in row["error"]
