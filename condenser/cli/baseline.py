"""`condenser baseline A|B|C`: the multisize paper's baselines as files (MDC paper §3.2).

B and C are nested: one .mdc whose IPC-n prefix is size n. A is one condensation per size, not nested:
a directory with ipc-1.mdc ... ipc-N.mdc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.build import BUILD_FLAGS
from condenser.cli.options import (
    Codec,
    ConfigFiles,
    DataRoot,
    Dataset,
    Device,
    Download,
    EmbedTrainer,
    Pixels,
    Precision,
    Profile,
    Seed,
    SetItems,
    SoftLabels,
    TeacherPath,
    Views,
    check_writable_dir,
    check_writable_file,
    flag_aliases,
    log,
    require_data,
    resolve_settings,
)

BASELINES = ("A", "B", "C")
BASELINE_FLAGS = {name: BUILD_FLAGS[name]
                  for name in ("method", "views", "codec", "pixels", "embed_trainer", "precision")}


def _name(value: str) -> str:
    if value.upper() not in BASELINES:
        raise typer.BadParameter(f"unknown baseline {value!r}; use A, B or C")
    return value


@app.command()
def baseline(
    name: Annotated[str, typer.Argument(callback=_name, help="A (a condensation per size), B (N IPC-1 runs) or C "
                                        "(one run, prefixes taken).")],
    ipc: Annotated[int, typer.Option("--ipc", min=1, help="Largest size N (images per class).")] = 10,
    dataset: Dataset = "fashion-mnist",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .mdc (B, C) or directory (A); default "
                                             "DATASET-ipcN-NAME[.mdc].")] = None,
    method: Annotated[str | None, typer.Option(help="Base method: gm or dm (sets method.name).")] = None,
    soft_labels: SoftLabels = "teacher",
    views: Views = None,
    teacher_path: TeacherPath = None,
    codec: Codec = None,
    pixels: Pixels = None,
    embed_trainer: EmbedTrainer = None,
    profile: Profile = None,
    config: ConfigFiles = None,
    settings: SetItems = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    precision: Precision = None,
    workers: Annotated[int | None, typer.Option(help="Processes for the N independent runs of A and B on CPU "
                                                "(default: one per CPU core, at most 8).", min=1)] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Condense Baseline A, B or C (resumable runs) and pack it like `condenser build`."""
    from condenser.bench.sets import build_baseline
    from condenser.bench.workers import auto_workers
    from condenser.build import BuildConfig

    name = name.upper()
    aliases = flag_aliases(BASELINE_FLAGS, method=method, views=views, codec=codec, pixels=pixels,
                           embed_trainer=embed_trainer, precision=precision)
    cfg = BuildConfig(dataset=dataset, ipc=ipc, settings=resolve_settings(profile, config, settings, aliases),
                      soft_labels=soft_labels, teacher_path=str(teacher_path) if teacher_path else None, seed=seed,
                      device=device, data_root=str(data_root) if data_root else None)
    stem = f"{dataset.replace(':', '_').replace('/', '_')}-ipc{ipc}-{name}"
    target = out or Path(stem if name == "A" else f"{stem}.mdc")
    if name == "A":
        check_writable_dir(target)
    else:
        check_writable_file(target)
    cfg.condense_config()  # a gm/dm run: its sizes and loops are checked before the teacher trains
    require_data(dataset, data_root, download, ("train", "test") if soft_labels == "teacher" else ("train",))
    files = build_baseline(name, cfg, target, log=log, workers=workers or auto_workers(device))
    where = target if name == "A" else files.paths[ipc]
    typer.echo(f"Baseline {name}: sizes 1..{ipc} -> {where}")
