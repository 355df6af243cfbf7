"""`condenser eval FILE`: every requested prefix next to the random-real controls with the same labels (random; for a
multi-formation file also random-formed, condenser/evaluate/controls.py), all trained on decoded images.

`--protocol quick` (the default) trains on a few sizes under the profile's quick budget, a first honest
number in minutes; `--protocol pinned` is the profile's full evaluation (condenser/profiles.py holds both).
The file and its control train side by side in the bench's worker processes (condenser/evaluate/compare.py).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import (
    ConfigFiles,
    DataRoot,
    Device,
    Download,
    Profile,
    SetItems,
    check_writable_file,
    log,
    reading,
    require_data,
    resolve_settings,
)
from condenser.errors import CondenserError

if TYPE_CHECKING:
    from condenser.bench.cells import Cell
    from condenser.config.tree import Config as ConfigT
    from condenser.config.tree import EvalBudget
    from condenser.data import ImageDataset
    from condenser.evaluate.controls import ControlPlan as ControlPlanT
    from formats import MDCReader

LABEL_MODES = ("hard", "soft")
CONTROL_KEYS = {"random": "control", "random-formed": "control_formed"}  # control -> its key in FILE.eval.json
PROTOCOLS = ("quick", "pinned")
TABLE_WIDTH = 78  # wide enough for the budget caption in two lines, narrow enough for an 80-column log


def sidecar_path(file: Path) -> Path:
    """FILE.eval.json: where eval's table goes unless --json names another path."""
    return file.with_name(file.name + ".eval.json")


def labels_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _labels(text: str | None) -> str | None:
    if text is not None and (not labels_list(text) or any(m not in LABEL_MODES for m in labels_list(text))):
        raise typer.BadParameter(f"{text!r}: use hard, soft or hard,soft")
    return text


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


def results_table(results: dict, title: str, caption: str) -> Table:
    """IPC rows; per label mode the file's accuracy, then each random-real control's and its difference."""
    table = Table(title=title, caption=caption, caption_justify="left", min_width=TABLE_WIDTH)
    table.add_column("IPC", justify="right")
    controls = [(name, (results.get(key) or {}).get("sizes", {})) for name, key in CONTROL_KEYS.items()]
    controls = [(name, sizes) for name, sizes in controls if sizes]
    modes = [m for m in LABEL_MODES if any(m in row for row in results["sizes"].values())]
    for mode in modes:
        table.add_column(f"file {mode} %", justify="right")
        for name, _ in controls:
            table.add_column(f"{name} {mode} %", justify="right")
            table.add_column("Δ", justify="right")
    for k, row in results["sizes"].items():
        cells = []
        for mode in modes:
            cells.append(_mean_std(row.get(mode)))
            for _, sizes in controls:
                other = sizes.get(k, {}).get(mode)
                cells += [_mean_std(other), _difference(row.get(mode), other)]
        table.add_row(str(k), *cells)
    return table


def _mean_std(summary: dict | None) -> str:
    return "-" if summary is None else f"{summary['mean']:.2f} ± {summary['std']:.2f}"


def _difference(ours: dict | None, control: dict | None) -> str:
    return "-" if ours is None or control is None else f"{ours['mean'] - control['mean']:+.1f}"


def _protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise typer.BadParameter(f"unknown protocol {name!r}; use {' or '.join(PROTOCOLS)}")
    return name


EVAL_FLAGS = {"seeds": ("--seeds", "seeds"), "epochs": ("--epochs", "epochs"), "max_test": ("--max-test", "max_test"),
              "loss": ("--loss", "loss"), "gamma": ("--gamma", "loss_gamma"),
              "temperature": ("--temperature", "loss_temperature")}


# The student-loss options of `eval` (module level, so the command's signature stays readable).
Loss = Annotated[str | None, typer.Option(help="Soft-label student loss: soft_ce (default), mse_gt (G-VBSM: logit MSE "
                                          "+ gamma*CE) or kl (SRe2L: tau^2 * KL at temperature tau); sets the "
                                          "protocol section's loss).")]
Gamma = Annotated[float | None, typer.Option(help="gamma of the mse_gt loss (default 0.1; sets the protocol section's "
                                             "loss_gamma).")]
Temperature = Annotated[float | None, typer.Option(help="tau of the kl loss (default 4; sets the protocol section's "
                                                   "loss_temperature).")]


def eval_aliases(protocol: str, **values: object) -> dict[str, tuple[str, object]]:
    """The flags of `eval` as keys of the section the protocol trains with: quick.evaluate or evaluate."""
    section = "quick.evaluate" if protocol == "quick" else "evaluate"
    return {f"{section}.{key}": (flag, values[name]) for name, (flag, key) in EVAL_FLAGS.items()}


def eval_budget(settings: ConfigT, protocol: str) -> EvalBudget:
    """The protocol's budget: the quick protocol's (quick.evaluate, else evaluate) or the pinned one (evaluate)."""
    return settings.quick_budget if protocol == "quick" else settings.evaluate


