"""`condenser bench`: MDC, Baselines A/B/C and random real controls, every size, hard and soft labels."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import app
from condenser.cli.options import DataRoot, Dataset, Device, Profile, Seed, resolve_profile
from condenser.errors import CondenserError

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


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.command()
def bench(
    dataset: Dataset = "fashion-mnist",
    ipc: Annotated[int, typer.Option("--ipc", help="Largest size N; every size 1..N is evaluated.")] = 10,
    profile: Profile = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Results directory (default: "
                                             "results/DATASET-ipcN-PROFILE); also holds the cache.")] = None,
    methods: Annotated[str, typer.Option(help="Comma list of A, B, C, mdc, random.")] = "A,B,C,mdc,random",
    labels: Annotated[str, typer.Option(help="hard, soft or hard,soft.")] = "hard,soft",
    seeds: Annotated[int | None, typer.Option(help="Evaluation seeds (default: the profile's bench budget).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the evaluation epochs.")] = None,
    outer_loops: Annotated[int | None, typer.Option(help="Override the condensation outer loops.")] = None,
    override: Annotated[list[str] | None, typer.Option("--set", help="condense.FIELD=VALUE or eval.FIELD=VALUE "
                                                       "(repeatable), applied to every method alike.")] = None,
    views: Annotated[int | None, typer.Option(help="Soft-label views per image (default: the bench budget's).")] = None,
    teacher_path: Annotated[Path | None, typer.Option("--teacher", help="A teacher.safetensors to use "
                                                      "instead of the cached/trained one.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes for the evaluation cells and, on CPU, for the N "
                                                "runs of Baselines A and B (default: one per CPU core, at most 8; "
                                                "one on CUDA).")] = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Condense every method, evaluate every size (cached per cell, resumable), write JSON, Markdown and PNG."""
    from rich.console import Console
    from rich.markdown import Markdown

    from condenser.bench import BenchConfig, run_bench
    from condenser.bench.report import markdown_table

    ov = parse_overrides(override or [])
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
    output = run_bench(cfg, log=typer.echo, command=shlex.join(["condenser", *sys.argv[1:]]))
    Console().print(Markdown(markdown_table(output.results)))
