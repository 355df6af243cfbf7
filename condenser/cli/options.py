"""Options shared by several commands, defined once, each checked when the command line is parsed.

A bad value fails before any long work starts (a teacher that trains for an hour, then a typo in
`--codec` at the final pack, is what these checks exist to prevent); the message names the option and
the accepted values, and the app prints it as one line (condenser/cli/app.py).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from condenser.errors import CondenserError
from condenser.progress import quiet_requested

if TYPE_CHECKING:
    from condenser.config.tree import Config as ConfigT

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _profile(name: str | None) -> str | None:
    from condenser.profiles import PROFILES

    if name is not None and name not in PROFILES:
        raise typer.BadParameter(f"unknown profile {name!r}; use one of {', '.join(PROFILES.names())}")
    return name


def _dataset(name: str) -> str:
    from condenser.data import get_source

    try:
        get_source(name)
    except CondenserError as exc:
        raise typer.BadParameter(str(exc)) from None
    return name


def _device(name: str) -> str:
    if not _DEVICE.fullmatch(name):
        raise typer.BadParameter(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def _soft_labels(value: str) -> str:
    if value not in ("teacher", "none"):
        raise typer.BadParameter(f"{value!r}: use teacher (soft-label views) or none (hard labels only)")
    return value


Dataset = Annotated[str, typer.Option("--dataset", "-d", callback=_dataset, help="Dataset name (fashion-mnist, "
                                      "mnist, cifar10, cifar100, svhn, tiny-imagenet, imagefolder:PATH, "
                                      "synthetic:K:CxHxW).")]
DataRoot = Annotated[Path | None, typer.Option("--data-root", help="Directory holding the dataset files "
                                               "(default: $MULTISIZE_DATA, cache, system paths).")]
Download = Annotated[bool, typer.Option("--download", help="Let torchvision download a missing dataset (needs "
                                        "network) into --data-root, $MULTISIZE_DATA or the user cache.")]
Profile = Annotated[str | None, typer.Option("--profile", "-p", callback=_profile, help="Budget profile: smoke, "
                                             "cpu or paper (default: paper with a GPU, cpu without).")]
Device = Annotated[str, typer.Option("--device", callback=_device,
                                     help="auto (CUDA when present), cpu, cuda, cuda:1 ...")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Codec = Annotated[str | None, typer.Option("--codec", help="Soft-label codec: dense-f16, dense-f32, topk-f16, "
                                           "topk-u8 (sets pack.codec).")]
SoftLabels = Annotated[str, typer.Option(callback=_soft_labels, help="teacher (soft-label views) or none.")]
Pixels = Annotated[str | None, typer.Option("--pixels", help="Pixel encoding: uint8, float16, float32 (sets "
                                            "pack.pixels).")]
Views = Annotated[int | None, typer.Option(min=1, help="Soft-label views per image (sets relabel.views).")]
EmbedTrainer = Annotated[bool | None, typer.Option("--embed-trainer/--no-embed-trainer", help="Embed the ONNX "
                                                   "device trainer in the file (sets pack.embed_trainer).")]
Precision = Annotated[str | None, typer.Option("--precision", help="The condensation's arithmetic: fp32, bf16 or "
                                               "auto (bf16 where the hardware multiplies bf16; sets "
                                               "condense.precision).")]
TeacherPath = Annotated[Path | None, typer.Option("--teacher", exists=True, dir_okay=False, help="A "
                                                  "teacher.safetensors to use instead of the cached/trained one.")]


SetItems = Annotated[list[str] | None, typer.Option(
    "--set", metavar="SECTION.FIELD=VALUE", help="Change one setting of the tree (docs/config.md), e.g. --set "
    "condense.outer_loops=20 --set relabel.views=4; VALUE is JSON where it parses, else text. Repeatable; "
    "applied after --config.")]
ConfigFiles = Annotated[list[Path] | None, typer.Option(
    "--config", exists=True, dir_okay=False, help="A settings file of the tree's shape, TOML or YAML (.yaml, "
    ".yml); applied over the profile, in order. Repeatable.")]


def resolve_profile(name: str | None) -> str:
    from condenser.profiles import default_profile_name

    return name or default_profile_name()


def flag_aliases(flags: dict[str, tuple[str, str]], **values: Any) -> dict[str, tuple[str, Any]]:
    """{key: (flag, value)} for a command's alias flags (`flags`: {parameter: (flag, key)}) from their values."""
    return {key: (flag, values[name]) for name, (flag, key) in flags.items()}


def resolve_settings(profile: str | None, files: list[Path] | None, items: list[str] | None,
                     aliases: dict[str, tuple[str, Any]] | None = None, bench: bool = False) -> ConfigT:
    """The command's settings tree, resolved once: profile, --config files, then the flags that are documented
    aliases of a key (`aliases`: {key: (flag, value)}; None: not given), then the --set items."""
    from condenser.profiles import resolve

    return resolve(resolve_profile(profile), files or (), items or (), aliases, bench=bench)


def log(message: str) -> None:
    """A command's step message (stdout), silenced by --quiet (not by $MULTISIZE_QUIET, which is for bars)."""
    if not quiet_requested():
        typer.echo(message)


@contextmanager
def reading(file: Path) -> Iterator[None]:
    """A bad .mdc ends as `FILE: what is wrong` (formats' messages name the offset or key, not the file)."""
    from formats import FormatError

    try:
        yield
    except FormatError as exc:
        raise CondenserError(f"{file}: {exc}") from exc


def check_writable_file(path: Path, option: str = "--out") -> Path:
    """Fail now, not after hours of work, if `path` cannot be written (directory missing or read-only)."""
    if path.is_dir():
        raise CondenserError(f"{option} {path} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise CondenserError(f"{option} {path}: directory {parent} does not exist; create it or choose another path")
    _probe_write(parent, option, path)
    return path


def check_writable_dir(path: Path, option: str = "--out") -> Path:
    """A directory that exists and is writable, or whose nearest existing ancestor is (it is created later)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CondenserError(f"{option} {path}: {existing} is not a directory; choose another path")
    _probe_write(existing, option, path)
    return path


def _probe_write(directory: Path, option: str, path: Path) -> None:
    """Create and delete a temp file: the only test that also holds for root and read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise CondenserError(f"{option} {path}: cannot write in {directory} ({exc.strerror}); "
                             "choose another path") from None


def require_data(dataset: str, data_root: Path | None, download: bool, splits: Sequence[str]) -> None:
    """Every split the command will load is present (downloaded first with --download), checked up front."""
    from condenser.data import get_source

    source = get_source(dataset)
    for split in splits:
        source.require(split, data_root, download)
