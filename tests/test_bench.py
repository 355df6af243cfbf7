"""Benchmark, baselines and `condenser show` on tiny runs (seconds): outputs, table arithmetic, resume."""

from __future__ import annotations

import json
import shlex
import statistics

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import formats
from condenser.bench import BenchConfig, build_baseline, markdown_table, per_size_table, run_bench, summary
from condenser.bench import cells as cells_module
from condenser.bench.sets import random_sets, write_sized_sets
from condenser.bench.stages import bench_command
from condenser.build import BuildConfig
from condenser.cli import app
from condenser.config import parse_item
from condenser.data import denormalize_to_uint8
from condenser.device import resolve_precision
from condenser.evaluate.sizes import evaluate_prefix
from condenser.profiles import get_profile, resolve

TINY = {"condense.outer_loops": 2, "condense.inner_loops": 1, "condense.multisize.period": 1,
        "condense.batch_real": 8, "condense.width": 8}
TINY_EVAL = {"evaluate.epochs": 1, "evaluate.width": 8, "evaluate.max_test": 200}
SMOKE = get_profile("smoke")


def _bench(tmp_path, name="r", settings: dict | None = None, **kw) -> BenchConfig:
    tree = resolve("smoke", bench=True).updated({**TINY, **TINY_EVAL, "evaluate.seeds": 2, "relabel.views": 2,
                                                 **(settings or {})})
    base = dict(ipc=2, settings=tree, device="cpu", workers=1, out=str(tmp_path / name))
    base.update(kw)
    return BenchConfig(**base)


def _build(**kw) -> BuildConfig:
    """A smoke build job with hard labels, no embedded trainer and the tiny condensation."""
    return BuildConfig(**{"ipc": 2, "settings": SMOKE.updated({**TINY, "pack.embed_trainer": False}),
                          "soft_labels": "none", "device": "cpu", **kw})


