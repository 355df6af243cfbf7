"""Honest controls (docs/RESULTS.md, docs/methods.md "Controls"): real images in the storage of the file they are
compared with, in the nested order, labelled like it.

- `random` (DD-Ranking's control): k random real images per class, one per stored image (formation factor 1).
- `random-formed` (a file of formation factor f > 1 only): k*f*f random real images per class formed into
  the file's stored layout (condenser/methods/formation.py `encode`, f*f per stored image), so it decodes
  to k*f*f training images like the file; it separates what condensation adds from what formation adds.

`random_real_subset` and `formed_real_subset` draw the images (the bench's methods of the same names).
`plan_control` reads, from a file's header, everything its controls must share with it: the data, the
teacher that labelled it, the views (RelabelConfig), the soft-label codec, the pixel encoding and the
formation factor; `ensure_controls` builds those files once, with the build's own relabel-and-pack tail,
and caches them under `$MULTISIZE_CACHE/controls/`.

A header is untrusted input: no path is taken from it (the teacher comes from the cache or from the user's
`--teacher`, the data from the user's dataset and root), and every value used is checked before any work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import formats
from condenser.build import BuildConfig, get_teacher, relabel_and_pack
from condenser.checkpoint import config_hash
from condenser.config import ConfigError
from condenser.config.tree import Config
from condenser.data import ImageDataset, load_dataset
from condenser.errors import CondenserError
from condenser.methods.formation import encode
from condenser.paths import cache_root
from condenser.profiles import PROFILES, get_profile
from condenser.teacher import Teacher, TeacherConfig, teacher_paths
from formats.header import ViewsInfo

CONTROL_METHOD = "random"  # the bench's name for the same control (condenser/bench/sets.py random_sets)
FORMED_CONTROL_METHOD = "random-formed"  # the formed control's name, in the bench and in `condenser eval`


def random_real_subset(train: ImageDataset, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images per class, IPC-major (record r = i*C + c), normalised.

    Nested by construction: the IPC-k prefix of the result is the random IPC-k subset for this seed.
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = train.spec.num_classes
    per_class = [train.sample_class(c, ipc, generator=generator) for c in range(num_classes)]
    order = torch.stack(per_class, dim=1).reshape(-1)  # [ipc, C] -> IPC-major
    return train.normalized(order), train.labels[order].clone()


def formed_real_subset(train: ImageDataset, ipc: int, factor: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` stored images per class, each formed from f*f random real images of its class, IPC-major, normalised.

    Stored image i of class c holds real images i*f*f .. i*f*f+f*f-1 of that class's draw, area-downsampled
    and tiled row-major (condenser.methods.formation.encode), so it decodes (docs/format.md §4.1) to f*f
    training images like a condensed file of factor f. Nested: the IPC-k prefix holds the first k*f*f draws.
    """
    ff = factor * factor
    generator = torch.Generator().manual_seed(seed)
    num_classes = train.spec.num_classes
    per_class = torch.stack([train.sample_class(c, ipc * ff, generator=generator) for c in range(num_classes)])
    order = per_class.view(num_classes, ipc, ff).transpose(0, 1).reshape(-1)  # [ipc, C, f*f] -> IPC-major groups
    real = train.normalized(order).view(ipc * num_classes, ff, *train.spec.image_shape)
    return encode(real, factor), torch.arange(num_classes).repeat(ipc)


