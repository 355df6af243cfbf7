"""End-to-end build on the smoke profile: a valid nested .mdc, resumable, evaluable per size."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import formats
from condenser.build import BuildConfig, build
from condenser.cli import app
from condenser.profiles import get_profile
from condenser.resume import Interrupted

TINY = {"condense.outer_loops": 4, "condense.inner_loops": 1, "condense.multisize.period": 2, "condense.batch_real": 8,
        "condense.width": 8, "relabel.views": 2, "pack.embed_trainer": False}


def _config(settings: dict | None = None, **kw) -> BuildConfig:
    tree = get_profile("smoke").updated({**TINY, **(settings or {})})
    return BuildConfig(**{"ipc": 3, "settings": tree, "device": "cpu", **kw})


def test_build_writes_a_nested_file_whose_prefixes_load(tmp_path):
    out = build(_config(), tmp_path / "f.mdc", log=lambda _: None)
    with formats.open_mdc(out.path) as reader:
        assert reader.ipc_max == 3 and reader.blocks_present == 3 and reader.num_classes == 10
        full = reader.read(3)
        one = reader.read(1)
        assert full.images.shape == (30, 1, 28, 28) and full.views.targets.shape == (30, 2, 10)
        np.testing.assert_array_equal(one.images, full.images[:10])
        np.testing.assert_array_equal(one.labels, np.arange(10))
        prov = reader.header["provenance"]
        assert prov["method"] == "multisize" and prov["mls_history"]
        assert prov["teacher"]["arch"] == "convnet"
    # the stored pixels are the condensed images (float16 encoding)
    np.testing.assert_allclose(full.images, out.result.images.numpy(), atol=2e-2)


def test_interrupted_build_resumes_to_the_same_images(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache-straight"))
    straight = build(_config(seed=1), tmp_path / "a.mdc", log=lambda _: None)
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache-resumed"))
    with pytest.raises(Interrupted):
        build(_config({"condense.multisize.period": 1}, seed=1), tmp_path / "x.mdc", log=lambda _: None,
              stop_after=1)
    # A different config is a different run directory: the interrupted run above must not leak into this one.
    with pytest.raises(Interrupted, match="2 of 4 outer loops"):
        build(_config(seed=1), tmp_path / "b.mdc", log=lambda _: None, stop_after=2)
    assert not (tmp_path / "b.mdc").exists()  # nothing written for an unfinished build
    resumed = build(_config(seed=1), tmp_path / "b.mdc", log=lambda _: None)
    a, b = formats.open_mdc(straight.path).read(3), formats.open_mdc(resumed.path).read(3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.views.targets, b.views.targets)


def test_hard_label_build_and_eval_cli(tmp_path):
    out = build(_config(soft_labels="none"), tmp_path / "h.mdc", log=lambda _: None)
    with formats.open_mdc(out.path) as reader:
        assert reader.read(2).views is None
    result = CliRunner().invoke(app, ["eval", str(out.path), "--sizes", "1-2", "--profile", "smoke",
                                      "--epochs", "1", "--seeds", "2", "--device", "cpu", "--write"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "h.mdc.eval.json").read_text())
    assert set(data["sizes"]) == {"1", "2"}
    row = data["sizes"]["1"]
    assert len(row["hard"]["accuracies"]) == 2 and "soft" not in row
    assert row["hard"]["mean"] == pytest.approx(np.mean(row["hard"]["accuracies"]), abs=1e-3)
    assert data["protocol"]["epochs"] == 1
    with formats.open_mdc(out.path) as reader:  # the table also lives in the file's header
        assert set(reader.header["results"]) == {"1", "2"}
        assert reader.read(2).images.shape[0] == 20  # and the body is intact


def test_eval_max_test_scores_on_a_balanced_head_of_the_test_split(tmp_path):
    out = build(_config(soft_labels="none"), tmp_path / "h.mdc", log=lambda _: None)
    small = tmp_path / "small.json"
    result = CliRunner().invoke(app, ["eval", str(out.path), "--sizes", "1", "--profile", "smoke", "--epochs", "1",
                                      "--seeds", "2", "--max-test", "20", "--no-write", "--json", str(small),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(small.read_text())
    assert data["protocol"]["max_test"] == 20
    for acc in data["sizes"]["1"]["hard"]["accuracies"]:  # 20 test images: accuracy in steps of 5 %
        assert acc / 5 == pytest.approx(round(acc / 5), abs=1e-6)
    with formats.open_mdc(out.path) as reader:  # --no-write leaves the header alone
        assert not reader.header.get("results")
    bad = CliRunner().invoke(app, ["eval", str(out.path), "--max-test", "0", "--profile", "smoke"])
    assert bad.exit_code != 0


def test_eval_rejects_sizes_beyond_the_file(tmp_path):
    out = build(_config(soft_labels="none"), tmp_path / "h.mdc", log=lambda _: None)
    result = CliRunner().invoke(app, ["eval", str(out.path), "--sizes", "1-5", "--profile", "smoke"])
    assert result.exit_code != 0
    assert "exceed" in str(result.exception) or "exceed" in result.output


def test_trainer_bundle_cache_is_keyed_by_the_exporter_source(tmp_path, monkeypatch):
    import condenser.build as build_module
    import condenser.export as export_module
    from condenser.data import load_dataset

    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    exports = []

    class FakeBundle:
        def __init__(self, n: int) -> None:
            self.n = n

        def to_bytes(self) -> bytes:
            return f"bundle-{self.n}".encode()

    def fake_export(settings):
        exports.append(settings)
        return FakeBundle(len(exports))

    monkeypatch.setattr(export_module, "export_trainer", fake_export)
    monkeypatch.setattr(build_module, "exporter_digest", lambda: "the-installed-exporter")
    spec = load_dataset("synthetic:4:1x8x8", "train").spec
    assert build_module.trainer_bundle_bytes(spec, 8, width=4) == b"bundle-1"
    assert build_module.trainer_bundle_bytes(spec, 8, width=4) == b"bundle-1"  # cached
    assert len(exports) == 1
    monkeypatch.setattr(build_module, "exporter_digest", lambda: "a-changed-exporter")
    assert build_module.trainer_bundle_bytes(spec, 8, width=4) == b"bundle-2"  # not the stale graph
    assert len(exports) == 2


def test_exporter_digest_is_stable_and_covers_the_traced_model_builders(tmp_path, monkeypatch):
    import shutil

    import condenser.models
    from condenser.build import exporter_digest

    digest = exporter_digest()
    assert digest == exporter_digest() and len(digest) == 16
    models = tmp_path / "models"  # a copy of the model package's sources stands in for an edited checkout
    shutil.copytree(Path(condenser.models.__file__).parent, models)
    monkeypatch.setattr(condenser.models, "__file__", str(models / "__init__.py"))
    assert exporter_digest() == digest
    (models / "convnet.py").write_text((models / "convnet.py").read_text() + "\n# an edit\n")
    assert exporter_digest() != digest


@pytest.mark.parametrize("module", ["runtime.models", "runtime.torch_losses", "runtime.bundle"])
def test_exporter_digest_covers_the_runtime_modules_the_graphs_come_from(tmp_path, monkeypatch, module):
    import importlib

    from condenser.build import exporter_digest

    mod = importlib.import_module(module)
    digest = exporter_digest()
    edited = tmp_path / Path(mod.__file__).name
    edited.write_text(Path(mod.__file__).read_text() + "\n# an edit\n")
    monkeypatch.setattr(mod, "__file__", str(edited))
    assert exporter_digest() != digest


@pytest.mark.parametrize(("settings", "width"), [({}, 16), ({"evaluate.width": 24}, 24)])
def test_the_embedded_trainer_has_the_resolved_evaluation_width(tmp_path, monkeypatch, settings, width):
    import condenser.build as build_module

    exported: list[dict] = []

    class Exported(Exception):
        pass

    def fake_bundle(spec, batch_size, width=128):
        exported.append({"batch_size": batch_size, "width": width})
        raise Exported

    monkeypatch.setattr(build_module, "trainer_bundle_bytes", fake_bundle)
    with pytest.raises(Exported):
        build(_config({"pack.embed_trainer": True, **settings}), tmp_path / "f.mdc", log=lambda _: None)
    assert exported == [{"batch_size": 64, "width": width}]
    assert get_profile("smoke").evaluate.width == 16


def test_the_file_records_the_resolved_tree_and_the_job(tmp_path):
    cfg = _config({"relabel.temperature": 2.0}, soft_labels="none", seed=3)
    out = build(cfg, tmp_path / "f.mdc", log=lambda _: None)
    with formats.open_mdc(out.path) as reader:
        prov = reader.header["provenance"]
    assert prov["settings"] == json.loads(json.dumps(cfg.settings.as_dict()))
    assert prov["settings"]["name"] == "smoke" and prov["settings"]["relabel"]["temperature"] == 2.0
    assert prov["settings"]["condense"]["outer_loops"] == 4 and "ipc" not in prov["settings"]["condense"]
    assert prov["build"]["seed"] == 3 and prov["build"]["ipc"] == 3 and prov["build"]["profile"] == "smoke"
    assert prov["condense"]["ipc"] == 3 and prov["condense"]["multisize"]["period"] == 2
