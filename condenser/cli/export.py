"""`condenser export-trainer`: write a trainer bundle (train-step + inference ONNX graphs, initial params)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from condenser.cli.app import Debug, Quiet, app
from condenser.cli.options import DataRoot, Dataset, Seed, check_writable_file

OPTIMIZER_CHOICES = ("sgd", "nesterov", "adamw")


def _scalar(text: str) -> Any:
    """A --model-kwarg value: int, float, true/false/none, else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_kwargs(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs into keyword arguments of the model factory."""
    from condenser.errors import CondenserError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise CondenserError(f"--model-kwarg {item!r} is not KEY=VALUE with KEY a Python name")
        out[key] = _scalar(value)
    return out


def optimizer_config(name: str, momentum: float, weight_decay: float | None, beta1: float, beta2: float,
                     eps: float) -> Any:
    """The optimizer baked into the train step; weight decay defaults to each optimizer's usual value."""
    from condenser.errors import CondenserError
    from runtime.bundle import AdamWConfig, SGDConfig

    if name not in OPTIMIZER_CHOICES:
        raise CondenserError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_CHOICES)}")
    if name == "adamw":
        return AdamWConfig(weight_decay=0.01 if weight_decay is None else weight_decay, betas=(beta1, beta2), eps=eps)
    if name == "nesterov" and momentum <= 0:
        raise CondenserError("--optimizer nesterov needs --momentum > 0")
    return SGDConfig(momentum=momentum, weight_decay=5e-4 if weight_decay is None else weight_decay,
                     nesterov=name == "nesterov")


@app.command("export-trainer")
def export_trainer_cmd(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Registered model (convnet, resnet-ap10).")] = "convnet",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Your own model: a factory pkg.module:function "
                                              "returning a torch module (replaces --arch).")] = None,
    model_kwarg: Annotated[list[str] | None, typer.Option("--model-kwarg", help="KEY=VALUE argument of the "
                                                          "factory (repeatable).")] = None,
    dataset: Dataset = "fashion-mnist",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Graph batch size.")] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write.")] = Path("trainer.msgpack"),
    width: Annotated[int | None, typer.Option(help="--arch width (default: the model's).")] = None,
    depth: Annotated[int | None, typer.Option(help="--arch depth (default: the model's).")] = None,
    norm: Annotated[str | None, typer.Option(help="--arch norm: instance, batch or none.")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd, nesterov or adamw, baked into the train step "
                                                "(lr and AdamW's step are fed at run time).")] = "sgd",
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (default 5e-4 for SGD, 0.01 for "
                                                            "AdamW).")] = None,
    beta1: Annotated[float, typer.Option(help="AdamW beta1.")] = 0.9,
    beta2: Annotated[float, typer.Option(help="AdamW beta2.")] = 0.999,
    eps: Annotated[float, typer.Option(help="AdamW epsilon.")] = 1e-8,
    loss: Annotated[str, typer.Option(help="soft_cross_entropy, kl_divergence or hard_cross_entropy.")
                    ] = "soft_cross_entropy",
    temperature: Annotated[float, typer.Option(help="kl_divergence temperature T (loss scaled by T^2).")] = 1.0,
    targets: Annotated[str, typer.Option(help="hard_cross_entropy targets: probs (argmax of each row) or index "
                                              "(int64 class indices).")] = "probs",
    dropout: Annotated[str, typer.Option(help="seeded: nn.Dropout draws its noise from a runtime input; off: "
                                              "nn.Dropout is the identity in the train step.")] = "seeded",
    params: Annotated[str, typer.Option(help="seeded: initial parameters built on the device from the seed "
                                             "(a small bundle); stored: the seeded torch model's, raw.")] = "seeded",
    data_root: DataRoot = None,
    seed: Seed = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Export a train step (forward, loss, backward, optimizer) and the inference pass as ONNX graphs that
    onnxruntime alone can run."""
    from condenser.data import get_spec
    from condenser.errors import CondenserError
    from condenser.export import ExportSettings, export_trainer
    from condenser.progress import stage
    from runtime.bundle import LossConfig
    from runtime.errors import TrainerError

    check_writable_file(out)
    name = model or arch
    try:
        kwargs = parse_model_kwargs(model_kwarg or [])
        kwargs.update({k: v for k, v in {"width": width, "depth": depth, "norm": norm}.items() if v is not None})
        spec = get_spec(dataset, data_root)
        settings = ExportSettings(
            arch=name, in_shape=spec.image_shape, num_classes=spec.num_classes, batch_size=batch_size, seed=seed,
            model_kwargs=kwargs, optimizer=optimizer_config(optimizer, momentum, weight_decay, beta1, beta2, eps),
            loss=LossConfig(loss, temperature=temperature, targets=targets), dropout=dropout, dataset=spec.name,
            mean=spec.mean, std=spec.std, params=params)
        start = time.perf_counter()
        with stage(f"export {name} train step (batch {batch_size})"):
            bundle = export_trainer(settings)
        seconds = time.perf_counter() - start
        bundle.save(out)
    except (CondenserError, TrainerError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    n_params = sum(p.size for p in bundle.params)
    typer.echo(f"{name} {spec.image_shape} -> {spec.num_classes} classes, batch {batch_size}, {n_params:,} "
               f"parameters, {len(bundle.buffers)} state buffers, {optimizer} + {loss}; "
               f"train step {len(bundle.train_step) / 1e3:.0f} kB, inference {len(bundle.inference) / 1e3:.0f} kB; "
               f"exported in {seconds:.1f}s -> {out}")
