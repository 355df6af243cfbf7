"""Users' own image folders: torchvision's layout and train/-only folders hold out a test split (fixed by
fraction and seed, disjoint, the same on every load), and every cache key follows the data's content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import formats
from condenser.bench.cells import Cell, cell_key
from condenser.build import BuildConfig, build, run_dir_for
from condenser.cli import app
from condenser.condense import CondenseConfig
from condenser.data import clear_cache, data_fingerprint, get_spec, load_dataset
from condenser.data.holdout import holdout_count
from condenser.data.imagefolder import ImageFolderNameError, parse_name
from condenser.paths import cache_root
from condenser.profiles import get_profile
from condenser.teacher import TeacherConfig
from formats.testing import make_data

CLASSES = ("bird", "cat", "dog")
TINY = {"condense.outer_loops": 4, "condense.inner_loops": 1, "condense.multisize.period": 2, "condense.batch_real": 8,
        "condense.width": 8}


@pytest.fixture(autouse=True)
def _fresh_decodes():
    """Folders change inside a test; decoded images are cached per process."""
    clear_cache()
    yield
    clear_cache()


def write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)


def image_folder(root: Path, per_class: int = 12, sub: str = "") -> Path:
    """CLASSES x per_class distinct 8x8 grayscale PNGs under root/<sub>/<class>/."""
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            write_png(root / sub / name / f"{i:02d}.png", seed=100 * c + i)
    return root


def rows(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


def test_the_torchvision_layout_holds_out_a_disjoint_stratified_test_split(tmp_path):
    name = f"imagefolder:{image_folder(tmp_path / 'pets')}"
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert get_spec(name).class_names == CLASSES and train.spec.image_shape == (1, 8, 8)
    assert train.class_counts.tolist() == [10, 10, 10] and test.class_counts.tolist() == [2, 2, 2]
    every = {np.asarray(Image.open(p)).tobytes() for p in (tmp_path / "pets").rglob("*.png")}
    assert not rows(train.images) & rows(test.images)
    assert rows(train.images) | rows(test.images) == every

    clear_cache()  # a new process (teacher, build, eval) decodes and splits again: the same split
    assert torch.equal(load_dataset(name, "test").images, test.images)
    half = load_dataset(f"{name}:holdout=0.5:seed=3", "test")
    assert half.class_counts.tolist() == [6, 6, 6]
    reseeded = load_dataset(f"{name}:seed=1", "test")
    assert rows(reseeded.images) != rows(test.images) and reseeded.class_counts.tolist() == [2, 2, 2]


def test_a_train_only_folder_holds_out_of_train(tmp_path):
    name = f"imagefolder:{image_folder(tmp_path / 'pets', per_class=5, sub='train')}"
    assert load_dataset(name, "test").class_counts.tolist() == [1, 1, 1]
    assert load_dataset(name, "train").class_counts.tolist() == [4, 4, 4]


def test_adding_an_image_moves_at_most_one_other_between_the_splits(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=10)
    before = rows(load_dataset(f"imagefolder:{root}", "test").images)
    write_png(root / "cat" / "new.png", seed=999)  # cat: 10 -> 11 images, still 2 held out
    clear_cache()
    after = rows(load_dataset(f"imagefolder:{root}", "test").images)
    assert len(before - after) <= 1 and len(after) == len(before)


def test_a_folder_with_its_own_test_split_refuses_holdout_options(tmp_path):
    image_folder(tmp_path / "pets", per_class=3, sub="train")
    image_folder(tmp_path / "pets", per_class=2, sub="val")
    name = f"imagefolder:{tmp_path / 'pets'}"
    assert load_dataset(name, "test").class_counts.tolist() == [2, 2, 2]
    with pytest.raises(ImageFolderNameError, match="is its test split, so holdout/seed do not apply"):
        load_dataset(f"{name}:holdout=0.3", "test")


def test_name_segments_parse_from_the_end_and_a_real_path_wins(tmp_path):
    parsed = parse_name(f"imagefolder:{tmp_path}/pets:32x16:seed=4:holdout=0.25")
    assert (parsed.path, parsed.size, parsed.seed, parsed.holdout) == (tmp_path / "pets", (32, 16), 4, 0.25)
    odd = tmp_path / "run:seed=1"
    odd.mkdir()
    assert parse_name(f"imagefolder:{odd}").path == odd and parse_name(f"imagefolder:{odd}").seed is None


def test_holdout_count_keeps_one_image_on_each_side():
    assert [holdout_count(n, 0.2) for n in (2, 3, 7, 8, 100)] == [1, 1, 1, 2, 20]
    assert holdout_count(10, 0.99) == 9 and holdout_count(10, 0.01) == 1


def test_fingerprints_follow_the_content_not_the_name(tmp_path):
    a = image_folder(tmp_path / "a", per_class=4)
    b = image_folder(tmp_path / "b", per_class=4)
    fa, fb = (data_fingerprint(f"imagefolder:{p}") for p in (a, b))
    assert fa == fb and len(fa) == 16
    write_png(b / "dog" / "00.png", seed=12345)
    clear_cache()
    assert data_fingerprint(f"imagefolder:{b}") != fa
    assert load_dataset("synthetic", "train").fingerprint != load_dataset("synthetic", "test").fingerprint


def _folder_build(root: Path, out: Path) -> dict:
    settings = get_profile("smoke").updated({**TINY, "relabel.views": 2, "pack.embed_trainer": False})
    cfg = BuildConfig(dataset=f"imagefolder:{root}", ipc=2, settings=settings, device="cpu")
    build(cfg, out, log=lambda _: None)
    with formats.open_mdc(out) as reader:
        return reader.header["provenance"]


def test_changing_one_image_retrains_the_teacher_and_the_build_succeeds(tmp_path):
    root = image_folder(tmp_path / "pets")
    first = _folder_build(root, tmp_path / "pets.mdc")
    teachers = cache_root() / "teachers"
    assert len(list(teachers.iterdir())) == 1
    assert first["data"]["holdout"] == 0.2 and first["data"]["seed"] == 0
    assert first["data"]["test"] == f"held out of {root.resolve()}" and first["data"]["train_images"] == 30

    write_png(root / "cat" / "03.png", seed=4242)  # the same name, other pixels
    clear_cache()
    second = _folder_build(root, tmp_path / "pets.mdc")
    assert len(list(teachers.iterdir())) == 2  # a new cache entry: the teacher was retrained
    assert second["teacher"]["config"]["data"] != first["teacher"]["config"]["data"]
    assert second["data"]["train_fingerprint"] != first["data"]["train_fingerprint"]
    assert len([d for d in (cache_root() / "runs").iterdir()]) == 2  # and condensed in a new run directory

    clear_cache()  # unchanged data again: the second teacher is reused, nothing new is trained
    _folder_build(root, tmp_path / "again.mdc")
    assert len(list(teachers.iterdir())) == 2


def test_the_cli_builds_and_evaluates_a_torchvision_layout_folder(tmp_path):
    name = f"imagefolder:{image_folder(tmp_path / 'pets')}"
    out = tmp_path / "pets.mdc"
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--profile", "smoke", "--dataset", name, "--ipc", "2", "--no-embed-trainer",
                                "--device", "cpu", "--out", str(out)])
    assert built.exit_code == 0, built.output
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", name, "--profile", "smoke", "--sizes", "1",
                                    "--labels", "hard", "--seeds", "1", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    table = json.loads((tmp_path / "pets.mdc.eval.json").read_text())
    assert table["dataset"] == name, table.keys()


def test_cache_keys_include_the_data(tmp_path):
    ccfg = CondenseConfig(method="dm", ipc=1)
    assert run_dir_for(ccfg, "synthetic", "aaaa0000") != run_dir_for(ccfg, "synthetic", "bbbb0000")
    assert run_dir_for(ccfg, "synthetic") == run_dir_for(ccfg, "synthetic", load_dataset("synthetic").fingerprint)
    prefix = formats.open_mdc(_small_file(tmp_path)).read(1)
    budget = get_profile("smoke").evaluate
    cell = Cell("mdc", 1, "hard", 0)
    assert cell_key(cell, prefix, budget, "test-a") != cell_key(cell, prefix, budget, "test-b")
    name = f"imagefolder:{image_folder(tmp_path / 'pets', per_class=4)}"
    before = TeacherConfig.from_profile(name, "convnet", "smoke").name
    write_png(tmp_path / "pets" / "bird" / "01.png", seed=777)
    clear_cache()
    after = TeacherConfig.from_profile(name, "convnet", "smoke").name
    assert before != after and before.rsplit("-", 1)[0] == after.rsplit("-", 1)[0]  # only the data part differs


def _small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.mdc"
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=2, image_shape=(1, 8, 8)))
    return path
