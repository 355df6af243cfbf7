"""`condenser show FILE --out grid.png`: look at what was condensed (classes as rows, IPC order as columns).

Multi-formation files show their stored images; `--decoded` the training images they decode to.

Needs numpy, Pillow and formats only (condenser/grid.py): no torch import, so it answers in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import Debug, app
from condenser.cli.options import check_writable_file, reading


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A .mdc file.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("grid.png"),
    ipc: Annotated[int | None, typer.Option(min=1, help="Show the IPC-k prefix (default: every stored "
                                            "block).")] = None,
    scale: Annotated[int, typer.Option(min=1, help="Integer upscaling of every image (nearest).")] = 1,
    pad: Annotated[int, typer.Option(min=0, help="Pixels between images.")] = 2,
    labels: Annotated[bool, typer.Option("--labels/--no-labels", help="Class names left of the rows, IPC "
                                         "indices above the columns.")] = True,
    decoded: Annotated[bool, typer.Option("--decoded/--stored", help="Multi-formation files: draw the training "
                                          "images each stored image decodes to (one column per patch) instead "
                                          "of the stored images.")] = False,
    debug: Debug = False,
) -> None:
    """Write the synthetic images as a grid, denormalised with the file's mean/std."""
    from condenser.grid import show_file

    check_writable_file(out)
    with reading(file):
        grid = show_file(file, out, ipc=ipc, pad=pad, scale=scale, labels=labels, decoded=decoded)
    typer.echo(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]} pixels)")