def default_sizes(prof: ConfigT, protocol: str, present: int) -> str:
    """quick: the profile's quick sizes that the file holds, plus its largest; pinned: every size."""
    if protocol == "pinned":
        return "all"
    return ",".join(str(k) for k in sorted({k for k in prof.quick.sizes if k <= present} | {present}))


def default_modes(prof: ConfigT, protocol: str, has_views: bool) -> list[str]:
    """quick: the profile's quick label modes (hard where the file has no views); pinned: hard and soft."""
    modes = list(prof.quick.labels) if protocol == "quick" else list(LABEL_MODES)
    usable = [m for m in modes if m == "hard" or has_views]
    return usable or ["hard"]


def budget_line(protocol: str, prof: ConfigT, budget: EvalBudget, modes: list[str], scored: int,
                num_test: int) -> str:
    """The budget, stated in the table: epochs, test images, seeds, label modes."""
    test = (f"a seeded stratified sample of {scored:,} of {num_test:,} test images" if scored < num_test
            else f"all {num_test:,} test images")
    return (f"{protocol} protocol ({prof.name} profile): {budget.epochs} epochs, {test}, {budget.seeds} seeds, "
            f"{' and '.join(modes)} labels, last-epoch accuracy")


def plan_control(reader: MDCReader, file: Path, wanted: bool | None, dataset: str, data_root: Path | None,
                 device: str, teacher: Path | None) -> tuple[ControlPlanT | None, str | None]:
    """(the control's plan, None) or, where the file cannot have one and --control was not asked, (None, why)."""
    from condenser.evaluate.controls import NoControl
    from condenser.evaluate.controls import plan_control as plan

    if wanted is False:
        return None, "--no-control"
    try:
        return plan(file, reader, dataset, str(data_root) if data_root else None, device, teacher), None
    except NoControl as exc:
        if wanted:
            raise CondenserError(f"--control: {exc}; evaluate without it") from None
        return None, str(exc)


def table_title(file: Path, plan: ControlPlanT | None) -> str:
    if plan is None:
        return file.name
    if plan.factor > 1:
        return (f"{file.name} vs random real and random real formed {plan.factor}x{plan.factor} "
                f"({'the same teacher, views and codec' if plan.soft else 'hard labels'})")
    return f"{file.name} vs random real ({'the same teacher, views and codec' if plan.soft else 'hard labels'})"


def scored_images(test: ImageDataset, budget: EvalBudget) -> int:
    """How many test images a training is scored on: the split, or its stratified sample (protocol.py)."""
    from condenser.evaluate.protocol import stratified_indices

    return len(test) if budget.max_test is None else int(stratified_indices(test, budget.max_test).numel())


def run_cells(file: Path, paths: dict[str, Path], sizes: list[int], modes: list[str], budget: EvalBudget,
              test: ImageDataset, dataset: str, data_root: str | None, device: str, workers: int | None) -> dict:
    """Every cell of the file (and its control) under a progress bar, with a line per finished (set, size, mode)."""
    from condenser.evaluate.compare import evaluate_sets
    from condenser.progress import progress_bar

    accuracies: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    name = f"eval {file.name}" + {1: "", 2: " and its control"}.get(len(paths), " and its controls")
    with progress_bar() as progress:
        task = {}

        def planned(total: float) -> None:
            task["id"] = progress.add_task(name, total=total)

        def finished(cell: Cell, record: dict, cost: float) -> None:
            progress.advance(task["id"], cost)
            group = accuracies[(cell.method, cell.size, cell.labels)]
            group.append(record["accuracy"])
            if len(group) == budget.seeds:
                log(f"{cell.method:>13} IPC {cell.size:>3} {cell.labels:>4}: {statistics.fmean(group):.2f} ± "
                    f"{statistics.pstdev(group):.2f} ({len(group)} seeds)")

        return evaluate_sets(paths, sizes, modes, budget, test, dataset, data_root, device, workers,
                             on_plan=planned, on_cell=finished)


def eval_results(file: Path, paths: dict, tables: dict, plan: ControlPlanT | None, no_control: str | None,
                 protocol: str, prof: ConfigT, budget: EvalBudget, modes: list[str], test: ImageDataset,
                 dataset: str) -> dict:
    """The sidecar record: the file's table, its controls' (random; random-formed for a formation factor > 1),
    the budget that produced them and the whole tree."""
    scored = scored_images(test, budget)
    caption = budget_line(protocol, prof, budget, modes, scored, len(test))
    controls = {key: control_record(name, paths, tables, plan) for name, key in CONTROL_KEYS.items()}
    return {"sizes": tables["file"], "protocol": asdict(budget), "protocol_name": protocol, "budget": caption,
            "profile": prof.name, "dataset": dataset, "arch": "convnet", "test_images": scored,
            **controls, "control_note": no_control, "settings": prof.as_dict()}


def control_record(name: str, paths: dict, tables: dict, plan: ControlPlanT | None) -> dict | None:
    """One control's table and file; None where the file has no such control."""
    if plan is None or name not in paths:
        return None
    return {"sizes": tables.get(name, {}), "file": str(paths[name]), "method": name,
            "labels": "the file's teacher, views and codec"}


