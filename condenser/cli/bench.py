"""`condenser bench`: MDC, Baselines A/B/C and random real controls, every size, hard and soft labels."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import (
    DataRoot,
    Dataset,
    Device,
    Download,
    Profile,
    Seed,
    check_writable_dir,
    log,
    require_data,
    resolve_profile,
)
from condenser.errors import CondenserError

if TYPE_CHECKING:
    from condenser.bench import BenchConfig

_SECTIONS = {"condense": "condense_overrides", "eval": "eval_overrides"}


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """['condense.outer_loops=2', 'eval.epochs=5'] -> {'condense_overrides': {...}, 'eval_overrides': {...}}."""
    out: dict[str, dict] = {field: {} for field in _SECTIONS.values()}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in _SECTIONS or not name:
            raise CondenserError(f"bad override {item!r}; use condense.FIELD=VALUE or eval.FIELD=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[_SECTIONS[section]][name] = value
    return out


def check_overrides(overrides: dict[str, dict]) -> None:
    """Unknown --set fields fail now, naming the known ones (not as a TypeError deep in a stage)."""
    from dataclasses import fields

    from condenser.condense import CondenseConfig
    from condenser.profiles import EvalBudget

    for section, cls in (("condense", CondenseConfig), ("eval", EvalBudget)):
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(overrides[_SECTIONS[section]]) - known):
            raise CondenserError(f"--set {section}.{unknown[0]}: unknown field; known: {', '.join(sorted(known))}")


def check_bench(cfg: BenchConfig) -> None:
    """The output directory, the budgets and every condensation's settings, before the first run."""
    profile = cfg.bench_profile()
    cfg.build_config().condense_config(profile)
    check_writable_dir(cfg.out_dir)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.command()
def bench(
    dataset: Dataset = "fashion-mnist",
    ipc: Annotated[int, typer.Option("--ipc", min=1, help="Largest size N; every size 1..N is evaluated.")] = 10,
    profile: Profile = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results directory (default: "
                                             "results/DATASET-ipcN-PROFILE); also holds the cache.")] = None,
    methods: Annotated[str, typer.Option(help="Comma list of A, B, C, mdc, random.")] = "A,B,C,mdc,random",
    labels: Annotated[str, typer.Option(help="hard, soft or hard,soft.")] = "hard,soft",
    seeds: Annotated[int | None, typer.Option(min=1, help="Evaluation seeds (default: the profile's bench "
                                              "budget).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the evaluation epochs.")] = None,
    outer_loops: Annotated[int | None, typer.Option(min=1, help="Override the condensation outer loops.")] = None,
    override: Annotated[list[str] | None, typer.Option("--set", help="condense.FIELD=VALUE or eval.FIELD=VALUE "
                                                       "(repeatable), applied to every method alike.")] = None,
    views: Annotated[int | None, typer.Option(min=1, help="Soft-label views per image (default: the bench "
                                              "budget's).")] = None,
    teacher_path: Annotated[Path | None, typer.Option("--teacher", exists=True, dir_okay=False,
                                                      help="A teacher.safetensors to use instead of the "
                                                      "cached/trained one.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes for the evaluation cells and, on CPU, for the N "
                                                "runs of Baselines A and B (default: one per CPU core, at most 8; "
                                                "one on CUDA).", min=1)] = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Condense every method, evaluate every size (cached per cell, resumable), write JSON, Markdown and PNG."""
    import shutil

    from condenser.bench import BenchConfig, run_bench
    from condenser.bench.report import console_table

    ov = parse_overrides(override or [])
    check_overrides(ov)
    if epochs is not None:
        ov["eval_overrides"]["epochs"] = epochs
    if outer_loops is not None:
        ov["condense_overrides"]["outer_loops"] = outer_loops
    cfg = BenchConfig(
        dataset=dataset, ipc=ipc, profile=resolve_profile(profile), methods=_csv(methods), labels=_csv(labels),
        seeds=seeds, seed=seed, out=str(out) if out else None, device=device,
        data_root=str(data_root) if data_root else None, teacher_path=str(teacher_path) if teacher_path else None,
        views=views, workers=workers, **ov,
    )
    check_bench(cfg)
    require_data(dataset, data_root, download, ("train", "test"))
    output = run_bench(cfg, log=log, command=shlex.join(["condenser", *sys.argv[1:]]))
    width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
    typer.echo(console_table(output.results, width), nl=False)
