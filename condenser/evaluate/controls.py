"""Honest controls (docs/RESULTS.md): a random real subset of the same size, in the nested order, labelled
like the file it is compared with.

`random_real_subset` draws the images (the bench's `random` method). `plan_control` reads, from a file's
header, everything its control must share with it: the data, the teacher that labelled it, the views
(RelabelConfig), the soft-label codec and the pixel encoding; `ensure_control` builds that file once,
with the build's own relabel-and-pack tail, and caches it under `$MULTISIZE_CACHE/controls/`.

A header is untrusted input: no path is taken from it (the teacher comes from the cache or from the user's
`--teacher`, the data from the user's dataset and root), and every value used is checked before any work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
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
from condenser.paths import cache_root
from condenser.profiles import PROFILES, get_profile
from condenser.teacher import Teacher, TeacherConfig, teacher_paths

CONTROL_METHOD = "random"  # the bench's name for the same control (condenser/bench/sets.py random_sets)


def random_real_subset(train: ImageDataset, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images per class, IPC-major (record r = i*C + c), normalised.

    Nested by construction: the IPC-k prefix of the result is the random IPC-k subset for this seed.
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = train.spec.num_classes
    per_class = [train.sample_class(c, ipc, generator=generator) for c in range(num_classes)]
    order = torch.stack(per_class, dim=1).reshape(-1)  # [ipc, C] -> IPC-major
    return train.normalized(order), train.labels[order].clone()


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

    @property
    def soft(self) -> bool:
        return self.build.soft_labels == "teacher"


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
    return ControlPlan(path, cfg, teacher, relabel, provenance)


def control_key(plan: ControlPlan, train: ImageDataset) -> str:
    """The cached control's identity: the file as built (its provenance: settings, teacher, data), the data
    the control draws from, and what it is drawn as. Rewriting the file's results (`eval --write`) keeps it."""
    return config_hash({"provenance": plan.provenance, "dataset": plan.build.dataset, "data": train.fingerprint,
                        "method": CONTROL_METHOD, "build": plan.build.record() | {"device": "", "data_root": ""},
                        "settings": plan.build.settings.as_dict()})


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


def check_same_labels(plan: ControlPlan, control: Path) -> None:
    """The control's views, codec and pixels are the file's (a drift of the relabel code would show here)."""
    with formats.open_mdc(plan.file) as a, formats.open_mdc(control) as b:
        pairs = {"views (count, codec, temperature)": (a.spec.views, b.spec.views),
                 "pixel encoding": (a.spec.encoding, b.spec.encoding),
                 "relabel settings": (_canonical(plan.relabel), _canonical(b.header["provenance"].get("relabel")))}
    if bad := [name for name, (x, y) in pairs.items() if x != y]:
        raise CondenserError(f"the control of {plan.file} would differ from it in {', '.join(bad)}; use --no-control")


def ensure_control(plan: ControlPlan, log: Callable[[str], None] = lambda _: None) -> Path:
    """The control's file: from the cache when built for this file before, else drawn, relabelled and packed."""
    train = load_dataset(plan.build.dataset, "train", root=plan.build.data_root)
    key = control_key(plan, train)
    path = control_path(key)
    if _carries_key(path, key):
        log(f"control: {path} (cached)")
        return path
    if (fewest := int(train.class_counts.min())) < plan.build.ipc:
        raise CondenserError(f"the control of {plan.file} needs {plan.build.ipc} real images per class, but a class "
                             f"of {plan.build.dataset} has {fewest}; use --no-control")
    teacher = control_teacher(plan, log) if plan.soft else None
    images, labels = random_real_subset(train, plan.build.ipc, plan.build.seed)
    provenance = {"method": CONTROL_METHOD, "bench_method": CONTROL_METHOD, "control_key": key,
                  "control_of": plan.file.name, "build": plan.build.record(), "teacher": plan.teacher,
                  "settings": plan.build.settings.as_dict(),
                  "data": {"name": plan.build.dataset, "train_fingerprint": train.fingerprint}}
    path.parent.mkdir(parents=True, exist_ok=True)
    relabel_and_pack(plan.build, path, images, labels, train, teacher, provenance, plan.build.settings, {})
    check_same_labels(plan, path)
    log(f"control: {plan.build.ipc} random real images per class, labelled like {plan.file.name} -> {path}")
    return path
