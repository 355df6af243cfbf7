"""Expected failures end as one line `error: ...` on stderr and exit code 2, with no traceback, before any
long work starts; `--debug` shows the traceback. The commands run in-process (typer's CliRunner)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import formats
from condenser.cli import app
from condenser.data import roots
from condenser.paths import cache_root
from formats.testing import make_data

DATASET = "synthetic:3:1x8x8"
BUILD = ["build", "--profile", "smoke", "--dataset", DATASET, "--ipc", "2", "--no-embed-trainer", "--device", "cpu"]


def fails(args: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2 and one `error:` line on stderr that contains every needle."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def help_text(command: str) -> str:
    """`condenser COMMAND --help` with rich's box and line wrapping taken out."""
    text = CliRunner().invoke(app, [command, "--help"]).stdout
    return " ".join(text.replace("│", " ").split())


def nothing_trained() -> bool:
    return not (cache_root() / "teachers").exists() and not (cache_root() / "runs").exists()


@pytest.fixture
def ipc10(tmp_path: Path) -> Path:
    """An IPC-10 file with soft-label views (3 classes, 8x8), written without torch."""
    path = tmp_path / "ten.mdc"
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=10, image_shape=(1, 8, 8)))
    return path


@pytest.mark.parametrize(("extra", "needles"), [
    (["--profile", "smok"], ["unknown profile 'smok'", "smoke"]),
    (["--ipc", "0"], ["--ipc", "greater than or equal to 1"]),
    (["--codec", "topk-u9"], ["unknown soft-label codec 'topk-u9'", "topk-u8"]),
    (["--pixels", "int8"], ["unknown pixel encoding 'int8'", "uint8"]),
    (["--method", "gmm"], ["method (--method): unknown method 'gmm'", "dm, gm, gvbsm, sre2l, teddy"]),
    (["--freeze", "always"], ["(--freeze)", "unknown freeze rule 'always'", "paper"]),
    (["--soft-labels", "yes"], ["use teacher"]),
    (["--views", "0"], ["--views"]),
    (["--set", "relabel.views=0"], ["relabel.views must be >= 1, got 0"]),
    (["--set", "iterations"], ["--set expects section.field=VALUE"]),
    (["--set", "condense.loops=2"], ["unknown setting 'condense.loops' (--set)", "inner_loops, lr_img"]),
    (["--set", "condense.outer_loops=0"], ["condense (--set): outer_loops must be >= 1"]),
    (["--set", "condense.outer_loops=2.5"], ["condense.outer_loops = 2.5 (--set): expected int"]),
    (["--set", "evaluat.epochs=2"], ["unknown section 'evaluat'", "evaluate"]),
    (["--set", "condense.ipc=3"], ["condense.ipc (--set) is not a setting: --ipc gives it"]),
    (["--views", "3", "--set", "relabel.views=4"], ["relabel.views is given twice, by --views and by --set"]),
    (["--method", "sre2l", "--set", "method.sre2l.nosuch=1"], ["'method.sre2l.nosuch'", "recover"]),
    (["--set", "method.sre2l.recover.seed=1"], ["method.sre2l.recover.seed (--set) is not a setting: --seed"]),
    (["--config", "{tmp}/none.toml"], ["--config", "does not exist"]),
    (["--config", "{tmp}/bad.toml"], ["--config", "bad.toml: not valid TOML"]),
    (["--config", "{tmp}/typo.yaml"], ["unknown setting 'pack.codek' (--config", "typo.yaml)", "codec"]),
    (["--device", "gpu"], ["unknown device 'gpu'", "cuda"]),
    (["--dataset", "fmnist"], ["unknown dataset 'fmnist'", "fashion-mnist"]),
])
def test_bad_build_options_fail_before_the_teacher_trains(extra: list[str], needles: list[str], tmp_path: Path):
    (tmp_path / "bad.toml").write_text("[condense\nouter_loops = 2\n")
    (tmp_path / "typo.yaml").write_text("pack:\n  codek: dense-f16\n")
    fails([*BUILD, "--out", str(tmp_path / "x.mdc"), *[e.format(tmp=tmp_path) for e in extra]], *needles)
    assert nothing_trained()


def test_an_unwritable_out_fails_before_the_teacher_trains(tmp_path: Path):
    (tmp_path / "file.txt").write_text("not a directory")
    fails([*BUILD, "--out", str(tmp_path / "file.txt" / "x.mdc")], "--out", "does not exist")
    fails([*BUILD, "--out", str(tmp_path)], "is a directory")
    fails([*BUILD, "--teacher", str(tmp_path / "none.safetensors")], "--teacher", "does not exist")
    assert nothing_trained()


