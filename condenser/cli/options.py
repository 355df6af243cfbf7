"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Dataset = Annotated[str, typer.Option("--dataset", "-d", help="Dataset name (fashion-mnist, mnist, cifar10, "
                                      "cifar100, svhn, tiny-imagenet, imagefolder:PATH).")]
DataRoot = Annotated[Path | None, typer.Option("--data-root", help="Directory holding the dataset files "
                                               "(default: $MULTISIZE_DATA, cache, system paths).")]
Profile = Annotated[str | None, typer.Option("--profile", "-p", help="Budget profile: smoke, cpu or paper "
                                             "(default: paper with a GPU, cpu without).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]


def resolve_profile(name: str | None) -> str:
    from condenser.profiles import default_profile_name

    return name or default_profile_name()