def store_results(file: Path, results: dict, json_path: Path, write: bool) -> None:
    """FILE.eval.json always; the file's header too only with --write."""
    from condenser.evaluate.sizes import write_results
    from formats.atomic import atomic_write_bytes

    if write:
        write_results(file, results, json_path)
        typer.echo(f"table written into {file} and {json_path}")
    else:
        atomic_write_bytes(json_path, json.dumps(results, indent=2).encode())
        typer.echo(f"table written to {json_path} ({file} unchanged; --write also stores it in the file)")


@app.command("eval")
def eval_file(
    file: Annotated[Path, typer.Argument(help="A .mdc file.", exists=True, dir_okay=False)],
    protocol: Annotated[str, typer.Option(callback=_protocol, help="quick: the tree's quick section (quick.sizes, "
                                          "quick.labels and the budget quick.evaluate; docs/config.md; the table "
                                          "states it); pinned: the full evaluation (evaluate), every size, hard "
                                          "and soft.")] = "quick",
    sizes: Annotated[str | None, typer.Option(help="Prefix sizes: 1-10, 1,2,5,10 or all (default: the "
                                              "protocol's).")] = None,
    labels: Annotated[str | None, typer.Option(callback=_labels, help="hard, soft or hard,soft (default: the "
                                               "protocol's).")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per size (sets the protocol section's "
                                              "seeds).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (sets the protocol section's "
                                               "epochs).")] = None,
    max_test: Annotated[int | None, typer.Option(help="Score on a seeded stratified random sample of this many "
                                                 "test images (sets the protocol section's max_test).", min=1)] = None,
    control: Annotated[bool | None, typer.Option("--control/--no-control", help="Also train on the random-real "
                                                 "control: as many real images per class (and, for a file of "
                                                 "formation factor f > 1, k*f*f real images formed into its "
                                                 "layout), relabelled by the file's teacher with its views "
                                                 "and codec (cached under $MULTISIZE_CACHE/controls). "
                                                 "Default: where the file's header allows it.")] = None,
    teacher: Annotated[Path | None, typer.Option("--teacher", exists=True, dir_okay=False, help="The "
                                                 "teacher.safetensors that labelled FILE, for its control (files "
                                                 "built with --teacher; default: the build's cached "
                                                 "teacher).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Training processes (default: one per core on a CPU, "
                                                "at most 8, unless the work is too small; one on CUDA).")] = None,
    loss: Loss = None,
    gamma: Gamma = None,
    temperature: Temperature = None,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Also store the table in the .mdc's header "
                                        "(rewrites FILE atomically; default: FILE is only read).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="JSON path (default: FILE.eval.json).")] = None,
    profile: Profile = None,
    config: ConfigFiles = None,
    settings: SetItems = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Test data (fashion-mnist, cifar10, "
                                                "imagefolder:PATH ...; default: the file's dataset if it is a "
                                                "registered name: a file never chooses a path).")] = None,
    data_root: DataRoot = None,
    download: Download = False,
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train the evaluation network on each prefix and on the random-real control (last-epoch accuracy, mean ± std
    over seeds); the quick protocol by default, the full one with --protocol pinned."""
    import formats
    from condenser.data import load_dataset
    from condenser.data.trusted import header_dataset
    from condenser.evaluate.controls import ensure_controls

    aliases = eval_aliases(protocol, seeds=seeds, epochs=epochs, max_test=max_test, loss=loss, gamma=gamma,
                           temperature=temperature)
    prof = resolve_settings(profile, config, settings, aliases)
    budget = eval_budget(prof, protocol)
    with reading(file), formats.open_mdc(file) as reader:
        has_views = reader.spec.views is not None
        modes = labels_list(labels) if labels else default_modes(prof, protocol, has_views)
        wanted = check_sizes(reader, sizes or default_sizes(prof, protocol, reader.blocks_present), modes)
        if dataset is None:  # refused before any work if the header names a path
            dataset = header_dataset(reader.header.get("dataset"), f"the header of {file}")
        plan, no_control = plan_control(reader, file, control, dataset, data_root, device, teacher)
    json_path = check_writable_file(json_out or sidecar_path(file), "--json")
    if write:
        check_writable_file(file, "--write: FILE")
    require_data(dataset, data_root, download, ("test",) if plan is None else ("train", "test"))
    root = str(data_root) if data_root else None
    paths = {"file": file}
    if plan is not None:
        paths.update(ensure_controls(plan, log))
    elif no_control != "--no-control":
        log(f"no random-real control: {no_control}")
    test = load_dataset(dataset, "test", root=root)
    tables = run_cells(file, paths, wanted, modes, budget, test, dataset, root, device, workers)
    results = eval_results(file, paths, tables, plan, no_control, protocol, prof, budget, modes, test, dataset)
    Console().print(results_table(results, table_title(file, plan), results["budget"]))
    store_results(file, results, json_path, write)
