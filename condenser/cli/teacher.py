"""`condenser teacher`: train (or resume, or reuse) the cached teacher network; `condenser models`: the choices."""

from __future__ import annotations

from typing import Annotated

import typer

from condenser.cli import options
from condenser.cli.app import Debug, Quiet, app

TEACHER_FLAGS = {"arch": ("--arch", "teacher.arch"), "epochs": ("--epochs", "teacher.epochs")}


@app.command()
def teacher(
    dataset: options.Dataset = "fashion-mnist",
    arch: Annotated[str | None, typer.Option("--arch", "-a", help="Model architecture (`condenser models` lists "
                                             "them; sets teacher.arch).")] = None,
    profile: options.Profile = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (sets teacher.epochs).")] = None,
    config: options.ConfigFiles = None,
    settings: options.SetItems = None,
    data_root: options.DataRoot = None,
    download: options.Download = False,
    device: options.Device = "auto",
    seed: options.Seed = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a teacher on the full real training set; checkpoints every epoch and resumes after an interrupt."""
    from condenser.teacher import TeacherConfig, teacher_paths, train_teacher

    aliases = options.flag_aliases(TEACHER_FLAGS, arch=arch, epochs=epochs)
    tree = options.resolve_settings(profile, config, settings, aliases)
    root = str(data_root) if data_root else None
    teacher_config = TeacherConfig.from_profile(dataset, None, tree, seed=seed, data_root=root)
    options.require_data(dataset, data_root, download, ("train", "test"))
    result = train_teacher(teacher_config, data_root=data_root, device=device, log=options.log)
    weights, _, _ = teacher_paths(teacher_config)
    typer.echo(f"test accuracy: {result.test_accuracy:.2f}%  ({weights})")


@app.command()
def models() -> None:
    """List the registered model architectures (the values of --arch)."""
    import inspect

    from condenser.models import REGISTRY

    for name in REGISTRY.names():
        factory = REGISTRY.get(name)
        doc = (inspect.getdoc(factory) or f"from {factory.__module__}").splitlines()[0]
        typer.echo(f"{name:<20} {doc}")
