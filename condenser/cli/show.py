"""`condenser show FILE --out grid.png`: look at what was condensed (classes as rows, IPC order as columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import app


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A .mdc file.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("grid.png"),
    ipc: Annotated[int | None, typer.Option(help="Show the IPC-k prefix (default: every stored block).")] = None,
    scale: Annotated[int, typer.Option(help="Integer upscaling of every image (nearest).")] = 1,
    pad: Annotated[int, typer.Option(help="Pixels between images.")] = 2,
) -> None:
    """Write the synthetic images as a grid, denormalised with the file's mean/std."""
    from condenser.bench.grid import show_file

    grid = show_file(file, out, ipc=ipc, pad=pad, scale=scale)
    typer.echo(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]} pixels)")
