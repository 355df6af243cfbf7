"""`condenser eval`'s quick protocol: the file's per-size table next to the random-real control that shares
its teacher, views and codec, the budget stated; `--protocol pinned` is the profile's full evaluation."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import formats
from condenser.build import BuildConfig, build
from condenser.cli import app
from condenser.cli.eval import default_modes, default_sizes
from condenser.data import load_dataset
from condenser.evaluate.controls import random_real_subset
from condenser.paths import teacher_dir
from condenser.profiles import get_profile
from condenser.relabel import RelabelConfig, relabel
from condenser.teacher import load_teacher
from formats.testing import make_data

DATASET = "synthetic:3:1x8x8:8"
SMOKE = get_profile("smoke")


def _build(tmp_path: Path, **kw) -> Path:
    cfg = BuildConfig(dataset=DATASET, ipc=2, settings=SMOKE.updated({"pack.embed_trainer": False}), device="cpu",
                      **kw)
    return build(cfg, tmp_path / "s.mdc", log=lambda _: None).path


def _eval(path: Path, *extra: str) -> tuple[dict, str]:
    """Run `condenser eval` in this process (one worker); (the sidecar JSON, stdout)."""
    result = CliRunner().invoke(app, ["eval", str(path), "--profile", "smoke", "--dataset", DATASET, "--device", "cpu",
                                      "--workers", "1", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(path.with_name(path.name + ".eval.json").read_text()), result.stdout


def test_quick_eval_puts_the_control_next_to_every_size_and_states_its_budget(tmp_path):
    data, out = _eval(_build(tmp_path))
    assert list(data["sizes"]) == ["1", "2"] and list(data["control"]["sizes"]) == ["1", "2"]
    assert data["control_formed"] is None  # formation factor 1: the random control only
    for rows in (data["sizes"], data["control"]["sizes"]):
        for k, row in rows.items():
            assert set(row) == {"images", "stored_images", "soft", "train_samples"}  # quick: soft labels only
            assert row["images"] == 3 * int(k) and len(row["soft"]["accuracies"]) == SMOKE.quick_budget.seeds
    assert data["protocol"] == json.loads(json.dumps(asdict(SMOKE.quick_budget)))
    assert data["protocol_name"] == "quick" and data["protocol"] != json.loads(json.dumps(asdict(SMOKE.evaluate)))
    assert "random soft %" in out and "file soft %" in out
    assert data["budget"] == ("quick protocol (smoke profile): 2 epochs, all 12 test images, 2 seeds, soft labels, "
                              "last-epoch accuracy")
    assert " ".join(out.split()).count(" ".join(data["budget"].split())) == 1  # printed under the table
    assert data["settings"] == json.loads(json.dumps(SMOKE.as_dict()))  # the resolved tree


def test_eval_flags_and_set_write_the_section_the_protocol_trains_with(tmp_path):
    path = _build(tmp_path)
    quick, _ = _eval(path, "--sizes", "1", "--no-control", "--epochs", "1", "--set", "quick.evaluate.seeds=1")
    assert quick["protocol"]["epochs"] == 1 and quick["protocol"]["seeds"] == 1
    assert quick["settings"]["quick"]["evaluate"]["epochs"] == 1 and quick["settings"]["evaluate"]["epochs"] == 4
    pinned, _ = _eval(path, "--sizes", "1", "--no-control", "--protocol", "pinned", "--labels", "hard", "--set",
                      "evaluate.epochs=1", "--seeds", "1")
    assert pinned["protocol"]["epochs"] == 1 and pinned["settings"]["evaluate"]["seeds"] == 1


def test_the_control_is_real_images_labelled_by_the_files_teacher_with_its_views(tmp_path):
    path = _build(tmp_path)
    data, _ = _eval(path)
    control = Path(data["control"]["file"])
    with formats.open_mdc(path) as a, formats.open_mdc(control) as b:
        file_prov, ctrl_prov = a.header["provenance"], b.header["provenance"]
        assert ctrl_prov["method"] == "random" and ctrl_prov["control_of"] == "s.mdc"
        assert ctrl_prov["teacher"] == file_prov["teacher"] and ctrl_prov["relabel"] == file_prov["relabel"]
        assert b.spec.views == a.spec.views and b.spec.encoding == a.spec.encoding
        prefix = b.read(2)
    train = load_dataset(DATASET, "train")
    images, labels = random_real_subset(train, 2, seed=file_prov["build"]["seed"])
    np.testing.assert_allclose(prefix.images, images.numpy(), atol=1e-2)  # float16 pixels
    np.testing.assert_array_equal(prefix.labels, labels.numpy())
    teacher = load_teacher(_cached_teacher())  # the one the build trained and cached
    views = relabel(images, [teacher.model], 3, RelabelConfig(**_tuples(file_prov["relabel"])))
    np.testing.assert_array_equal(prefix.views.crop, views.crop.astype(np.float16))
    np.testing.assert_array_equal(prefix.views.flip, views.flip)
    np.testing.assert_allclose(prefix.views.targets, views.targets, atol=0.02)  # top-k u8 codec


def _cached_teacher() -> Path:
    (path,) = teacher_dir().glob("*/teacher.safetensors")
    return path


def _tuples(record: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def test_a_rerun_reuses_the_cached_control_and_a_foreign_teacher_is_refused(tmp_path):
    path = _build(tmp_path)
    data, _ = _eval(path, "--sizes", "1", "--seeds", "1")
    control = Path(data["control"]["file"])
    stamp = control.stat().st_mtime_ns
    _, out = _eval(path, "--sizes", "1", "--seeds", "1", "--write")  # --write leaves the control's key alone
    assert f"control: {control} (cached)" in out and control.stat().st_mtime_ns == stamp
    control.unlink()
    meta = _cached_teacher().with_name("teacher.json")
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "test_accuracy": record["test_accuracy"] + 1.0}))
    result = CliRunner().invoke(app, ["eval", str(path), "--profile", "smoke", "--dataset", DATASET, "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not the same weights" in result.stderr and "--no-control" in result.stderr
    assert not control.exists()


def test_pinned_selects_the_profiles_evaluation_every_size_hard_and_soft(tmp_path):
    data, out = _eval(_build(tmp_path), "--protocol", "pinned", "--no-control")
    assert data["protocol"] == json.loads(json.dumps(asdict(SMOKE.evaluate))) and data["protocol_name"] == "pinned"
    assert list(data["sizes"]) == ["1", "2"] and all({"hard", "soft"} <= set(r) for r in data["sizes"].values())
    assert data["control"] is None and data["control_note"] == "--no-control"
    assert "pinned protocol (smoke profile): 4 epochs" in " ".join(out.split())


def test_a_hard_label_file_gets_a_hard_label_control_without_a_teacher(tmp_path):
    data, _ = _eval(_build(tmp_path, soft_labels="none"))
    assert set(data["sizes"]["1"]) == {"images", "stored_images", "hard", "train_samples"}
    assert set(data["control"]["sizes"]["2"]) == {"images", "stored_images", "hard", "train_samples"}
    with formats.open_mdc(Path(data["control"]["file"])) as reader:
        assert reader.spec.views is None and reader.header["provenance"]["teacher"] is None


def test_a_file_without_a_build_record_is_evaluated_alone_unless_control_is_asked(tmp_path):
    path = tmp_path / "t.mdc"
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=2, image_shape=(1, 8, 8)))
    data, out = _eval(path, "--seeds", "1")
    assert data["control"] is None and "records no build settings" in data["control_note"]
    assert "no random-real control:" in out
    result = CliRunner().invoke(app, ["eval", str(path), "--profile", "smoke", "--dataset", DATASET, "--control"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --control: ") and "Traceback" not in result.output


@pytest.mark.parametrize(("present", "sizes"), [(10, "1,2,5,10"), (3, "1,2,3"), (20, "1,2,5,10,20"), (1, "1")])
def test_quick_sizes_are_the_profiles_that_the_file_holds_plus_its_largest(present: int, sizes: str):
    assert default_sizes(get_profile("cpu"), "quick", present) == sizes
    assert default_sizes(get_profile("cpu"), "pinned", present) == "all"


def test_quick_labels_fall_back_to_hard_for_a_file_without_views():
    cpu = get_profile("cpu")
    assert default_modes(cpu, "quick", True) == ["soft"] and default_modes(cpu, "quick", False) == ["hard"]
    assert default_modes(cpu, "pinned", True) == ["hard", "soft"] and default_modes(cpu, "pinned", False) == ["hard"]
