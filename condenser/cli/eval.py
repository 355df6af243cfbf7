"""`condenser eval FILE`: the pinned protocol on every requested prefix, hard and soft labels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from condenser.cli.app import app
from condenser.cli.options import DataRoot, Device, Profile, resolve_profile


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
    labels: Annotated[str, typer.Option(help="hard, soft or hard,soft.")] = "hard,soft",
    seeds: Annotated[int | None, typer.Option(help="Seeds per size (default: the profile's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the profile's training epochs.")] = None,
    max_test: Annotated[int | None, typer.Option(help="Score on a fixed class-balanced head of the test split of this "
                                                 "many images (the bench's reduced budget; default: all).",
                                                 min=1)] = None,
    loss: Annotated[str | None, typer.Option(help="Soft-label student loss: soft_ce (default) or mse_gt "
                                             "(G-VBSM: logit MSE + gamma*CE).")] = None,
    gamma: Annotated[float | None, typer.Option(help="gamma of the mse_gt loss (default 0.1).")] = None,
    write: Annotated[bool, typer.Option("--write/--no-write",
                                        help="Store the table in the file's header.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="JSON path (default: FILE.results.json).")] = None,
    profile: Profile = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Test data (fashion-mnist, cifar10, "
                                                "imagefolder:PATH ...; default: the file's dataset if it is a "
                                                "registered name: a file never chooses a path).")] = None,
    data_root: DataRoot = None,
    device: Device = "auto",
) -> None:
    """Train the evaluation network on each prefix (last-epoch accuracy, mean ± std over seeds)."""
    import formats
    from condenser.data.trusted import header_dataset
    from condenser.evaluate.sizes import evaluate_file, parse_sizes, write_results
    from condenser.profiles import get_profile
    from condenser.progress import progress_bar

    prof = get_profile(resolve_profile(profile))
    budget = prof.evaluate if epochs is None else replace(prof.evaluate, epochs=epochs)
    if max_test is not None:
        budget = replace(budget, max_test=max_test)
    if loss is not None or gamma is not None:
        budget = replace(budget, loss=loss or budget.loss, loss_gamma=budget.loss_gamma if gamma is None else gamma)
    with formats.open_mdc(file) as reader:
        wanted = parse_sizes(sizes, reader.blocks_present)
        if dataset is None:  # refused before any work if the header names a path
            dataset = header_dataset(reader.header.get("dataset"), f"the header of {file}")
    modes = [m.strip() for m in labels.split(",") if m.strip()]
    seed_list = list(range(seeds if seeds is not None else budget.seeds))
    console = Console()
    with progress_bar() as progress:
        task = progress.add_task(f"eval {file.name}", total=len(wanted) * len(modes))

        def done(k, mode, result):
            progress.advance(task)
            progress.console.print(f"IPC {k:>3} {mode:>4}: {result}")

        results = evaluate_file(file, wanted, budget, modes, seed_list, device, str(data_root) if data_root else None,
                                on_result=done, dataset=dataset)
    results["profile"] = prof.name
    console.print(results_table(results, f"{file.name} — {prof.name} profile, {len(seed_list)} seeds"))
    if write:
        path = write_results(file, results, json_out)
        console.print(f"table written into {file} and {path}")
    elif json_out:
        json_out.write_text(json.dumps(results, indent=2))
