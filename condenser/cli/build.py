"""`condenser build`: condense a dataset into one nested .mdc file (teacher, condense, relabel, pack).

Launched by torchrun (`torchrun --nproc_per_node N -m condenser build ...`), the N processes join one
process group and shard the work (docs/distributed.md); rank 0 prints and writes the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    check_writable_file,
    log,
    require_data,
    resolve_profile,
)

if TYPE_CHECKING:
    from condenser.build import BuildConfig

def _freeze(value: str) -> str:
    from condenser.multisize import FREEZE_RULES

    if value not in FREEZE_RULES:
        raise typer.BadParameter(f"unknown freeze rule {value!r}; use one of {', '.join(FREEZE_RULES)}")
    return value


def parse_settings(items: list[str]) -> dict:
    """KEY=VALUE pairs; VALUE is JSON when it parses (numbers, lists, true), else a string."""
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def check_build(cfg: BuildConfig) -> None:
    """What the pipeline would reject after the teacher trained, rejected before it starts."""
    from condenser.methods import METHODS
    from condenser.profiles import get_profile
    from condenser.stages import STAGES
    from condenser.statmatch.settings import settings_for

    profile = get_profile(cfg.profile)
    method = cfg.method or profile.condense.method
    STAGES.get(method)  # unknown names list the known ones
    if method in METHODS:
        cfg.condense_config(profile)  # CondenseConfig checks sizes, loops and the method
    else:
        settings_for(method, **cfg.method_settings)


@app.command()
def build(
    ipc: Annotated[int, typer.Option("--ipc", min=1, help="Images per class of the full (largest) set.")] = 10,
    dataset: Dataset = "fashion-mnist",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .mdc (default: DATASET-ipcN.mdc).")] = None,
    method: Annotated[str | None, typer.Option(help="Base method: gm, dm, sre2l, gvbsm or teddy "
                                               "(default: the profile's).")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="A decoupled method's setting as KEY=VALUE "
                                                      "(JSON value), e.g. --set iterations=200 --set "
                                                      "schedule=joint. Repeatable.")] = None,
    multisize: Annotated[bool, typer.Option("--multisize/--no-multisize",
                                            help="Add the MDC subset loss (off = Baseline C).")] = True,
    freeze: Annotated[str, typer.Option(callback=_freeze, help="MLS freezing rule: paper (Eq. 10), code, "
                                        "none.")] = "paper",
    class_wise: Annotated[bool, typer.Option("--class-wise", help="Select the MLS per class.")] = False,
    soft_labels: SoftLabels = "teacher",
    views: Annotated[int | None, typer.Option(min=1, help="Soft-label views per image (default: "
                                              "profile's).")] = None,
    teacher_path: Annotated[Path | None, typer.Option("--teacher", exists=True, dir_okay=False,
                                                      help="A teacher.safetensors to use instead of the "
                                                      "cached/trained one.")] = None,
    codec: Codec = "topk-u8",
    pixels: Pixels = "float16",
    embed_trainer: Annotated[bool, typer.Option("--embed-trainer/--no-embed-trainer",
                                                help="Embed the ONNX device trainer in the file.")] = True,
    profile: Profile = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bfloat16 autocast on CUDA.")] = True,
    seed: Seed = 0,
    condense: Annotated[list[str] | None, typer.Option("--condense", help="Override a condense-loop setting "
                                                      "(a CondenseConfig field) as KEY=VALUE, e.g. --condense "
                                                      "outer_loops=2 --condense width=8. Repeatable.")] = None,
    dist_timeout: Annotated[float | None, typer.Option(
        "--dist-timeout", help="Under torchrun: seconds a collective waits for the other ranks before the job "
                               "fails (default $MULTISIZE_DIST_TIMEOUT or 1800).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Teacher (cached) -> multisize condensation (resumable) -> soft-label views -> one .mdc, atomically."""
    from dataclasses import fields

    from condenser.build import BuildConfig
    from condenser.build import build as run_build
    from condenser.condense import CondenseConfig
    from condenser.distributed import launched_world_size, session

    overrides = parse_settings(condense or [])
    known = {f.name for f in fields(CondenseConfig)}
    if unknown := sorted(set(overrides) - known):
        raise typer.BadParameter(f"--condense: unknown settings {unknown}; known: {sorted(known)}")

    cfg = BuildConfig(
        dataset=dataset, ipc=ipc, profile=resolve_profile(profile), method=method, multisize=multisize,
        freeze=freeze, class_wise=class_wise, soft_labels=soft_labels, views=views,
        teacher_path=str(teacher_path) if teacher_path else None, codec=codec, pixels=pixels,
        embed_trainer=embed_trainer, seed=seed, device=device, amp=amp,
        data_root=str(data_root) if data_root else None, method_settings=parse_settings(settings or []),
        condense_overrides=overrides,
    )
    target = check_writable_file(out or Path(f"{dataset.replace(':', '_').replace('/', '_')}-ipc{ipc}.mdc"))
    check_build(cfg)
    trains_teacher = soft_labels == "teacher" and teacher_path is None
    require_data(dataset, data_root, download, ("train", "test") if trains_teacher else ("train",))

    def run() -> None:
        with session(device, dist_timeout) as dist:
            result = run_build(cfg, target, log=log if dist.is_main else (lambda _: None))
            if dist.is_main:
                times = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
                shards = f", {dist.world_size} processes" if dist.sharded else ""
                typer.echo(f"{target}: {ipc} images/class x {result.result.num_classes} classes ({times}{shards})")

    if launched_world_size() > 1:  # torchrun's summary then names the failing rank's exception
        from torch.distributed.elastic.multiprocessing.errors import record

        run = record(run)
    run()