def control_sets(method: str, train: ImageDataset, ipc: int, factor: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored images and labels of control `method` (random or random-formed) for a file of `factor`."""
    if method == CONTROL_METHOD:
        return random_real_subset(train, ipc, seed)
    if method == FORMED_CONTROL_METHOD:
        check_formed(factor)
        return formed_real_subset(train, ipc, factor, seed)
    raise CondenserError(f"unknown control {method!r}; known: {CONTROL_METHOD}, {FORMED_CONTROL_METHOD}")


class FormedControlError(CondenserError, ValueError):
    """random-formed was asked for at formation factor 1, where it would be the random control itself."""


def check_formed(factor: int) -> None:
    if factor < 2:
        raise FormedControlError(f"{FORMED_CONTROL_METHOD} needs formation factor > 1 (condense.factor), got {factor}: "
                                 f"at factor 1 it is the {CONTROL_METHOD} control itself")


def control_methods(factor: int) -> tuple[str, ...]:
    """The controls of a file of formation `factor`: random always, random-formed where f > 1."""
    return (CONTROL_METHOD,) if factor == 1 else (CONTROL_METHOD, FORMED_CONTROL_METHOD)


class NoControl(CondenserError):
    """The file's header does not allow a control with the same labels (no build record, a teacher pool)."""


@dataclass(frozen=True)
class ControlPlan:
    """What the control of one file is built from, read and checked from the file's header."""

    file: Path
    build: BuildConfig  # the user's dataset, root and device; the file's settings tree and seed
    teacher: dict | None  # the header's summary of the teacher that labelled the file; None: hard labels
    relabel: dict | None  # the file's RelabelConfig (provenance.relabel); None: hard labels
    provenance: dict  # the file's provenance, the identity the cached control is keyed by
    factor: int = 1  # the file's formation factor (its header's)

    @property
    def soft(self) -> bool:
        return self.build.soft_labels == "teacher"

    def build_for(self, method: str) -> BuildConfig:
        """The control's build job: the file's, with the formation factor the control is stored with."""
        factor = self.factor if method == FORMED_CONTROL_METHOD else 1
        if self.build.settings.condense.factor == factor:
            return self.build
        settings = self.build.settings.updated({"condense": {"factor": factor}}, "the control")
        return replace(self.build, settings=settings)


def _canonical(value: Any) -> Any:
    """JSON-normal form (tuples as lists), so a header's msgpack values compare with dataclass dicts."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _differing(expected: dict, actual: dict) -> list[str]:
    """Top-level keys whose values differ between two JSON-like dicts."""
    a, b = _canonical(expected), _canonical(actual)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _section(record: dict, key: str, where: str) -> dict:
    value = record.get(key)
    if not isinstance(value, dict):
        raise NoControl(f"{where} records no {key} settings (provenance.{key}): not written by `condenser build`, "
                        "so a control cannot share its labels")
    return value


def _settings_record(provenance: dict, where: str) -> Config:
    """The file's settings tree (provenance.settings) rebuilt over its profile, every value checked (a header may
    lie); NoControl where the file was labelled by a teacher pool."""
    from condenser.methods import METHODS

    record = provenance.get("settings")
    if not isinstance(record, dict):
        raise NoControl(f"{where} records no settings tree (provenance.settings; files built before it have none), "
                        "so a control cannot share its labels")
    name = record.get("name")
    if not isinstance(name, str) or name not in PROFILES:
        raise CondenserError(f"{where}: provenance.settings.name {name!r} is not one of {', '.join(PROFILES.names())}")
    try:
        tree = get_profile(name).updated({k: v for k, v in record.items() if k != "name"},
                                         f"provenance.settings of {where}").checked()
    except ConfigError as exc:
        raise CondenserError(f"{where}: {exc}") from None
    if tree.method.name not in METHODS:
        raise NoControl(f"{where} was relabelled by the {tree.method.name} teacher pool, not by one teacher "
                        "(controls support the condense-loop methods)")
    return tree


def _build_record(provenance: dict, where: str) -> dict:
    """The header's record of the build job (provenance.build), with the values the control uses checked."""
    build = _section(provenance, "build", where)
    seed, path = build.get("seed"), build.get("teacher_path")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise CondenserError(f"{where}: provenance.build.seed = {seed!r} is not a valid value")
    if path is not None and not isinstance(path, str):
        raise CondenserError(f"{where}: provenance.build.teacher_path = {path!r} is not a valid value")
    return build


