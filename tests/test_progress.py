"""Progress in logs: plain timestamped lines when stderr is not a terminal, for build, eval and runtime train."""

from __future__ import annotations

import io
import re

import pytest
from typer.testing import CliRunner

from condenser.cli import app
from condenser.progress import PlainProgress, progress_bar, set_quiet, stage, track
from runtime.errors import ConfigError
from runtime.progress import INTERVAL_ENV, LineReporter, format_duration, report_interval

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
DATASET = "synthetic:3:1x8x8:8"


class Clock:
    """A settable monotonic clock, so the tests never wait and never depend on timing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loud(monkeypatch):
    """Progress on (conftest silences it for every other test), a line at every update."""
    monkeypatch.delenv("MULTISIZE_QUIET", raising=False)
    monkeypatch.setenv(INTERVAL_ENV, "0")


def _reporter(interval: float) -> tuple[LineReporter, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return LineReporter(stream=out, interval=interval, clock=clock), out, clock


def test_lines_at_the_boundaries_and_at_most_once_per_interval(loud):
    lines, out, clock = _reporter(15.0)
    task = lines.add("teacher fmnist", total=100)
    for _ in range(9):  # 9 steps within 9 s: no line between the boundaries
        clock.now += 1
        lines.update(task, advance=1)
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 11  # 20 s after the start, 20 done: 1 per second, 80 left
    lines.update(task, completed=20)
    clock.now += 1
    lines.update(task, advance=1)  # 1 s after the last line: held back
    clock.now += 79
    lines.update(task, completed=100)
    got = out.getvalue().splitlines()
    assert len(got) == 3
    assert re.fullmatch(STAMP + r"teacher fmnist: started, 0/100 \(0%\)", got[0])
    assert re.fullmatch(STAMP + r"teacher fmnist: 20/100 \(20%\), 20s elapsed, ETA 1m20s", got[1])
    assert re.fullmatch(STAMP + r"teacher fmnist: done, 100/100 \(100%\) in 1m40s", got[2])


def test_a_changed_description_is_shown_with_the_next_line_and_close_finishes_every_task(loud):
    lines, out, clock = _reporter(0.0)
    a = lines.add("condense", total=None)
    b = lines.add("evaluate", total=4)
    clock.now += 5
    lines.update(a, description="condense mdc (1 runs)")
    lines.close()
    got = out.getvalue().splitlines()
    assert got[2].endswith("condense mdc (1 runs): 0, 5s elapsed, ETA ?")
    assert got[3].endswith("condense mdc (1 runs): done, 0 in 5s")
    assert got[4].endswith("evaluate: stopped at 0/4 (0%) after 5s")  # closed before its total
    lines.update(b, advance=1)  # a finished task prints nothing more
    assert len(out.getvalue().splitlines()) == 5


def test_quiet_environment_silences_the_lines(monkeypatch):
    monkeypatch.setenv("MULTISIZE_QUIET", "1")
    lines, out, _ = _reporter(0.0)
    lines.finish(lines.add("x", total=1))
    assert out.getvalue() == ""


@pytest.mark.parametrize(("raw", "value"), [(None, 15.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_interval_is_a_constant_the_environment_overrides(monkeypatch, raw, value):
    if raw is None:
        monkeypatch.delenv(INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(INTERVAL_ENV, raw)
    assert report_interval() == value


@pytest.mark.parametrize("raw", ["soon", "-1", "nan"])
def test_a_bad_interval_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv(INTERVAL_ENV, raw)
    with pytest.raises(ConfigError, match=INTERVAL_ENV):
        report_interval()


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (42, "42s"), (135, "2m15s"), (3725, "1h02m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_progress_bar_is_plain_off_a_terminal_and_silent_when_quiet(loud, capsys):
    assert isinstance(progress_bar(), PlainProgress)  # pytest's stderr is not a terminal
    assert list(track(range(3), "relabel 3 batches")) == [0, 1, 2]
    with stage("export trainer"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in err] == [
        "relabel 3 batches: started, 0/3 (0%)", "relabel 3 batches: 1/3 (33%), 0s elapsed, ETA 0s",
        "relabel 3 batches: 2/3 (67%), 0s elapsed, ETA 0s", "relabel 3 batches: done, 3/3 (100%) in 0s",
        "export trainer: started, 0/1 (0%)", "export trainer: done, 1/1 (100%) in 0s"]
    set_quiet(True)
    try:
        bar = progress_bar()
        assert not isinstance(bar, PlainProgress) and bar.disable
    finally:
        set_quiet(False)


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    """One CLI smoke build with stdout and stderr going to buffers (as under nohup): file, stdout, stderr."""
    tmp = tmp_path_factory.mktemp("progress")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MULTISIZE_CACHE", str(tmp / "cache"))
        mp.delenv("MULTISIZE_QUIET", raising=False)
        mp.setenv(INTERVAL_ENV, "0")
        out = tmp / "s.mdc"
        result = CliRunner().invoke(app, ["build", "--profile", "smoke", "--dataset", DATASET, "--ipc", "2",
                                          "--no-embed-trainer", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stdout, result.stderr


def test_a_build_into_a_log_writes_progress_lines_for_every_stage(smoke_build):
    _, stdout, stderr = smoke_build
    for stage_name in ("teacher synthetic_3_1x8x8_8-convnet-smoke", "condense dm ipc2", "relabel 12 views"):
        assert re.search(STAMP + re.escape(stage_name) + r".*: started, ", stderr), stderr
        assert re.search(STAMP + re.escape(stage_name) + r".*: done, ", stderr), stderr
    assert "\x1b[" not in stderr  # no terminal control codes in a log
    assert "wrote " in stdout


def test_an_eval_into_a_log_writes_progress_lines_and_quiet_silences_them(smoke_build, loud):
    path, _, _ = smoke_build
    args = ["eval", str(path), "--profile", "smoke", "--dataset", DATASET, "--epochs", "1", "--seeds", "1",
            "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(STAMP + r"eval s\.mdc and its control: started, 0%", result.stderr)
    assert re.search(STAMP + r"eval s\.mdc and its control: done, 100% in ", result.stderr)
    quiet = CliRunner().invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "IPC" in quiet.stdout  # the results table still prints


def test_runtime_train_into_a_log_writes_progress_lines(smoke_build, loud, capsys):
    from runtime.cli import main

    path, _, _ = smoke_build
    assert main(["train", str(path), "--backend", "torch", "--epochs", "2", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(STAMP + r"train IPC-2 with torch: started, 0/4 \(0%\)", err[0])
    assert re.fullmatch(STAMP + r"train IPC-2 with torch: 1/4 \(25%\), \d+s elapsed, ETA \d+s", err[1])
    assert re.fullmatch(STAMP + r"train IPC-2 with torch: done, 4/4 \(100%\) in \d+s", err[-1])
    assert main(["train", str(path), "--backend", "torch", "--epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def _bench_results(sizes: int) -> dict:
    methods, labels = ["A", "B", "C", "mdc", "random"], ["hard", "soft"]
    table = {m: {lab: {str(n): {"mean": 10.0 + n + i, "std": 0.25 * i} for n in range(1, sizes + 1)}
                 for lab in labels} for i, m in enumerate(methods)}
    del table["A"]["soft"]["2"]  # a cell still running
    summary = {m: {lab: {"avg": 50.0 + i, "diff": float(i - 2)} for lab in labels} for i, m in enumerate(methods)}
    summary["A"]["soft"] = {"avg": None, "diff": None}
    return {"sizes": list(range(1, sizes + 1)), "methods": methods, "labels": labels, "table": table,
            "summary": summary, "seeds": [0, 1, 2]}


@pytest.mark.parametrize("sizes", [3, 10, 50])
def test_the_bench_console_table_fits_80_columns_and_cuts_no_number(sizes):
    from condenser.bench.report import console_table

    text = console_table(_bench_results(sizes))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    cells = text.split()
    assert "12.0±0.2" in cells and f"{10 + sizes + 4:.1f}±1.0" in cells  # B at IPC 1, random at the largest size
    assert "54.0" in cells and "+2.0" in cells and "-2.0" in cells  # Avg. and the difference to Baseline C
    assert sum(line.startswith("soft A ") for line in text.splitlines()) == -(-(sizes + 2) // 7)  # one per block
    assert "A = separate per size" in " ".join(cells)


def test_fractional_totals_show_a_percentage_and_finish_despite_rounding(loud):
    lines, out, clock = _reporter(0.0)
    task = lines.add("evaluate 24 cells", total=0.3)
    for _ in range(3):
        clock.now += 2
        lines.update(task, advance=0.1)  # 0.1 + 0.1 + 0.1 < 0.3 in floating point
    got = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert got == ["evaluate 24 cells: started, 0%", "evaluate 24 cells: 33%, 2s elapsed, ETA 4s",
                   "evaluate 24 cells: 67%, 4s elapsed, ETA 2s", "evaluate 24 cells: done, 100% in 6s"]


def test_eval_writes_a_sidecar_json_and_leaves_the_file_alone_unless_write(smoke_build, tmp_path):
    import json
    import shutil

    import formats

    path = tmp_path / "copy.mdc"
    shutil.copyfile(smoke_build[0], path)
    before = path.read_bytes()
    args = ["eval", str(path), "--profile", "smoke", "--dataset", DATASET, "--epochs", "1", "--seeds", "1",
            "--device", "cpu", "--labels", "hard", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert path.read_bytes() == before
    sidecar = json.loads((tmp_path / "copy.mdc.eval.json").read_text())
    assert set(sidecar["sizes"]) == {"1", "2"} and sidecar["protocol"]["epochs"] == 1
    assert CliRunner().invoke(app, [*args, "--write", "--json", str(tmp_path / "t.json")]).exit_code == 0
    with formats.open_mdc(path) as reader:
        assert set(reader.header["results"]) == {"1", "2"}
    assert json.loads((tmp_path / "t.json").read_text())["sizes"].keys() == sidecar["sizes"].keys()