def test_missing_data_names_the_download_flag_that_exists(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(roots, "SYSTEM_ROOTS", [])
    monkeypatch.delenv(roots.ENV_VAR, raising=False)
    line = fails(["build", "--profile", "smoke", "--dataset", "cifar10", "--data-root", str(tmp_path),
                  "--out", str(tmp_path / "c.mdc")],
                 "dataset 'cifar10' (train split) not found", "rerun with --download", "--debug prints the details")
    assert str(tmp_path) in line
    assert nothing_trained()
    for command in ("build", "teacher", "eval", "bench", "baseline"):
        assert "--download" in help_text(command)


def test_an_image_folder_too_small_to_hold_out_a_test_split_fails_before_training(tmp_path: Path):
    # train/ without test/ or val/ holds the test split out of train/ (tests/test_own_data.py builds one);
    # with one image of a class there is nothing to hold out
    for name in ("cat", "dog"):
        (tmp_path / "pets" / "train" / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 40, np.uint8)).save(tmp_path / "pets" / "train" / name / "0.png")
    fails(["build", "--profile", "smoke", "--dataset", f"imagefolder:{tmp_path / 'pets'}", "--out",
           str(tmp_path / "p.mdc")], str(tmp_path / "pets" / "train"), "class 'cat' has 1 image(s)",
          "at least 2 per class")
    assert nothing_trained()


def test_an_image_folder_with_test_but_no_train_fails_before_training(tmp_path: Path):
    (tmp_path / "pets" / "test" / "cat").mkdir(parents=True)
    fails(["build", "--profile", "smoke", "--dataset", f"imagefolder:{tmp_path / 'pets'}", "--out",
           str(tmp_path / "p.mdc")], str(tmp_path / "pets" / "train"), "does not")
    assert nothing_trained()


@pytest.mark.parametrize(("suffix", "needle"), [
    (":holdout=1.5", "holdout=1.5 must be a fraction between 0 and 1"),
    (":holdout=half", "holdout='half' is not a float"),
    (":depth=3", "unknown option 'depth'"),
    (":seed=1:seed=2", "seed given twice"),
])
def test_bad_image_folder_options_fail_before_training(tmp_path: Path, suffix: str, needle: str):
    fails(["build", "--profile", "smoke", "--dataset", f"imagefolder:{tmp_path / 'pets'}{suffix}", "--out",
           str(tmp_path / "p.mdc")], needle)
    assert nothing_trained()


def test_a_stale_teacher_checkpoint_says_what_to_delete():
    from condenser.checkpoint import atomic_torch_save
    from condenser.teacher import TeacherConfig, teacher_paths

    _, _, checkpoint = teacher_paths(TeacherConfig.from_profile(DATASET, None, "smoke"))
    atomic_torch_save({"config_hash": "from another run"}, checkpoint)
    fails(["teacher", "--profile", "smoke", "--dataset", DATASET, "--device", "cpu"],
          str(checkpoint), "different teacher configuration", "delete it")


def test_teacher_points_to_a_models_command_that_exists():
    assert "`condenser models` lists them" in help_text("teacher")
    listed = CliRunner().invoke(app, ["models"])
    assert listed.exit_code == 0 and listed.stdout.split()[0] == "convnet"
    fails(["teacher", "--arch", "vgg", "--profile", "smoke"], "unknown model 'vgg'", "condenser models")


@pytest.mark.parametrize(("extra", "needles"), [
    (["--sizes", "1-20"], ["--sizes 1-20", "exceed", "holds sizes 1-10", "--sizes 1-10"]),
    (["--sizes", "ten"], ["cannot parse size 'ten'"]),
    (["--labels", "soft,both"], ["use hard, soft or hard,soft"]),
    (["--seeds", "0"], ["--seeds"]),
    (["--loss", "mse"], ["unknown student loss 'mse' (quick.evaluate.loss)", "soft_ce"]),
    (["--loss", "kl", "--temperature", "0"], ["loss_temperature must be > 0, got 0"]),
    (["--protocol", "pinned", "--set", "evaluate.loss=mse"], ["unknown student loss 'mse' (evaluate.loss)"]),
    (["--set", "quick.sizes=[0]"], ["quick (--set): sizes must be a non-empty list of sizes >= 1"]),
    (["--profile", "smok"], ["unknown profile 'smok'"]),
    (["--device", "gpu"], ["unknown device 'gpu'"]),
])
def test_bad_eval_options_fail_before_training(ipc10: Path, extra: list[str], needles: list[str]):
    fails(["eval", str(ipc10), "--profile", "smoke", "--dataset", DATASET, *extra], *needles)
    assert not ipc10.with_name("ten.mdc.eval.json").exists()


