"""`condenser export-trainer`: write a trainer bundle (train-step + inference ONNX graphs, initial params)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import DataRoot, Dataset, Seed, check_writable_file


@app.command("export-trainer")
def export_trainer_cmd(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Model (convnet, resnet-ap10).")] = "convnet",
    dataset: Dataset = "fashion-mnist",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Graph batch size.")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write.")] = Path("trainer.msgpack"),
    width: Annotated[int | None, typer.Option(help="Model width (default: the model's).")] = None,
    depth: Annotated[int | None, typer.Option(help="Model depth (default: the model's).")] = None,
    norm: Annotated[str | None, typer.Option(help="instance or none (not batch).")] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum, baked into the graph.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay, baked into the graph.")] = 5e-4,
    params: Annotated[str, typer.Option(help="seeded: initial parameters built on the device from the seed "
                                             "(a small bundle); stored: the seeded torch model's, raw.")] = "seeded",
    data_root: DataRoot = None,
    seed: Seed = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Export an SGD train step and the inference pass as ONNX graphs that onnxruntime alone can run."""
    from condenser.data import get_spec
    from condenser.errors import CondenserError
    from condenser.export import ExportSettings, export_trainer
    from condenser.progress import stage
    from runtime.bundle import SGDConfig

    check_writable_file(out)
    model_kwargs = {k: v for k, v in {"width": width, "depth": depth, "norm": norm}.items() if v is not None}
    try:
        spec = get_spec(dataset, data_root)
        settings = ExportSettings(arch=arch, in_shape=spec.image_shape, num_classes=spec.num_classes,
                                  batch_size=batch_size, seed=seed, model_kwargs=model_kwargs,
                                  sgd=SGDConfig(momentum=momentum, weight_decay=weight_decay),
                                  dataset=spec.name, mean=spec.mean, std=spec.std, params=params)
        start = time.perf_counter()
        with stage(f"export {arch} train step (batch {batch_size})"):
            bundle = export_trainer(settings)
        seconds = time.perf_counter() - start
        bundle.save(out)
    except (CondenserError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    n_params = sum(p.size for p in bundle.params)
    typer.echo(f"{arch} {spec.image_shape} -> {spec.num_classes} classes, batch {batch_size}, "
               f"{n_params:,} parameters; train step {len(bundle.train_step) / 1e3:.0f} kB, inference "
               f"{len(bundle.inference) / 1e3:.0f} kB; exported in {seconds:.1f}s -> {out}")
