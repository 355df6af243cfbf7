"""`condenser teacher`: train (or resume, or reuse) the cached teacher network; `condenser models`: the choices."""

from __future__ import annotations

from typing import Annotated

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import DataRoot, Dataset, Device, Download, Profile, Seed, log, require_data, resolve_profile


def _arch(name: str) -> str:
    from condenser.models import REGISTRY

    if name not in REGISTRY:
        raise typer.BadParameter(f"unknown model {name!r}; use one of {', '.join(REGISTRY.names())} "
                                 "(`condenser models` describes them)")
    return name


@app.command()
def teacher(
    dataset: Dataset = "fashion-mnist",
    arch: Annotated[str, typer.Option("--arch", "-a", callback=_arch,
                                      help="Model architecture (`condenser models` lists them).")] = "convnet",
    profile: Profile = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's epoch count.")] = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a teacher on the full real training set; checkpoints every epoch and resumes after an interrupt."""
    from condenser.teacher import TeacherConfig, teacher_paths, train_teacher

    overrides = {"epochs": epochs} if epochs is not None else {}
    config = TeacherConfig.from_profile(dataset, arch, resolve_profile(profile), seed=seed,
                                        data_root=str(data_root) if data_root else None, **overrides)
    require_data(dataset, data_root, download, ("train", "test"))
    result = train_teacher(config, data_root=data_root, device=device, log=log)
    weights, _, _ = teacher_paths(config)
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
