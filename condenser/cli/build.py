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
    check_writable_file,
    flag_aliases,
    log,
    require_data,
    resolve_settings,
)

if TYPE_CHECKING:
    from condenser.build import BuildConfig


def check_build(cfg: BuildConfig) -> None:
    """What the pipeline would reject after the teacher trained, rejected before it starts (the tree itself was
    checked when it was resolved)."""
    from condenser.methods import METHODS

    if cfg.settings.method.name in METHODS:
        cfg.condense_config()  # CondenseConfig checks sizes and loops


# The flags of `build` (and `baseline`) that stand for a key of the settings tree (docs/config.md).
BUILD_FLAGS = {"method": ("--method", "method.name"), "multisize": ("--multisize", "condense.multisize.enabled"),
               "freeze": ("--freeze", "condense.multisize.freeze"),
               "class_wise": ("--class-wise", "condense.multisize.class_wise"), "views": ("--views", "relabel.views"),
               "codec": ("--codec", "pack.codec"), "pixels": ("--pixels", "pack.pixels"),
               "embed_trainer": ("--embed-trainer", "pack.embed_trainer"),
               "precision": ("--precision", "condense.precision")}


@app.command()
def build(
    ipc: Annotated[int, typer.Option("--ipc", min=1, help="Images per class of the full (largest) set.")] = 10,
    dataset: Dataset = "fashion-mnist",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .mdc (default: DATASET-ipcN.mdc).")] = None,
    method: Annotated[str | None, typer.Option(help="Base method: gm, dm, sre2l, gvbsm or teddy (sets "
                                               "method.name).")] = None,
    multisize: Annotated[bool | None, typer.Option("--multisize/--no-multisize", help="Add the MDC subset loss "
                                                   "(off = Baseline C; sets condense.multisize.enabled).")] = None,
    freeze: Annotated[str | None, typer.Option(help="MLS freezing rule: paper (Eq. 10), code, none (sets "
                                               "condense.multisize.freeze).")] = None,
    class_wise: Annotated[bool | None, typer.Option("--class-wise/--shared-mls", help="Select the MLS per class "
                                                    "(sets condense.multisize.class_wise).")] = None,
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
    seed: Seed = 0,
    dist_timeout: Annotated[float | None, typer.Option(
        "--dist-timeout", help="Under torchrun: seconds a collective waits for the other ranks before the job "
                               "fails (default $MULTISIZE_DIST_TIMEOUT or 1800).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Teacher (cached) -> multisize condensation (resumable) -> soft-label views -> one .mdc, atomically."""
    from condenser.build import BuildConfig
    from condenser.build import build as run_build
    from condenser.distributed import launched_world_size, session

    aliases = flag_aliases(BUILD_FLAGS, method=method, multisize=multisize, freeze=freeze, class_wise=class_wise,
                           views=views, codec=codec, pixels=pixels, embed_trainer=embed_trainer, precision=precision)
    tree = resolve_settings(profile, config, settings, aliases)
    cfg = BuildConfig(dataset=dataset, ipc=ipc, settings=tree, soft_labels=soft_labels,
                      teacher_path=str(teacher_path) if teacher_path else None, seed=seed, device=device,
                      data_root=str(data_root) if data_root else None)
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