def _labeller(provenance: dict, build: dict, where: str, teacher_path: Path | None) -> tuple[dict, dict]:
    """(teacher summary, relabel settings) of a soft-label file, checked; refused where only a path would do."""
    teacher, relabel = _section(provenance, "teacher", where), _section(provenance, "relabel", where)
    accuracy = teacher.get("test_accuracy")
    numeric = isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool)
    if not isinstance(teacher.get("config"), dict) or not numeric:
        raise CondenserError(f"{where}: provenance.teacher lacks its config or test_accuracy")
    if build.get("teacher_path") and teacher_path is None:
        raise CondenserError(f"{where} was labelled by a teacher file (build --teacher); pass the same file "
                             "with --teacher PATH, or use --no-control")
    return teacher, relabel


def plan_control(path: Path, reader: formats.MDCReader, dataset: str, data_root: str | None, device: str,
                 teacher_path: Path | None = None) -> ControlPlan:
    """The control's settings from `reader`'s header, checked before any work: NoControl where none can exist."""
    where = str(path)
    provenance = reader.header.get("provenance")
    if not isinstance(provenance, dict):
        raise NoControl(f"{where} has no provenance record, so a control cannot share its labels")
    build = _build_record(provenance, where)
    settings = _settings_record(provenance, where)
    views = reader.spec.views
    teacher, relabel = (None, None) if views is None else _labeller(provenance, build, where, teacher_path)
    # the bench's control for the file's ipc_max; a partial file's (fewer blocks) for the sizes it holds
    ipc = reader.ipc_max if reader.blocks_present == reader.ipc_max else reader.blocks_present
    cfg = BuildConfig(
        dataset=dataset, ipc=ipc, settings=settings.updated({"pack": {"embed_trainer": False}}, "the control"),
        soft_labels="none" if views is None else "teacher", teacher_path=str(teacher_path) if teacher_path else None,
        seed=build["seed"], device=device, data_root=data_root,
    )
    return ControlPlan(path, cfg, teacher, relabel, provenance, reader.spec.formation_factor)


def control_key(plan: ControlPlan, train: ImageDataset, method: str = CONTROL_METHOD) -> str:
    """The cached control's identity: the file as built (its provenance: settings, teacher, data), the data
    the control draws from, and what it is drawn as. Rewriting the file's results (`eval --write`) keeps it."""
    build = plan.build_for(method)
    return config_hash({"provenance": plan.provenance, "dataset": build.dataset, "data": train.fingerprint,
                        "method": method, "build": build.record() | {"device": "", "data_root": ""},
                        "settings": build.settings.as_dict()})


def control_path(key: str) -> Path:
    return cache_root() / "controls" / f"{key}.mdc"


def _carries_key(path: Path, key: str) -> bool:
    """True when `path` is a readable control written for `key` (a kill never leaves half a file: atomic)."""
    if not path.exists():
        return False
    try:
        with formats.open_mdc(path) as reader:
            return reader.header.get("provenance", {}).get("control_key") == key
    except formats.FormatError:
        return False


def control_teacher(plan: ControlPlan, log: Callable[[str], None]) -> Teacher:
    """The teacher that labelled the file, found the way the build finds it (condenser/build.py get_teacher):
    the cache, or the user's --teacher file. Anything else (other data, config or weights) is refused."""
    expected = plan.teacher or {}
    cfg = plan.build
    if not cfg.teacher_path:
        tcfg = TeacherConfig.from_profile(cfg.dataset, None, cfg.settings, seed=0, data_root=cfg.data_root)
        if fields := _differing(expected.get("config", {}), tcfg.as_dict()):
            raise CondenserError(f"the teacher that labelled {plan.file} differs from the one {cfg.dataset} gives now "
                                 f"(teacher config: {', '.join(fields)}); use the same data, or --no-control")
        if not teacher_paths(tcfg)[0].exists():
            log(f"control: the teacher that labelled {plan.file.name} ({tcfg.name}) is not in the cache "
                f"({teacher_paths(tcfg)[0].parent.parent}); retraining it")
    teacher = get_teacher(cfg, log)
    source = f"--teacher {cfg.teacher_path}" if cfg.teacher_path else "the cached teacher"
    if fields := _differing(expected.get("config", {}), teacher.meta.get("config", {})):
        raise CondenserError(f"{source} is not the teacher that labelled {plan.file} (config: {', '.join(fields)}); "
                             "pass the build's teacher with --teacher PATH, or use --no-control")
    if teacher.test_accuracy != expected.get("test_accuracy"):
        raise CondenserError(f"{source} scores {teacher.test_accuracy:.2f}%, the teacher that labelled {plan.file} "
                             f"{expected.get('test_accuracy'):.2f}%: not the same weights; pass the build's teacher "
                             "with --teacher PATH, or use --no-control")
    return teacher


