"""`condenser teacher`: train (or resume, or reuse) the cached teacher network."""

from __future__ import annotations

from typing import Annotated

import typer

from condenser.cli.app import app
from condenser.cli.options import DataRoot, Dataset, Device, Profile, Seed, resolve_profile


@app.command()
def teacher(
    dataset: Dataset = "fashion-mnist",
    arch: Annotated[str, typer.Option("--arch", "-a", help="Model architecture (see `condenser models`).")] = "convnet",
    profile: Profile = None,
    epochs: Annotated[int | None, typer.Option(help="Override the profile's epoch count.")] = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Train a teacher on the full real training set; checkpoints every epoch and resumes after an interrupt."""
    from condenser.teacher import TeacherConfig, teacher_paths, train_teacher

    overrides = {"epochs": epochs} if epochs is not None else {}
    config = TeacherConfig.from_profile(dataset, arch, resolve_profile(profile), seed=seed, **overrides)
    result = train_teacher(config, data_root=data_root, device=device)
    weights, _, _ = teacher_paths(config)
    typer.echo(f"test accuracy: {result.test_accuracy:.2f}%  ({weights})")
