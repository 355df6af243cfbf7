"""`condenser eval FILE`: the pinned protocol on every requested prefix, hard and soft labels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import (
    DataRoot,
    Device,
    Download,
    Profile,
    check_writable_file,
    log,
    reading,
    require_data,
    resolve_profile,
)
from condenser.errors import CondenserError

if TYPE_CHECKING:
    from formats import MDCReader

LABEL_MODES = ("hard", "soft")


def sidecar_path(file: Path) -> Path:
    """FILE.eval.json: where eval's table goes unless --json names another path."""
    return file.with_name(file.name + ".eval.json")


def _labels(text: str) -> str:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in LABEL_MODES for m in modes):
        raise typer.BadParameter(f"{text!r}: use hard, soft or hard,soft")
    return text


def _loss(name: str | None) -> str | None:
    from condenser.evaluate.losses import STUDENT_LOSSES

    if name is not None and name not in STUDENT_LOSSES:
        raise typer.BadParameter(f"unknown student loss {name!r}; use one of {', '.join(STUDENT_LOSSES.names())}")
    return name


def check_sizes(reader: MDCReader, sizes: str, modes: list[str]) -> list[int]:
    """The sizes to evaluate, after checking them and the label modes against the file's header."""
    from condenser.evaluate.sizes import parse_sizes

    present = reader.blocks_present
    try:
        wanted = parse_sizes(sizes, present)
    except CondenserError as exc:
        raise CondenserError(f"--sizes {sizes}: {exc}; {reader.path} holds sizes 1-{present} (use --sizes "
                             f"1-{present} or all)") from None
    if modes == ["soft"] and reader.spec.views is None:  # with hard,soft a hard-label file skips soft
        raise CondenserError(f"{reader.path} has no soft-label views; use --labels hard")
    return wanted


def results_table(results: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("IPC", justify="right")
    modes = [m for m in ("hard", "soft") if any(m in row for row in results["sizes"].values())]
    for mode in modes:
        table.add_column(f"{mode} labels (%)", justify="right")
    for k, row in results["sizes"].items():
        cells = [f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}" if m in row else "-" for m in modes]
        table.add_row(str(k), *cells)
    return table


@app.command("eval")
def eval_file(
    file: Annotated[Path, typer.Argument(help="A .mdc file.", exists=True, dir_okay=False)],
    sizes: Annotated[str, typer.Option(help="Prefix sizes: 1-10, 1,2,5,10 or all.")] = "all",
    labels: Annotated[str, typer.Option(callback=_labels, help="hard, soft or hard,soft.")] = "hard,soft",
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per size (default: the profile's).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's training epochs.")] = None,
    max_test: Annotated[int | None, typer.Option(help="Score on a fixed class-balanced head of the test split of this "
                                                 "many images (the bench's reduced budget; default: all).",
                                                 min=1)] = None,
    loss: Annotated[str | None, typer.Option(callback=_loss, help="Soft-label student loss: soft_ce (default) "
                                             "or mse_gt (G-VBSM: logit MSE + gamma*CE).")] = None,
    gamma: Annotated[float | None, typer.Option(help="gamma of the mse_gt loss (default 0.1).")] = None,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Also store the table in the .mdc's header "
                                        "(rewrites FILE atomically; default: FILE is only read).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="JSON path (default: FILE.eval.json).")] = None,
    profile: Profile = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Test data (fashion-mnist, cifar10, "
                                                "imagefolder:PATH ...; default: the file's dataset if it is a "
                                                "registered name: a file never chooses a path).")] = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train the evaluation network on each prefix (last-epoch accuracy, mean ± std over seeds)."""
    import formats
    from condenser.data.trusted import header_dataset
    from condenser.evaluate.sizes import evaluate_file, write_results
    from condenser.profiles import get_profile
    from condenser.progress import progress_bar
    from formats.atomic import atomic_write_bytes

    prof = get_profile(resolve_profile(profile))
    budget = prof.evaluate if epochs is None else replace(prof.evaluate, epochs=epochs)
    if max_test is not None:
        budget = replace(budget, max_test=max_test)
    if loss is not None or gamma is not None:
        budget = replace(budget, loss=loss or budget.loss, loss_gamma=budget.loss_gamma if gamma is None else gamma)
    modes = [m.strip() for m in labels.split(",") if m.strip()]
    with reading(file), formats.open_mdc(file) as reader:
        wanted = check_sizes(reader, sizes, modes)
        if dataset is None:  # refused before any work if the header names a path
            dataset = header_dataset(reader.header.get("dataset"), f"the header of {file}")
    json_path = check_writable_file(json_out or sidecar_path(file), "--json")
    if write:
        check_writable_file(file, "--write: FILE")
    require_data(dataset, data_root, download, ("test",))
    seed_list = list(range(seeds if seeds is not None else budget.seeds))
    console = Console()
    with progress_bar() as progress:
        task = progress.add_task(f"eval {file.name}", total=len(wanted) * len(modes))

        def done(k, mode, result):
            progress.advance(task)
            log(f"IPC {k:>3} {mode:>4}: {result}")

        results = evaluate_file(file, wanted, budget, modes, seed_list, device, str(data_root) if data_root else None,
                                on_result=done, dataset=dataset)
    results["profile"] = prof.name
    console.print(results_table(results, f"{file.name} — {prof.name} profile, {len(seed_list)} seeds"))
    if write:
        write_results(file, results, json_path)
        typer.echo(f"table written into {file} and {json_path}")
    else:
        atomic_write_bytes(json_path, json.dumps(results, indent=2).encode())
        typer.echo(f"table written to {json_path} ({file} unchanged; --write also stores it in the file)")