def test_eval_rejects_bad_files_paths_and_data(ipc10: Path, tmp_path: Path, monkeypatch):
    junk = tmp_path / "junk.mdc"
    junk.write_bytes(b"not an mdc file at all")
    fails(["eval", str(junk), "--profile", "smoke"], "not an .mdc file")
    fails(["eval", str(ipc10), "--profile", "smoke", "--dataset", DATASET, "--json", str(tmp_path / "no" / "x.json")],
          "--json", "does not exist")
    hard = tmp_path / "hard.mdc"
    formats.write_mdc(hard, make_data(num_classes=3, ipc_max=2, image_shape=(1, 8, 8), views=0))
    fails(["eval", str(hard), "--profile", "smoke", "--dataset", DATASET, "--labels", "soft"], "no soft-label views",
          "--labels hard")
    monkeypatch.setattr(roots, "SYSTEM_ROOTS", [])
    fails(["eval", str(ipc10), "--profile", "smoke", "--dataset", "cifar10", "--data-root", str(tmp_path)],
          "dataset 'cifar10' (test split) not found", "--download")


def test_debug_shows_the_traceback(tmp_path: Path):
    junk = tmp_path / "junk.mdc"
    junk.write_bytes(b"not an mdc file at all")
    for args in (["--debug", "eval", str(junk)], ["eval", str(junk), "--debug"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "Traceback" in result.stderr and "BadMagicError" in result.stderr


@pytest.mark.parametrize(("extra", "needles"), [
    (["--ipc", "0"], ["--ipc"]),
    (["--ipc", "11"], ["outside 1..10"]),
    (["--scale", "0"], ["--scale"]),
    (["--pad", "-1"], ["--pad"]),
    (["--out", "{tmp}/no/g.png"], ["--out", "does not exist"]),
])
def test_bad_show_options(ipc10: Path, tmp_path: Path, extra: list[str], needles: list[str]):
    fails(["show", str(ipc10), *[e.format(tmp=tmp_path) for e in extra]], *needles)


def test_show_rejects_a_truncated_file(ipc10: Path, tmp_path: Path):
    cut = tmp_path / "cut.mdc"
    cut.write_bytes(ipc10.read_bytes()[:40])
    fails(["show", str(cut), "--out", str(tmp_path / "g.png")], "cut.mdc")


@pytest.mark.parametrize(("extra", "needles"), [
    (["--set", "eval.nosuch=1"], ["unknown section 'eval'", "evaluate"]),
    (["--set", "evaluate.nosuch=1"], ["'evaluate.nosuch'", "epochs"]),
    (["--set", "model=1"], ["unknown section 'model'"]),
    (["--seeds", "2", "--set", "evaluate.seeds=3"], ["evaluate.seeds is given twice, by --seeds"]),
    (["--methods", "A,Z"], ["unknown bench methods ['Z']"]),
    (["--epochs", "0"], ["--epochs"]),
])
def test_bad_bench_options(tmp_path: Path, extra: list[str], needles: list[str]):
    fails(["bench", "--profile", "smoke", "--dataset", DATASET, "--ipc", "2", "--out", str(tmp_path / "b"), *extra],
          *needles)
    assert nothing_trained()


def _runtime(args: list[str], capsys) -> tuple[int, str, str]:
    from runtime.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_runtime_train_checks_test_data_before_training(ipc10: Path, capsys):
    code, out, err = _runtime(["train", str(ipc10), "--backend", "torch", "--epochs", "1", "--test-data", "nosuch"],
                              capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("error: --test-data: test data 'nosuch'") and len(err.splitlines()) == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["train", "{file}", "--budget", "3x"], "budget '3x'"),
    (["train", "{file}", "--backend", "torch", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "{missing}"], "missing.mdc"),
    (["info", "{missing}"], "missing.mdc"),
])
def test_runtime_errors_are_one_line(ipc10: Path, capsys, args: list[str], needle: str):
    filled = [a.format(file=ipc10, missing=ipc10.with_name("missing.mdc")) for a in args]
    code, _, err = _runtime(filled, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err
    code, _, err = _runtime([*filled, "--debug"], capsys)
    assert code == 2 and "Traceback" in err


def test_every_runtime_train_option_has_help_and_its_default():
    from runtime.cli import _parser

    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = subparsers.choices["train"]
    options = [a for a in train._actions if a.option_strings and a.dest not in ("help", "debug", "quiet")]
    assert len(options) == 13
    for action in options:
        assert action.help and "default" in action.help, action.dest
    text = train.format_help()
    assert "(default: 300, the pinned protocol)" in text and "(default: 0.01)" in text



def test_download_reaches_the_dataset_source(tmp_path: Path, monkeypatch):
    from condenser.data import get_source

    monkeypatch.setattr(roots, "SYSTEM_ROOTS", [])
    calls = []

    def offline(base, split):
        calls.append((base, split))
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(get_source("cifar10")), "download", lambda self, base, split: offline(base, split))
    fails(["teacher", "--profile", "smoke", "--dataset", "cifar10", "--data-root", str(tmp_path), "--download"],
          f"the download into {tmp_path} failed (network is unreachable)")
    assert calls == [(tmp_path, "train")]
    assert nothing_trained()
