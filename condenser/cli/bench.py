"""`condenser bench`: MDC, Baselines A/B/C and random real controls, every size, hard and soft labels."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import (
    ConfigFiles,
    DataRoot,
    Dataset,
    Device,
    Download,
    Profile,
    Seed,
    SetItems,
    TeacherPath,
    Views,
    check_writable_dir,
    flag_aliases,
    log,
    require_data,
    resolve_settings,
)

if TYPE_CHECKING:
    from condenser.bench import BenchConfig

# The flags of `bench` that stand for a key of the settings tree (docs/config.md); the tree is the bench's.
BENCH_FLAGS = {"seeds": ("--seeds", "evaluate.seeds"), "epochs": ("--epochs", "evaluate.epochs"),
               "outer_loops": ("--outer-loops", "condense.outer_loops"), "views": ("--views", "relabel.views")}


def check_bench(cfg: BenchConfig) -> None:
    """The output directory and every condensation's settings, before the first run."""
    cfg.build_config().condense_config()
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
    methods: Annotated[str | None, typer.Option(help="Comma list of A, B, C, mdc, random, random-formed (default: "
                                                "all; random-formed needs condense.factor > 1).")] = None,
    labels: Annotated[str, typer.Option(help="hard, soft or hard,soft.")] = "hard,soft",
    seeds: Annotated[int | None, typer.Option(min=1, help="Evaluation seeds (sets evaluate.seeds).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Evaluation epochs (sets evaluate.epochs).")] = None,
    outer_loops: Annotated[int | None, typer.Option(min=1, help="Condensation outer loops (sets "
                                                    "condense.outer_loops).")] = None,
    config: ConfigFiles = None,
    settings: SetItems = None,
    views: Views = None,
    teacher_path: TeacherPath = None,
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
    """Condense every method, evaluate every size (cached per cell, resumable), write JSON, Markdown and PNG.

    Every method runs with the same tree: the profile with its bench overlay in place (docs/config.md), so
    `--set evaluate.epochs=5` sets the epochs the bench trains.
    """
    import shutil

    from condenser.bench import BenchConfig, run_bench
    from condenser.bench.report import console_table

    aliases = flag_aliases(BENCH_FLAGS, seeds=seeds, epochs=epochs, outer_loops=outer_loops, views=views)
    cfg = BenchConfig(
        dataset=dataset, ipc=ipc, settings=resolve_settings(profile, config, settings, aliases, bench=True),
        methods=_csv(methods) if methods else None, labels=_csv(labels), seed=seed, out=str(out) if out else None,
        device=device,
        data_root=str(data_root) if data_root else None, teacher_path=str(teacher_path) if teacher_path else None,
        workers=workers,
    )
    check_bench(cfg)
    require_data(dataset, data_root, download, ("train", "test"))
    output = run_bench(cfg, log=log, command=shlex.join(["condenser", *sys.argv[1:]]))
    width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
    typer.echo(console_table(output.results, width), nl=False)
