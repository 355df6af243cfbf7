"""`condenser baseline A|B|C`: the multisize paper's baselines as files (MDC paper §3.2).

B and C are nested: one .mdc whose IPC-n prefix is size n. A is one condensation per size, not nested:
a directory with ipc-1.mdc ... ipc-N.mdc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import (
    Codec,
    DataRoot,
    Dataset,
    Device,
    Download,
    Pixels,
    Profile,
    Seed,
    SoftLabels,
    check_writable_dir,
    check_writable_file,
    log,
    require_data,
    resolve_profile,
)

BASELINES = ("A", "B", "C")


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
    method: Annotated[str | None, typer.Option(help="Base method: gm or dm (default: the profile's).")] = None,
    soft_labels: SoftLabels = "teacher",
    views: Annotated[int | None, typer.Option(min=1, help="Soft-label views per image (default: "
                                              "profile's).")] = None,
    teacher_path: Annotated[Path | None, typer.Option("--teacher", exists=True, dir_okay=False,
                                                      help="A teacher.safetensors to use instead of the "
                                                      "cached/trained one.")] = None,
    codec: Codec = "topk-u8",
    pixels: Pixels = "float16",
    embed_trainer: Annotated[bool, typer.Option("--embed-trainer/--no-embed-trainer",
                                                help="Embed the ONNX device trainer in the file(s).")] = True,
    profile: Profile = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bfloat16 autocast on CUDA.")] = True,
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
    from condenser.cli.build import check_build

    name = name.upper()
    cfg = BuildConfig(
        dataset=dataset, ipc=ipc, profile=resolve_profile(profile), method=method, multisize=False,
        soft_labels=soft_labels, views=views, teacher_path=str(teacher_path) if teacher_path else None, codec=codec,
        pixels=pixels, embed_trainer=embed_trainer, seed=seed, device=device, amp=amp,
        data_root=str(data_root) if data_root else None,
    )
    stem = f"{dataset.replace(':', '_').replace('/', '_')}-ipc{ipc}-{name}"
    target = out or Path(stem if name == "A" else f"{stem}.mdc")
    if name == "A":
        check_writable_dir(target)
    else:
        check_writable_file(target)
    check_build(cfg)
    require_data(dataset, data_root, download, ("train", "test") if soft_labels == "teacher" else ("train",))
    files = build_baseline(name, cfg, target, log=log, workers=workers or auto_workers(device))
    where = target if name == "A" else files.paths[ipc]
    typer.echo(f"Baseline {name}: sizes 1..{ipc} -> {where}")
