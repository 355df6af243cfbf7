"""Hostile files and inputs on the condenser side (issue 13): temp files, printing headers, data selection,
CIFAR pickles, dead ranks. The format-level cases live in tests/test_formats_hostile.py."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import formats
from condenser.checkpoint import atomic_save_safetensors, atomic_torch_save, atomic_write_bytes
from condenser.cli import app
from condenser.cli.info import MAX_DEPTH, clean_text, file_report, render, report_json
from formats.atomic import atomic_write, remove_stale_temps
from formats.header import pack_preamble
from formats.layout import PREAMBLE_SIZE, align
from formats.testing import make_data

pytestmark = pytest.mark.usefixtures("bounded_memory")
MEMORY_BOUND = 512 << 20  # per test, checked by tests/conftest.py bounded_memory
REPO = Path(__file__).resolve().parents[1]


# --- temp files (item 9) ------------------------------------------------------------------------------

@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _plant_stale(target: Path) -> Path:
    """What a writer killed with SIGKILL leaves: an unlocked `.<name>.<random>.tmp` beside the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stale = target.with_name(f".{target.name}.k9abc123.tmp")
    stale.write_bytes(b"half a file")
    return stale


def test_remove_stale_temps_removes_only_dead_writers_files_of_that_target(tmp_path: Path) -> None:
    target = tmp_path / "out.mdc"
    stale = _plant_stale(target)
    others = [tmp_path / ".out.mdc", tmp_path / "out.mdc.tmp", tmp_path / ".out.abc.tmp",  # not its temp names
              tmp_path / ".out.mdc.x.y.tmp", tmp_path / ".other.mdc.abc.tmp"]
    for p in others:
        p.write_bytes(b"keep")
    (tmp_path / "out").write_bytes(b"target named out")
    live = tmp_path / ".out.mdc.live0001.tmp"
    fd = os.open(live, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that is still running holds its lock
        assert remove_stale_temps(target) == [stale]
        assert live.exists() and all(p.exists() for p in others)
    finally:
        os.close(fd)
    assert remove_stale_temps(target) == [live]  # its writer is gone now
    assert remove_stale_temps(tmp_path / "out") == [tmp_path / ".out.abc.tmp"]  # not `.out.mdc.x.y.tmp`
    assert (tmp_path / ".out.mdc.x.y.tmp").exists()


def test_a_writer_killed_with_sigkill_leaves_a_temp_that_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "out.mdc"
    code = ("import sys, time; from formats.atomic import atomic_write\n"
            "def slow(f):\n    f.write(b'x' * 4096); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            f"atomic_write({str(target)!r}, slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (left,) = tmp_path.glob(".out.mdc.*.tmp")
        assert remove_stale_temps(target) == []  # still running: its lock protects it
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert left.exists() and not target.exists()
    formats.write_mdc(target, make_data())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mdc"]


def test_a_cleaner_running_during_a_write_keeps_the_writers_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"

    def write(f) -> None:
        f.write(b"abc")
        assert remove_stale_temps(target) == []

    atomic_write(target, write)
    assert target.read_bytes() == b"abc"


def test_planted_fifos_symlinks_and_directories_are_left_alone_without_hanging(tmp_path: Path) -> None:
    target = tmp_path / "out.mdc"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.mkfifo(tmp_path / ".out.mdc.fifo0001.tmp")  # opening it for reading would block without O_NONBLOCK
    (tmp_path / ".out.mdc.link0001.tmp").symlink_to(victim)
    (tmp_path / ".out.mdc.dir00001.tmp").mkdir()
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and victim.read_bytes() == b"precious"
    assert len(list(tmp_path.glob(".out.mdc.*.tmp"))) == 3


def test_a_temp_unlinked_by_a_cleaner_before_it_is_locked_is_recreated(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    real = tempfile.mkstemp
    created: list[str] = []

    def raced(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        created.append(name)
        if len(created) == 1:
            os.unlink(name)  # what a concurrent remove_stale_temps does in the window before flock
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", raced)
    atomic_write_bytes(tmp_path / "x.bin", b"kept")
    assert len(created) == 2 and (tmp_path / "x.bin").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


@pytest.mark.parametrize("writer", ["bytes", "torch", "safetensors"])
def test_condenser_writers_remove_stale_temps_and_leave_0644(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "sub" / f"out.{writer}"
    stale = _plant_stale(target)
    with umask(0o022):
        if writer == "bytes":
            atomic_write_bytes(target, b"data")
        elif writer == "torch":
            atomic_torch_save({"x": torch.arange(3)}, target)
        else:
            atomic_save_safetensors({"x": torch.arange(3)}, target, metadata={"k": "v"})
    assert not stale.exists()
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_new_files_follow_the_umask_and_rewrites_keep_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with umask(0o077):
        atomic_write_bytes(target, b"1")
    assert target.stat().st_mode & 0o777 == 0o600
    target.chmod(0o640)
    atomic_write_bytes(target, b"2")
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_bytes() == b"2"


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this on purpose")


def test_an_exception_mid_write_leaves_no_temp_and_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"step": 1}, target)
    old = target.read_bytes()
    with pytest.raises(RuntimeError, match="on purpose"):  # torch.save fails after writing part of the zip
        atomic_torch_save({"step": 2, "weights": torch.zeros(1000), "bad": _Unpicklable()}, target)
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]

    def half(f) -> None:
        f.write(b"partial" * 100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.bin", half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_symlinks_at_the_old_predictable_temp_names_are_not_followed(tmp_path: Path) -> None:
    from condenser.statmatch.cache import ConvStatsKey, save_conv_stats
    from condenser.statmatch.teachers import save_member

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    member = tmp_path / "member"
    member.mkdir()
    (member / ".teacher.safetensors.tmp").symlink_to(victim)  # statmatch/teachers.py's old fixed name
    key = ConvStatsKey("synthetic", "convnet", "0" * 16, 4, 10)
    stats = tmp_path / "stats" / key.filename()
    stats.parent.mkdir()
    stats.with_name(f".{stats.name}.tmp").symlink_to(victim)  # statmatch/cache.py's old fixed name
    save_member(member, torch.nn.Linear(2, 2), {"arch": "linear"})
    save_conv_stats(stats, {"a.mean": torch.zeros(2)}, key)
    assert victim.read_bytes() == b"precious"
    assert (member / "teacher.safetensors").stat().st_size > 0 and stats.stat().st_size > 0


def test_a_teacher_run_removes_the_stale_temps_of_its_targets(tmp_path: Path) -> None:
    from condenser.profiles import get_profile
    from condenser.teacher import TeacherConfig, teacher_paths, train_teacher

    budget = replace(get_profile("smoke").teacher, epochs=1, max_train=40, max_test=20, batch_size=20)
    config = TeacherConfig(dataset="synthetic", arch="convnet", profile="smoke", budget=budget,
                           model_kwargs={"width": 4, "depth": 1})
    targets = teacher_paths(config, tmp_path)
    stale = [_plant_stale(t) for t in targets]
    stale.append(targets[0].with_name(".teacher.json.k9abc999.tmp"))
    stale[-1].write_bytes(b"{")
    with umask(0o022):
        train_teacher(config, root=tmp_path, device="cpu", log=lambda _: None)
    weights, meta, ckpt = targets
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in weights.parent.iterdir()) == ["teacher.json", "teacher.safetensors"]
    assert weights.stat().st_mode & 0o777 == 0o644 and meta.stat().st_mode & 0o777 == 0o644
    again = _plant_stale(ckpt)  # a cached teacher's rerun cleans up too
    train_teacher(config, root=tmp_path, device="cpu", log=lambda _: None)
    assert not again.exists()


def test_conv_stats_and_pool_members_clean_their_targets(tmp_path: Path) -> None:
    from condenser.statmatch.cache import ConvStatsKey, load_conv_stats, save_conv_stats
    from condenser.statmatch.teachers import save_member

    key = ConvStatsKey("synthetic", "convnet", "0" * 16, 4, 10)
    path = tmp_path / key.filename()
    stale_stats = _plant_stale(path)
    save_conv_stats(path, {"a.mean": torch.ones(3)}, key)
    assert not stale_stats.exists() and torch.equal(load_conv_stats(path, key)["a.mean"], torch.ones(3))
    member = tmp_path / "member"
    stale_w, stale_j = _plant_stale(member / "teacher.safetensors"), _plant_stale(member / "teacher.json")
    save_member(member, torch.nn.Linear(2, 2), {"arch": "linear"})
    assert not stale_w.exists() and not stale_j.exists()
    assert sorted(p.name for p in member.iterdir()) == ["teacher.json", "teacher.safetensors"]


# --- printing hostile headers (item 7) ----------------------------------------------------------------

def _write(path: Path, **header: Any) -> Path:
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=2, views=2))
    if header:
        formats.update_header(path, header)
    return path


def _with_raw_header(path: Path, edit) -> Path:
    """Rewrite `path` with a header whose msgpack bytes `edit(bytes)` returns (checksums made valid)."""
    with formats.open_mdc(path) as r:
        body = path.read_bytes()[r.body_offset:]
        hb = edit(msgpack.packb(dict(r.header), use_bin_type=True))
    head = pack_preamble(len(hb), zlib.crc32(hb)) + hb
    path.write_bytes(head + b"\0" * (align(PREAMBLE_SIZE + len(hb)) - len(head)) + body)
    return path


def _deep(path: Path, levels: int = 1000) -> Path:
    """provenance.deep = [[[... None ...]]], `levels` arrays deep (msgpack's packer stops at 512)."""
    formats.update_header(path, {"provenance": {"deep": "DEEP-MARK"}})
    mark = msgpack.packb("DEEP-MARK")
    return _with_raw_header(path, lambda hb: hb.replace(mark, b"\x91" * levels + b"\xc0"))


def _info(path: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["info", str(path), *args], terminal_width=200)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "\x1b" not in result.output and "\x07" not in result.output
    return result.output


HOSTILE_HEADERS = {
    "provenance list": {"provenance": [1, "two", None]},
    "provenance string": {"provenance": "[bold]not a map[/bold]"},
    "provenance number": {"provenance": 7},
    "superscript results key": {"results": {"²": {"hard": {"mean": 1.0, "std": 0.5}}, "1": {"images": 3}}},
    "non-numeric std": {"results": {"1": {"hard": {"mean": 50.0, "std": "wide"}, "soft": {"mean": "x"}}}},
    "rich markup and escapes": {"provenance": {"[/]": "[link=file:///etc/passwd]x[/link]",
                                               "k\x1b[2J": "\x1b]0;title\x07", "bidi": "a\u202eb"},
                                "writer": "[/red]", "created": {"[/]": b"\xff"}},
    "bytes and non-finite values": {"provenance": {"blob": b"\x00\xff", "nan": float("nan"), "inf": -float("inf")},
                                    "results": {"1": {"hard": {"mean": float("nan"), "std": float("inf")}}}},
    "odd results": {"results": {"-1": {"a": 1}, "99999999999999": {"a": 1}, "1": "not a row", "2": {"[/]": [1]}}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_info_prints_every_hostile_header(tmp_path: Path, case: str) -> None:
    path = _write(tmp_path / "x.mdc", **HOSTILE_HEADERS[case])
    _info(path)
    report = json.loads(_info(path, "--json"), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert report["header"]["ipc_max"] == 2


def test_info_shows_header_text_literally(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.mdc", **HOSTILE_HEADERS["rich markup and escapes"],
                  results={"²": {"hard": {"mean": 1.0}}, "1": {"hard": {"mean": 50.0, "std": "wide"}}})
    out = _info(path)
    for text in ("provenance.[/]", "[link=file:///etc/passwd]x[/link]", "provenance.k\\x1b[2J", "\\x1b]0;title\\x07",
                 "a\\u202eb", "[/red]", "50.00 ± wide"):
        assert text in out, text
    assert "²" not in out  # not a prefix size: skipped, not a crash


def test_info_escapes_markup_in_class_names_and_dataset(tmp_path: Path) -> None:
    data = make_data(num_classes=3, ipc_max=2, views=2)
    data.class_names = ["[bold red]boom[/]", "[/]", "\x1b[31mred\x9b"]
    data.dataset = "[link=file:///etc]ds[/link]"
    path = tmp_path / "x.mdc"
    formats.write_mdc(path, data)
    out = _info(path)
    for text in ("[bold red]boom[/]", "[/]", "\\x1b[31mred\\x9b", "[link=file:///etc]ds[/link]"):
        assert text in out, text
    assert json.loads(_info(path, "--json"))["header"]["class_names"][2] == "\x1b[31mred\x9b"


def test_info_json_caps_nesting_and_text_survives_it(tmp_path: Path) -> None:
    path = _deep(_write(tmp_path / "x.mdc"), levels=MAX_DEPTH + 20)  # deeper than shown, within what a reader takes
    report = json.loads(_info(path, "--json"))
    node = report["header"]["provenance"]["deep"]
    depth = 2  # header -> provenance -> deep
    while isinstance(node, list):
        node, depth = node[0], depth + 1
    assert depth == MAX_DEPTH and f"nested deeper than {MAX_DEPTH} levels" in node
    assert "provenance.deep" in _info(path)


def test_info_on_1000_levels_prints_json_or_one_format_error(tmp_path: Path) -> None:
    """A reader may refuse such a header (a FormatError, one line); info itself never fails on the depth."""
    path = _deep(_write(tmp_path / "x.mdc"), levels=1000)
    for args in ([], ["--json"]):
        result = CliRunner().invoke(app, ["info", str(path), *args], terminal_width=200)
        if result.exit_code == 0:
            assert not args or json.loads(result.output)["ipc_max"] == 2
        else:
            assert isinstance(result.exception, SystemExit) and result.output.startswith("error: ")
            assert result.output.count("\n") == 1


def test_info_json_marks_bytes_keys_and_values(tmp_path: Path) -> None:
    class Reader:  # a real reader's attributes, with a header the reader might not produce itself
        def __init__(self, inner, header: dict) -> None:
            self._inner, self.header = inner, header

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    with formats.open_mdc(_write(tmp_path / "x.mdc")) as inner:
        header = {**inner.header, b"\x00key": {b"\xff": b"\x01\x02"}, "deep": [[[[1]]]],
                  "provenance": {b"\xfe": 1}}
        fake = Reader(inner, header)
        report = json.loads(report_json(file_report(fake)))
        console = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115
        render(fake, console)
    assert report["header"]["$hex:006b6579"] == {"$hex:ff": {"$hex": "0102"}}
    assert report["header"]["deep"] == [[[[1]]]]
    assert "provenance.{\"$hex\": \"fe\"}" in console.export_text()


def test_clean_text_escapes_controls_and_keeps_printable_text() -> None:
    assert clean_text("plain ümlaut [b]") == "plain ümlaut [b]"
    assert clean_text("a\x1b[0m\nb\u2028c\u200bd") == "a\\x1b[0m\\x0ab\\u2028c\\u200bd"


# --- a header never picks the data (item 10) ----------------------------------------------------------

def _named(path: Path, dataset: str) -> Path:
    data = make_data(num_classes=3, ipc_max=2, views=2)
    data.dataset = dataset
    formats.write_mdc(path, data)
    return path


class _Stop(Exception):
    """Raised where a command would start reading a dataset."""


@pytest.fixture()
def data_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every dataset name a command asks for; the command is stopped there with _Stop (nothing is read)."""
    import condenser.data.loader
    import condenser.evaluate.sizes

    asked: list[str] = []

    def record(name: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(name)
        raise _Stop(name)

    monkeypatch.setattr(condenser.evaluate.sizes, "load_dataset", record)
    monkeypatch.setattr(condenser.data.loader, "get_source", record)
    return asked


@pytest.mark.parametrize("name", ["imagefolder:{tmp}/x", "imagefolder:{tmp}/x:64", "synthetic:1000:3x512x512",
                                  "../../etc", "not-registered"])
def test_eval_refuses_a_dataset_path_from_the_header(tmp_path: Path, data_loads: list[str], name: str) -> None:
    from condenser.data.trusted import UntrustedDatasetError
    from condenser.evaluate.sizes import evaluate_file
    from condenser.profiles import get_profile

    (tmp_path / "x" / "cls").mkdir(parents=True)  # a real folder: refused, not "not found"
    path = _named(tmp_path / "f.mdc", name.format(tmp=tmp_path))
    with pytest.raises(UntrustedDatasetError, match="pass --dataset"):
        evaluate_file(path, [1], get_profile("smoke").evaluate, ["hard"], [0], "cpu")
    result = CliRunner().invoke(app, ["eval", str(path), "--profile", "smoke", "--no-write"])
    assert result.exit_code != 0
    text = result.output + str(result.exception)
    assert "not a registered dataset" in text and "--dataset" in text
    assert data_loads == []  # nothing was loaded, not even the header's path


def test_eval_loads_only_the_users_dataset(tmp_path: Path, data_loads: list[str]) -> None:
    from condenser.evaluate.sizes import evaluate_file
    from condenser.profiles import get_profile

    path = _named(tmp_path / "f.mdc", f"imagefolder:{tmp_path}")
    budget = get_profile("smoke").evaluate
    with pytest.raises(_Stop):
        evaluate_file(path, [1], budget, ["hard"], [0], "cpu", dataset=f"imagefolder:{tmp_path}/mine")
    with pytest.raises(_Stop):
        evaluate_file(_named(tmp_path / "g.mdc", "synthetic"), [1], budget, ["hard"], [0], "cpu")
    assert data_loads == [f"imagefolder:{tmp_path}/mine", "synthetic"]


def test_header_dataset_accepts_registered_names_only() -> None:
    from condenser.data.trusted import UntrustedDatasetError, header_dataset

    assert header_dataset("fashion-mnist", "h") == "fashion-mnist"
    for bad in (None, 3, ["cifar10"], b"cifar10", "cifar10 ", "imagefolder:/", "\x1b[2J" * 50):
        with pytest.raises(UntrustedDatasetError) as info:
            header_dataset(bad, "the header of f.mdc")
        assert "\x1b" not in str(info.value) and len(str(info.value)) < 400


# --- CIFAR batches without arbitrary unpickling (item 10) ---------------------------------------------

class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar_dir(root: Path, batches: dict[str, bytes]) -> Path:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        default = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
        (directory / name).write_bytes(batches.get(name, default))
    return directory


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "codecs"])
def test_a_malicious_cifar_pickle_raises_and_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          payload: str) -> None:
    from condenser.data import clear_cache, load_dataset
    from condenser.data.cifar import UnsafePickleError

    marker = tmp_path / "pwned"
    evil = {
        "os.system": pickle.dumps({"data": _RunsShell(marker), "labels": [0]}, protocol=2),
        "builtins.eval": b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.",
        "codecs": b"c_codecs\nencode\n(Vx\nVrot13\ntR.",  # _codecs.encode beyond latin-1 is refused too
    }[payload]
    monkeypatch.delenv("MULTISIZE_DATA", raising=False)
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    _cifar_dir(tmp_path / "root", {"test_batch": evil})
    clear_cache()
    with pytest.raises(UnsafePickleError, match="test_batch") as info:
        load_dataset("cifar10", "test", root=tmp_path / "root")
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_cifar_batches_of_every_pickle_protocol_and_numpy_1_names_load(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from condenser.data import clear_cache, load_dataset

    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    batch = {"data": data, "labels": [3, 7], "batch_label": "testing batch 1 of 1", "filenames": [b"a.png", "b"]}
    legacy = pickle.dumps(batch, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n" in legacy  # what the official (numpy 1, Python 2) files name
    monkeypatch.delenv("MULTISIZE_DATA", raising=False)
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    for i, blob in enumerate([legacy, pickle.dumps(batch, protocol=4), pickle.dumps(batch, protocol=5)]):
        root = tmp_path / f"root{i}"
        _cifar_dir(root, {"test_batch": blob})
        clear_cache()
        ds = load_dataset("cifar10", "test", root=root)
        assert torch.equal(ds.images.reshape(2, -1), torch.from_numpy(data)) and ds.labels.tolist() == [3, 7]


def test_a_cifar_batch_that_is_not_a_dict_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from condenser.data import clear_cache, load_dataset
    from condenser.errors import CondenserError

    monkeypatch.delenv("MULTISIZE_DATA", raising=False)
    _cifar_dir(tmp_path / "root", {"test_batch": pickle.dumps([1, 2, 3])})
    clear_cache()
    with pytest.raises(CondenserError, match="test_batch: a list, not a dict"):
        load_dataset("cifar10", "test", root=tmp_path / "root")


# --- a dead rank is reported as what happened (item 11) -----------------------------------------------

GLOO_CLOSED = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:36273. This is "
                           "typically caused by a remote worker crashing.")
GLOO_TIMEOUT = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 4000ms for recv operation")


def test_failure_message_says_the_peer_closed_its_connection_and_when() -> None:
    from condenser.distributed import failure_message

    msg = failure_message("all-reduce of the loss", 0, 2, 0.7, 1800.0, GLOO_CLOSED)
    assert msg.startswith("rank 0 of 2: all-reduce of the loss failed after 0.7s: rank 1 closed its connection")
    assert "1800" not in msg and "within" not in msg and "Connection closed by peer" in msg
    assert "another rank closed its connection" in failure_message("x", 2, 4, 0.1, 60.0, GLOO_CLOSED)


def test_failure_message_reports_a_timeout_only_when_there_was_one() -> None:
    from condenser.distributed import ENV_TIMEOUT, failure_message

    msg = failure_message("barrier", 1, 2, 4.0, 4.0, GLOO_TIMEOUT)
    assert msg.startswith("rank 1 of 2: barrier failed after 4.0s: another rank did not reach it within the 4s timeout")
    assert ENV_TIMEOUT in msg
    other = failure_message("broadcast", 0, 3, 0.2, 1800.0, ValueError("tensor shapes differ"))
    assert other == "rank 0 of 3: broadcast failed after 0.2s (timeout 1800s), ValueError: tensor shapes differ"


DEAD_RANK = """
import os, sys, time, torch
from condenser.distributed import session

with session("cpu", timeout_s=600) as dist:
    if dist.rank == 1:
        time.sleep(0.3)
        os._exit(3)  # dies without a word, like kill -9
    dist.all_reduce_sum(torch.ones(1), "the dead-rank test's all-reduce")
"""


def test_a_dead_rank_is_named_with_the_elapsed_time_not_the_timeout(tmp_path: Path) -> None:
    from test_distributed import _ranks  # tests/ is on sys.path under pytest

    rank0, rank1 = _ranks(["-c", DEAD_RANK], world=2)
    assert rank1.returncode == 3 and rank0.returncode != 0
    err = rank0.stderr
    assert "DistributedError: rank 0 of 2: the dead-rank test's all-reduce failed after" in err, err[-2000:]
    assert "rank 1 closed its connection" in err and "within the 600s" not in err
    seconds = float(err.split("failed after ")[1].split("s:")[0])
    assert seconds < 60
