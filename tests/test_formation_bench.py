"""Evaluation and the bench with multi-formation (condense.factor = 2): every method trains on decoded images, and
the two random-real controls (random: same storage; random-formed: k*f*f real images in the same layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import formats
from condenser.bench import BenchConfig, run_bench
from condenser.bench.config import BenchConfigError, default_methods
from condenser.bench.stages import bench_command
from condenser.build import BuildConfig, build
from condenser.cli import app
from condenser.data import load_dataset
from condenser.evaluate import protocol
from condenser.evaluate.controls import (
    FormedControlError,
    control_methods,
    control_sets,
    ensure_control,
    formed_real_subset,
    plan_control,
)
from condenser.evaluate.sizes import StoredPrefixError, evaluate_prefix
from condenser.methods.formation import decode, upsample
from condenser.profiles import get_profile, resolve

TINY = {"condense.outer_loops": 2, "condense.inner_loops": 1, "condense.multisize.period": 1,
        "condense.batch_real": 8, "condense.width": 8}
TINY_EVAL = {"evaluate.epochs": 1, "evaluate.width": 8, "evaluate.max_test": 200, "evaluate.seeds": 1}
DATASET = "synthetic:3:1x8x8:8"  # 8 images per class: enough for 2 stored images of 2x2 real patches


class TrainingSpy:
    """Records how many training images every training of the protocol saw (the source's length)."""

    def __init__(self, monkeypatch) -> None:
        self.sizes: list[int] = []
        self._real = protocol.train_and_test
        monkeypatch.setattr(protocol, "train_and_test", self)

    def __call__(self, source, *args, **kwargs):
        self.sizes.append(len(source))
        return self._real(source, *args, **kwargs)


def _bench(tmp_path: Path, factor: int, **kw) -> BenchConfig:
    tree = resolve("smoke", bench=True).updated({**TINY, **TINY_EVAL, "relabel.views": 2, "condense.factor": factor})
    return BenchConfig(**{"ipc": 2, "settings": tree, "device": "cpu", "workers": 1, "out": str(tmp_path / "b"), **kw})


def test_a_factor_two_bench_trains_every_method_on_decoded_images(tmp_path, monkeypatch):
    spy = TrainingSpy(monkeypatch)
    out = run_bench(_bench(tmp_path, 2), log=lambda _: None, progress=False)
    data = json.loads(out.paths["json"].read_text())
    assert data["methods"] == ["A", "B", "C", "mdc", "random", "random-formed"] and data["complete"]
    assert data["formation_factor"] == 2
    decoded = {"A": 4, "B": 4, "C": 4, "mdc": 4, "random-formed": 4, "random": 1}  # training images per stored one
    for m, per_stored in decoded.items():
        for lab in ("hard", "soft"):
            for k in (1, 2):
                row = data["table"][m][lab][str(k)]
                assert (row["images"], row["stored_images"]) == (10 * k * per_stored, 10 * k), (m, lab, k)
    # what the trainings saw: per method, label mode and size, k*f*f*C images (random: k*C)
    want = sorted(10 * k * per for per in decoded.values() for _ in ("hard", "soft") for k in (1, 2))
    assert sorted(spy.sizes) == want and out.computed_cells == 24
    md = out.paths["markdown"].read_text()
    assert md.count("| Random real, formed |") == 2 and "Formation factor 2: size k stores k images" in md
    with formats.open_mdc(tmp_path / "b" / "sets" / "random-formed.mdc") as formed, \
            formats.open_mdc(tmp_path / "b" / "sets" / "random.mdc") as plain, \
            formats.open_mdc(tmp_path / "b" / "sets" / "mdc.mdc") as mdc:
        assert (formed.spec.formation_factor, plain.spec.formation_factor, mdc.spec.formation_factor) == (2, 1, 2)
        assert formed.spec.views.count == mdc.spec.views.count == 4 * plain.spec.views.count == 8
        assert formed.header["provenance"]["bench_method"] == "random-formed"


def test_random_formed_is_refused_at_factor_one_and_left_out_of_the_default_methods(tmp_path):
    assert _bench(tmp_path, 1).methods == ("A", "B", "C", "mdc", "random") == default_methods(1)
    assert _bench(tmp_path, 2).methods == ("A", "B", "C", "mdc", "random", "random-formed")
    assert "--methods" not in bench_command(_bench(tmp_path, 2))  # the default list at that factor
    with pytest.raises(BenchConfigError, match="random-formed needs condense.factor > 1"):
        _bench(tmp_path, 1, methods=("mdc", "random-formed"))
    result = CliRunner().invoke(app, ["bench", "--profile", "smoke", "--ipc", "2", "--methods", "random-formed",
                                      "--out", str(tmp_path / "cli"), "--device", "cpu"])
    assert result.exit_code == 2 and "random-formed needs condense.factor > 1" in result.output
    assert control_methods(1) == ("random",) and control_methods(2) == ("random", "random-formed")
    with pytest.raises(FormedControlError, match="random-formed needs formation factor > 1"):
        control_sets("random-formed", load_dataset(DATASET, "train"), 1, 1, 0)


def test_formed_control_stitches_distinct_real_images_of_each_class():
    train = load_dataset(DATASET, "train")
    stored, labels = formed_real_subset(train, 2, 2, seed=3)
    assert stored.shape == (6, 1, 8, 8) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    patches = decode(stored, 2)  # [6 stored images, 4 patches, 1, 8, 8]
    for c in range(3):
        real = train.normalized(train.class_indices(c))
        # a real image as one patch: area-downsampled to 4x4, decoded back by the format's resize
        formed = upsample(torch.nn.functional.interpolate(real, size=(4, 4), mode="area"), (8, 8))
        used = [[j for j in range(len(real)) if torch.allclose(patches[r, p], formed[j], atol=1e-6)]
                for r in (c, 3 + c) for p in range(4)]
        assert all(len(u) == 1 for u in used)  # every patch is one real image of its class
        assert len({u[0] for u in used}) == 8  # 2 stored images x 4 distinct real images


def _factor_two_file(tmp_path: Path) -> Path:
    settings = get_profile("smoke").updated({"pack.embed_trainer": False, "condense.factor": 2, "relabel.views": 2})
    cfg = BuildConfig(dataset=DATASET, ipc=2, settings=settings, device="cpu")
    return build(cfg, tmp_path / "f2.mdc", log=lambda _: None).path


def test_eval_of_a_factor_two_file_trains_on_decoded_images_against_both_controls(tmp_path, monkeypatch):
    path = _factor_two_file(tmp_path)
    spy = TrainingSpy(monkeypatch)
    result = CliRunner().invoke(app, ["eval", str(path), "--profile", "smoke", "--dataset", DATASET, "--device", "cpu",
                                      "--workers", "1", "--sizes", "1,2", "--labels", "hard", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(path.with_name(path.name + ".eval.json").read_text())
    for k in (1, 2):
        assert (data["sizes"][str(k)]["images"], data["sizes"][str(k)]["stored_images"]) == (12 * k, 3 * k)
        assert data["control"]["sizes"][str(k)]["images"] == 3 * k  # random: k real images per class
        assert data["control_formed"]["sizes"][str(k)]["images"] == 12 * k  # k*f*f real images per class
    assert sorted(spy.sizes) == [3, 6, 12, 12, 24, 24]  # file and random-formed: decoded; random: its own
    assert "random-formed hard %" in result.stdout and "random hard %" in result.stdout
    with formats.open_mdc(Path(data["control_formed"]["file"])) as formed, formats.open_mdc(path) as file:
        assert formed.spec.formation_factor == 2 and formed.spec.views == file.spec.views
        assert formed.header["provenance"]["method"] == "random-formed"
        assert formed.header["provenance"]["settings"]["condense"]["factor"] == 2
    with formats.open_mdc(Path(data["control"]["file"])) as plain:
        assert plain.spec.formation_factor == 1 and plain.spec.views.count == 2
        assert plain.header["provenance"]["settings"]["condense"]["factor"] == 1


def test_a_stored_read_of_a_factor_two_prefix_is_refused_and_factor_one_has_no_formed_control(tmp_path):
    path = _factor_two_file(tmp_path)
    with formats.open_mdc(path) as reader:
        stored = reader.read(1)
    budget = get_profile("smoke").evaluate
    with pytest.raises(StoredPrefixError, match="formation factor 2; read it with formation='decoded'"):
        evaluate_prefix(stored, load_dataset(DATASET, "test"), budget, "hard", [0], "cpu")
    settings = get_profile("smoke").updated({"pack.embed_trainer": False, "relabel.views": 2})
    plain = build(BuildConfig(dataset=DATASET, ipc=1, settings=settings, device="cpu"), tmp_path / "f1.mdc",
                  log=lambda _: None).path
    with formats.open_mdc(plain) as reader:
        plan = plan_control(plain, reader, DATASET, None, "cpu")
    assert plan.factor == 1
    with pytest.raises(FormedControlError, match="at factor 1 it is the random control itself"):
        ensure_control(plan, method="random-formed")
