"""`condenser baseline A|B|C`: the multisize paper's baselines as files (mdc.md §1.4).

B and C are nested: one .mdc whose IPC-n prefix is size n. A is one condensation per size, not nested:
a directory with ipc-1.mdc ... ipc-N.mdc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import app
from condenser.cli.options import DataRoot, Dataset, Device, Profile, Seed, resolve_profile


@app.command()
def baseline(
    name: Annotated[str, typer.Argument(help="A (a condensation per size), B (N IPC-1 runs) or C (one run, "
                                        "prefixes taken).")],
    ipc: Annotated[int, typer.Option("--ipc", help="Largest size N (images per class).")] = 10,
    dataset: Dataset = "fashion-mnist",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .mdc (B, C) or directory (A); default "
                                             "DATASET-ipcN-NAME[.mdc].")] = None,
    method: Annotated[str | None, typer.Option(help="Base method: gm or dm (default: the profile's).")] = None,
    soft_labels: Annotated[str, typer.Option(help="teacher (soft-label views) or none.")] = "teacher",
    views: Annotated[int | None, typer.Option(help="Soft-label views per image (default: profile's).")] = None,
    teacher_path: Annotated[Path | None, typer.Option("--teacher", help="A teacher.safetensors to use "
                                                      "instead of the cached/trained one.")] = None,
    codec: Annotated[str, typer.Option(help="Soft-label codec: dense-f16, topk-f16, topk-u8.")] = "topk-u8",
    pixels: Annotated[str, typer.Option(help="Pixel encoding: uint8, float16, float32.")] = "float16",
    embed_trainer: Annotated[bool, typer.Option("--embed-trainer/--no-embed-trainer",
                                                help="Embed the ONNX device trainer in the file(s).")] = True,
    profile: Profile = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bfloat16 autocast on CUDA.")] = True,
    workers: Annotated[int | None, typer.Option(help="Processes for the N independent runs of A and B on CPU "
                                                "(default: one per CPU core, at most 8).", min=1)] = None,
    seed: Seed = 0,
) -> None:
    """Condense Baseline A, B or C (resumable runs) and pack it like `condenser build`."""
    from condenser.bench.sets import build_baseline
    from condenser.bench.workers import auto_workers
    from condenser.build import BuildConfig

    name = name.upper()
    cfg = BuildConfig(
        dataset=dataset, ipc=ipc, profile=resolve_profile(profile), method=method, multisize=False,
        soft_labels=soft_labels, views=views, teacher_path=str(teacher_path) if teacher_path else None, codec=codec,
        pixels=pixels, embed_trainer=embed_trainer, seed=seed, device=device, amp=amp,
        data_root=str(data_root) if data_root else None,
    )
    stem = f"{dataset.replace(':', '_').replace('/', '_')}-ipc{ipc}-{name}"
    target = out or Path(stem if name == "A" else f"{stem}.mdc")
    files = build_baseline(name, cfg, target, log=typer.echo, workers=workers or auto_workers(device))
    where = target if name == "A" else files.paths[ipc]
    typer.echo(f"Baseline {name}: sizes 1..{ipc} -> {where}")