class CountingEval:
    """Wraps the per-cell evaluation to count trainings; optionally raises after `fail_after` of them."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after
        self._real = evaluate_prefix  # the real one, even when another counter is installed
        monkeypatch.setattr(cells_module, "evaluate_prefix", self)

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return self._real(*args, **kwargs)


def test_bench_writes_json_markdown_png_whose_numbers_agree(tmp_path, monkeypatch):
    counter = CountingEval(monkeypatch)
    out = run_bench(_bench(tmp_path), log=lambda _: None, progress=False)
    assert counter.calls == out.computed_cells == 5 * 2 * 2 * 2  # methods x sizes x labels x seeds
    data = json.loads(out.paths["json"].read_text())
    assert data["complete"] and data["sizes"] == [1, 2] and data["seeds"] == [0, 1]
    assert data["methods"] == ["A", "B", "C", "mdc", "random"] and data["labels"] == ["hard", "soft"]
    assert data["budgets"]["evaluate"]["epochs"] == 1 and data["budgets"]["condense_config"]["outer_loops"] == 2
    ran = _bench(tmp_path).build_config().settings  # the resolved tree, as every method ran it
    cpu = torch.device("cpu")  # `auto` is recorded as the arithmetic it resolved to on this machine
    ran = ran.updated({"condense.precision": resolve_precision(ran.condense.precision, cpu),
                       "evaluate.precision": resolve_precision(ran.evaluate.precision, cpu)})
    assert ran.condense.precision in ("fp32", "bf16")
    assert data["settings"] == json.loads(json.dumps(ran.as_dict()))
    assert data["settings"]["name"] == "smoke" and data["settings"]["pack"]["embed_trainer"] is False
    for m in data["methods"]:
        for lab in data["labels"]:
            row = data["table"][m][lab]
            for n in ("1", "2"):
                accs = row[n]["accuracies"]
                assert len(accs) == 2
                assert row[n]["mean"] == pytest.approx(statistics.fmean(accs), abs=1e-3)
                assert row[n]["std"] == pytest.approx(statistics.pstdev(accs), abs=1e-3)
            avg = statistics.fmean(row[n]["mean"] for n in ("1", "2"))
            ref = statistics.fmean(data["table"]["C"][lab][n]["mean"] for n in ("1", "2"))
            assert data["summary"][m][lab]["avg"] == pytest.approx(avg, abs=1e-3)
            assert data["summary"][m][lab]["diff"] == pytest.approx(avg - ref, abs=1e-3)
    # A's IPC-1 run is B's first run (docs/multisize.md): the same images, so the same hard-label numbers
    assert data["table"]["A"]["hard"]["1"]["accuracies"] == data["table"]["B"]["hard"]["1"]["accuracies"]
    assert data["table"]["A"]["hard"]["2"]["accuracies"] == data["table"]["C"]["hard"]["2"]["accuracies"]  # and C
    md = out.paths["markdown"].read_text()
    mdc = data["table"]["mdc"]["soft"]
    assert (f"| soft | MDC (ours) | {mdc['1']['mean']:.2f}±{mdc['1']['std']:.2f} | "
            f"{mdc['2']['mean']:.2f}±{mdc['2']['std']:.2f} | {data['summary']['mdc']['soft']['avg']:.2f} | "
            f"{data['summary']['mdc']['soft']['diff']:+.2f} |") in md
    assert md.count("\n| hard |") == 5 and md.count("\n| soft |") == 5
    with Image.open(out.paths["plot"]) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 200
    # A is a directory of per-size files, the nested methods one file each
    assert sorted(p.name for p in (tmp_path / "r" / "sets" / "A").iterdir()) == ["ipc-1.mdc", "ipc-2.mdc"]
    with formats.open_mdc(tmp_path / "r" / "sets" / "C.mdc") as reader:
        assert reader.ipc_max == 2 and reader.read(2).views.targets.shape == (20, 2, 10)


def test_table_averages_and_differences_come_from_the_per_size_numbers():
    accs = {("C", 1): [10.0, 20.0], ("C", 2): [30.0, 30.0], ("mdc", 1): [40.0, 42.0], ("mdc", 2): [50.0, 54.0]}
    records = [{"method": m, "labels": "hard", "size": n, "seed": s, "accuracy": a, "num_images": 10 * n,
                "wall_seconds": 1.0} for (m, n), pair in accs.items() for s, a in enumerate(pair)]
    table = per_size_table(records, ["C", "mdc"], ["hard"], [1, 2], [0, 1])
    assert table["mdc"]["hard"]["2"]["mean"] == 52.0 and table["mdc"]["hard"]["2"]["std"] == 2.0
    summ = summary(table, [1, 2])
    assert summ["C"]["hard"] == {"avg": 22.5, "diff": 0.0}
    assert summ["mdc"]["hard"] == {"avg": 46.5, "diff": 24.0}  # (41 + 52) / 2 - (15 + 30) / 2
    results = {"sizes": [1, 2], "labels": ["hard"], "methods": ["C", "mdc"], "table": table, "summary": summ}
    md = markdown_table(results)
    assert "| hard | MDC (ours) | 41.00±1.00 | 52.00±2.00 | 46.50 | +24.00 |" in md
    assert "| hard | C (one run, prefixes) | 15.00±5.00 | 30.00±0.00 | 22.50 | +0.00 |" in md
    # a size with a missing seed is not reported, and the row's average stays undefined
    table = per_size_table(records[:-1], ["C", "mdc"], ["hard"], [1, 2], [0, 1])
    assert "2" not in table["mdc"]["hard"] and summary(table, [1, 2])["mdc"]["hard"]["avg"] is None
    assert "| hard | MDC (ours) | 41.00±1.00 | – | – | – |" in markdown_table({**results, "table": table,
                                                                              "summary": summary(table, [1, 2])})


def _numbers(results: dict) -> dict:
    """Per-cell accuracies of a results dict (wall times differ between runs)."""
    return {(m, lab, n): s["accuracies"] for m, by_label in results["table"].items()
            for lab, row in by_label.items() for n, s in row.items()}


def test_killed_bench_resumes_from_its_cache(tmp_path, monkeypatch):
    cfg = _bench(tmp_path, methods=("C", "mdc", "random"))
    total = 3 * 2 * 2 * 2
    killer = CountingEval(monkeypatch, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, log=lambda _: None, progress=False)
    assert killer.calls == 5
    cell_files = sorted((tmp_path / "r" / "cells").rglob("*.json"))
    assert len(cell_files) == 5
    before = {p: p.read_bytes() for p in cell_files}

    counter = CountingEval(monkeypatch)
    resumed = run_bench(cfg, log=lambda _: None, progress=False)
    assert counter.calls == resumed.computed_cells == total - 5  # finished cells are not recomputed
    assert all(p.read_bytes() == b for p, b in before.items())  # ... nor rewritten
    counter.calls = 0
    again = run_bench(cfg, log=lambda _: None, progress=False)
    assert counter.calls == 0 and _numbers(again.results) == _numbers(resumed.results)

    straight = run_bench(_bench(tmp_path, name="s", methods=("C", "mdc", "random")), log=lambda _: None,
                         progress=False)
    assert _numbers(straight.results) == _numbers(resumed.results)  # the same numbers as an uninterrupted run


def test_a_changed_budget_invalidates_cells(tmp_path, monkeypatch):
    cfg = _bench(tmp_path, settings={"evaluate.seeds": 1}, methods=("random",), labels=("hard",))
    run_bench(cfg, log=lambda _: None, progress=False)
    counter = CountingEval(monkeypatch)
    run_bench(_bench(tmp_path, settings={"evaluate.seeds": 1, "evaluate.lr": 0.02}, methods=("random",),
                     labels=("hard",)),
              log=lambda _: None, progress=False)
    assert counter.calls == 2  # every cell again: its key includes the evaluation budget


def test_worker_processes_give_the_same_cells(tmp_path):
    kw = dict(settings={"evaluate.seeds": 1}, methods=("random",), labels=("hard",))
    one = run_bench(_bench(tmp_path, "one", **kw), log=lambda _: None, progress=False)
    two = run_bench(_bench(tmp_path, "two", workers=2, **kw), log=lambda _: None, progress=False)
    assert two.computed_cells == 2 and len(list((tmp_path / "two" / "cells").rglob("*.json"))) == 2
    assert _numbers(two.results) == _numbers(one.results)


def test_show_writes_the_grid_of_denormalised_images(tmp_path, fmnist_train):
    cfg = _build(ipc=3)
    sets = random_sets(fmnist_train, 3, seed=1)
    files = write_sized_sets(sets, tmp_path / "rand.mdc", cfg, cfg.settings, fmnist_train, None)
    result = CliRunner().invoke(app, ["show", str(files.paths[3]), "--out", str(tmp_path / "g.png"),
                                      "--scale", "2", "--pad", "1", "--no-labels"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "g.png") as img:
        grid = np.asarray(img)
    assert grid.shape == (10 * (56 + 1) + 1, 3 * (56 + 1) + 1)  # classes as rows, IPC order as columns
    # image number 2 of class 7 is record 2*10 + 7; the float16 file holds its exact uint8 pixels
    real = denormalize_to_uint8(sets.get(3)[0][27], fmnist_train.spec)[0].numpy()
    tile = grid[1 + 7 * 57 : 1 + 7 * 57 + 56 : 2, 1 + 2 * 57 : 1 + 2 * 57 + 56 : 2]
    np.testing.assert_array_equal(tile, real)
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()  # padding


def test_baseline_c_cli_writes_a_valid_nested_file_that_eval_reads(tmp_path):
    out = tmp_path / "c.mdc"
    result = CliRunner().invoke(app, ["baseline", "C", "--ipc", "2", "--profile", "smoke", "--views", "2",
                                      "--no-embed-trainer", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with formats.open_mdc(out) as reader:
        assert reader.ipc_max == 2 and reader.blocks_present == 2 and reader.num_classes == 10
        one, two = reader.read(1), reader.read(2)
        np.testing.assert_array_equal(one.images, two.images[:10])
        np.testing.assert_array_equal(two.labels, np.tile(np.arange(10), 2))
        assert two.views.targets.shape == (20, 2, 10)
        prov = reader.header["provenance"]
        assert prov["method"] == "C" and prov["nested"] and len(prov["runs"]) == 1
        assert prov["runs"][0]["condense"]["multisize"]["enabled"] is False
        assert prov["settings"]["name"] == "smoke" and prov["build"]["ipc"] == 2
    result = CliRunner().invoke(app, ["eval", str(out), "--profile", "smoke", "--epochs", "1", "--seeds", "2",
                                      "--labels", "hard,soft", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "c.mdc.eval.json").read_text())
    assert set(data["sizes"]) == {"1", "2"}
    for row in data["sizes"].values():
        for mode in ("hard", "soft"):
            assert row[mode]["mean"] == pytest.approx(statistics.fmean(row[mode]["accuracies"]), abs=1e-3)


def test_baseline_a_is_one_file_per_size_and_b_c_reuse_its_equal_runs(tmp_path):
    cfg = _build()
    a = build_baseline("A", cfg, tmp_path / "A", log=lambda _: None, progress=False)
    assert {n: p.name for n, p in a.paths.items()} == {1: "ipc-1.mdc", 2: "ipc-2.mdc"}
    for n, path in a.paths.items():
        with formats.open_mdc(path) as reader:
            assert reader.ipc_max == n and reader.header["provenance"]["size"] == n
    b = build_baseline("B", cfg, tmp_path / "b.mdc", log=lambda _: None, progress=False)
    with formats.open_mdc(b.paths[2]) as reader, formats.open_mdc(a.paths[1]) as a1:
        runs = reader.header["provenance"]["runs"]
        assert runs[0]["timings"]["outer_loops_this_run"] == 0  # resumed from A's finished IPC-1 run
        assert runs[1]["timings"]["outer_loops_this_run"] == 2
        np.testing.assert_array_equal(reader.read(1).images, a1.read(1).images)
    c = build_baseline("C", cfg, tmp_path / "c.mdc", log=lambda _: None, progress=False)
    with formats.open_mdc(c.paths[2]) as reader, formats.open_mdc(a.paths[2]) as a2:
        assert reader.header["provenance"]["runs"][0]["timings"]["outer_loops_this_run"] == 0  # A's IPC-N run
        np.testing.assert_array_equal(reader.read(2).images, a2.read(2).images)
    with pytest.raises(Exception, match="unknown baseline"):
        build_baseline("D", cfg, tmp_path / "d.mdc", log=lambda _: None)


def test_the_bench_command_line_reproduces_the_settings(tmp_path):
    cfg = _bench(tmp_path, settings={"method.dm.lr": 0.5, "quick.sizes": [1, 3]}, methods=("C", "mdc"))
    args = shlex.split(bench_command(cfg))
    assert args[:8] == ["condenser", "bench", "--dataset", "fashion-mnist", "--ipc", "2", "--profile", "smoke"]
    assert "--methods" in args and "C,mdc" in args
    items = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert dict(parse_item(i) for i in items)["method.dm.lr"] == 0.5
    assert resolve("smoke", items=items, bench=True) == cfg.settings


def test_baseline_runs_in_parallel_processes_equal_the_serial_runs(tmp_path):
    import torch

    from condenser.bench.sets import method_sets
    from condenser.data import load_dataset

    cfg = _build()
    profile, train = cfg.settings, load_dataset("fashion-mnist", "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same reductions, same bits
    try:
        serial = method_sets("B", cfg, profile, train, tmp_path / "serial", progress=False)
    finally:
        torch.set_num_threads(threads)
    logs: list[str] = []
    parallel = method_sets("B", cfg, profile, train, tmp_path / "parallel", progress=False, workers=2,
                           log=logs.append)
    assert "B: condensing 2 runs in 2 processes" in logs
    assert sorted(line.split()[1] for line in logs[1:]) == ["B-run0", "B-run1"]
    assert all(run.timings["outer_loops_this_run"] == 0 for run in parallel.runs)  # read back, not recomputed
    for n in (1, 2):
        assert torch.equal(serial.sets[n], parallel.sets[n])


def test_baseline_cli_condenses_b_runs_in_parallel_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "b.mdc"
    result = CliRunner().invoke(app, ["baseline", "B", "--ipc", "2", "--profile", "smoke", "--soft-labels", "none",
                                      "--no-embed-trainer", "--device", "cpu", "--workers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "B: condensing 2 runs in 2 processes" in result.output
    with formats.open_mdc(out) as reader:
        assert reader.ipc_max == 2 and reader.header["provenance"]["method"] == "B"
        assert all(r["timings"]["outer_loops_this_run"] == 0 for r in reader.header["provenance"]["runs"])


def test_serial_stages_use_the_workers_cores_and_give_them_back(monkeypatch):
    from condenser.bench import workers as workers_module

    monkeypatch.setattr(workers_module.os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with workers_module.serial_stage_threads(2):
            assert torch.get_num_threads() == 4  # 2 workers x 2 threads each
        assert torch.get_num_threads() == 1
        with workers_module.serial_stage_threads(1):  # one worker: the process's own setting stays
            assert torch.get_num_threads() == 1
        assert workers_module.worker_threads(3) == 1 and workers_module.worker_threads(8) == 1
    finally:
        torch.set_num_threads(before)