def views_per_training_image(reader: formats.MDCReader) -> ViewsInfo | None:
    """The header's views with `count` per decoded training image (a stored image of factor f holds f*f)."""
    views = reader.spec.views
    return None if views is None else replace(views, count=views.count // reader.spec.formation_factor ** 2)


def check_same_labels(plan: ControlPlan, control: Path) -> None:
    """The control's views (per training image), codec and pixels are the file's (a drift of the relabel code
    would show here)."""
    with formats.open_mdc(plan.file) as a, formats.open_mdc(control) as b:
        pairs = {"views (count per training image, codec, temperature)": (views_per_training_image(a),
                                                                           views_per_training_image(b)),
                 "pixel encoding": (a.spec.encoding, b.spec.encoding),
                 "relabel settings": (_canonical(plan.relabel), _canonical(b.header["provenance"].get("relabel")))}
    if bad := [name for name, (x, y) in pairs.items() if x != y]:
        raise CondenserError(f"the control of {plan.file} would differ from it in {', '.join(bad)}; use --no-control")


def ensure_control(plan: ControlPlan, log: Callable[[str], None] = lambda _: None,
                   method: str = CONTROL_METHOD) -> Path:
    """The file of control `method`: from the cache when built for this file before, else drawn, relabelled and
    packed (random-formed: stored with the file's formation factor, labelled on its decoded images)."""
    build = plan.build_for(method)
    factor = build.settings.condense.factor
    if method == FORMED_CONTROL_METHOD:
        check_formed(factor)
    train = load_dataset(build.dataset, "train", root=build.data_root)
    key = control_key(plan, train, method)
    path = control_path(key)
    if _carries_key(path, key):
        log(f"control: {path} (cached)")
        return path
    needed = build.ipc * factor * factor
    if (fewest := int(train.class_counts.min())) < needed:
        raise CondenserError(f"the {method} control of {plan.file} needs {needed} real images per class, but a class "
                             f"of {build.dataset} has {fewest}; use --no-control")
    teacher = control_teacher(plan, log) if plan.soft else None
    images, labels = control_sets(method, train, build.ipc, factor, build.seed)
    provenance = {"method": method, "bench_method": method, "control_key": key,
                  "control_of": plan.file.name, "build": build.record(), "teacher": plan.teacher,
                  "settings": build.settings.as_dict(),
                  "data": {"name": build.dataset, "train_fingerprint": train.fingerprint}}
    path.parent.mkdir(parents=True, exist_ok=True)
    relabel_and_pack(build, path, images, labels, train, teacher, provenance, build.settings, {}, factor=factor)
    check_same_labels(plan, path)
    formed = "" if factor == 1 else f", formed {factor}x{factor} into {build.ipc} stored images"
    log(f"control {method}: {needed} random real images per class{formed}, labelled like {plan.file.name} -> {path}")
    return path


def ensure_controls(plan: ControlPlan, log: Callable[[str], None] = lambda _: None) -> dict[str, Path]:
    """{control name: its file} for every control of the file (`control_methods` of its formation factor)."""
    return {method: ensure_control(plan, log, method) for method in control_methods(plan.factor)}
