"""Per-size training sets of every benchmark method, packed as .mdc files with the build's packing tail.

Nested methods (B, C, mdc, the random controls) are one file whose IPC-n prefix is size n; Baseline A is
not nested, so it is a directory with one file per size (ipc-1.mdc ... ipc-N.mdc). Every file is
relabelled by the same teacher with the same RelabelConfig (`relabel_and_pack`), so hard and soft
comparisons use the same labels for every method. With condense.factor f > 1 every condensed method and
random-formed store f*f patches per image (labelled on the decoded images); random stores real images.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import formats
from condenser.baselines import SizedSets, build_sized_sets, planned_runs
from condenser.build import BuildConfig, environment, relabel_and_pack
from condenser.condense import CHECKPOINT_NAME
from condenser.data import ImageDataset
from condenser.device import resolve_device
from condenser.errors import CondenserError
from condenser.evaluate.controls import (
    CONTROL_METHOD,
    FORMED_CONTROL_METHOD,
    check_formed,
    formed_real_subset,
    random_real_subset,
)
from condenser.methods.selection import FeatureSource
from condenser.profiles import Profile
from condenser.teacher import Teacher


@dataclass(frozen=True)
class MethodFiles:
    """Where size n of one method lives: `paths[n]`, read as its IPC-n prefix."""

    method: str
    paths: dict[int, Path]


def random_sets(train: ImageDataset, ipc: int, seed: int) -> SizedSets:
    """The honest control: one random real subset per class, nested (size n = its first n images)."""
    images, _ = random_real_subset(train, ipc, seed)
    return nested_sets(CONTROL_METHOD, images, train.spec.num_classes, 1)


def random_formed_sets(train: ImageDataset, ipc: int, factor: int, seed: int) -> SizedSets:
    """The formed control: ipc stored images per class, each f*f random real images (controls.formed_real_subset)."""
    check_formed(factor)
    images, _ = formed_real_subset(train, ipc, factor, seed)
    return nested_sets(FORMED_CONTROL_METHOD, images, train.spec.num_classes, factor)


def nested_sets(name: str, images: torch.Tensor, num_classes: int, factor: int) -> SizedSets:
    """Sizes 1..N of IPC-major stored `images` as prefixes (no condensation runs)."""
    ipc = images.shape[0] // num_classes
    return SizedSets(name, ipc, num_classes, factor, True, {n: images[: n * num_classes] for n in range(1, ipc + 1)},
                     [])


def equivalent_runs(ipc: int) -> list[tuple[str, str]]:
    """Baseline runs that are the same process (docs/multisize.md; A's IPC-N number equals C's in every
    table): A's IPC-1 run is B's first run, and A's IPC-N run is C."""
    return [("A-ipc1", "B-run0"), (f"A-ipc{ipc}", "C")]


def share_equivalent_runs(run_dir: Path, ipc: int) -> None:
    """Seed a run's checkpoint from its twin, so the same condensation is never computed twice.

    condense() verifies the config hash stored in the checkpoint, so a mismatch would fail loudly.
    """
    for a, b in equivalent_runs(ipc):
        pa, pb = run_dir / a / CHECKPOINT_NAME, run_dir / b / CHECKPOINT_NAME
        for src, dst in ((pa, pb), (pb, pa)):
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


def method_sets(method: str, cfg: BuildConfig, profile: Profile, train: ImageDataset, run_dir: Path,
                progress: bool = True, workers: int = 1, log: Callable[[str], None] = lambda _: None,
                features: FeatureSource | None = None) -> SizedSets:
    """Condense (resumably, runs under `run_dir`) or sample the sets of `method`: A, B, C, mdc, random or
    random-formed (at the tree's condense.factor). `features`: the selection inits' network (the teacher).

    With `workers` > 1 on a CPU, the N independent runs of A or B are condensed in parallel processes first.
    """
    if method == CONTROL_METHOD:
        return random_sets(train, cfg.ipc, cfg.seed)
    if method == FORMED_CONTROL_METHOD:
        return random_formed_sets(train, cfg.ipc, profile.condense.factor, cfg.seed)
    ccfg = cfg.condense_config(profile)
    if method in ("A", "B", "C"):
        share_equivalent_runs(run_dir, ccfg.ipc)
    if method in ("A", "B") and workers > 1 and resolve_device(ccfg.device).type == "cpu":
        from condenser.bench.workers import condense_runs

        runs = [(run_dir / name, run_cfg) for name, run_cfg in planned_runs(method, ccfg)]
        log(f"{method}: condensing {len(runs)} runs in {min(workers, len(runs))} processes")
        condense_runs(runs, cfg.dataset, cfg.data_root, min(workers, len(runs)),
                      on_done=lambda path, s: log(f"{method}: {path.name} condensed ({s:.0f} s)"), features=features)
    return build_sized_sets(method, ccfg, train, run_dir, progress=progress, features=features)


def teacher_summary(teacher: Teacher | None) -> dict | None:
    return None if teacher is None else {k: teacher.meta[k] for k in ("arch", "dataset", "test_accuracy", "config")}


def write_sized_sets(sets: SizedSets, out: str | Path, cfg: BuildConfig, profile: Profile, train: ImageDataset,
                     teacher: Teacher | None, provenance: dict | None = None,
                     log: Callable[[str], None] = lambda _: None) -> MethodFiles:
    """Pack `sets`: one nested file at `out`, or (not nested) `out/ipc-n.mdc` for every size n."""
    base = {
        "method": "multisize" if sets.name == "mdc" else sets.name,
        "bench_method": sets.name,
        "settings": profile.as_dict(),
        "build": cfg.record(),
        "teacher": teacher_summary(teacher),
        "environment": environment(),
        "command": " ".join(sys.argv),
        **(provenance or {}),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if sets.nested:
        images, labels = sets.get(sets.ipc_max)
        path = relabel_and_pack(cfg, out, images, labels, train, teacher, {**base, **sets.provenance()},
                                profile, {}, factor=sets.factor)
        log(f"wrote {path}")
        return MethodFiles(sets.name, {n: path for n in sets.sets})
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[int, Path] = {}
    for n, run in zip(sorted(sets.sets), sets.runs, strict=True):
        images, labels = sets.get(n)
        prov = {**base, **run.provenance(), "baseline": sets.name, "nested": False, "size": n}
        paths[n] = relabel_and_pack(cfg, out / f"ipc-{n}.mdc", images, labels, train, teacher, prov, profile, {},
                                    factor=sets.factor)
        log(f"wrote {paths[n]}")
    return MethodFiles(sets.name, paths)


def expected_files(method: str, ipc: int, out: Path) -> MethodFiles:
    """The file layout `write_sized_sets` produces for `method` under `out` (for cache checks)."""
    if method == "A":
        return MethodFiles(method, {n: out / f"ipc-{n}.mdc" for n in range(1, ipc + 1)})
    return MethodFiles(method, {n: out for n in range(1, ipc + 1)})


def files_carry_key(files: MethodFiles, key: str) -> bool:
    """True when every file exists and was written for this exact configuration (`bench_key`)."""
    for path in set(files.paths.values()):
        if not path.exists():
            return False
        try:
            with formats.open_mdc(path) as reader:
                if reader.header.get("provenance", {}).get("bench_key") != key:
                    return False
        except formats.FormatError:
            return False
    return True


def baseline_run_dir(cfg: BuildConfig, profile: Profile, features: FeatureSource | None = None) -> Path:
    """Run directory of the baselines of one configuration: A, B and C runs live side by side in it."""
    from condenser.checkpoint import config_hash
    from condenser.condense import run_config_key
    from condenser.data import load_dataset
    from condenser.paths import runs_dir

    ccfg = cfg.condense_config(profile).with_subset(False)
    data = load_dataset(cfg.dataset, "train", root=cfg.data_root).fingerprint  # changed data: a new run
    stem = cfg.dataset.replace(":", "_").replace("/", "_")
    return runs_dir() / f"baselines-{stem}-{data[:8]}-{config_hash(run_config_key(ccfg, features))}"


def build_baseline(name: str, cfg: BuildConfig, out: str | Path, log: Callable[[str], None] = print,
                   progress: bool = True, workers: int = 1) -> MethodFiles:
    """`condenser baseline A|B|C`: teacher (cached) -> the baseline's condensations (resumable) -> file(s)."""
    from condenser.build import get_teacher, needs_teacher, selection_features
    from condenser.data import load_dataset

    if name not in ("A", "B", "C"):
        raise CondenserError(f"unknown baseline {name!r}; use A, B or C (`condenser build` makes the multisize set)")
    if cfg.soft_labels not in ("teacher", "none"):
        raise CondenserError(f"--soft-labels must be 'teacher' or 'none', got {cfg.soft_labels!r}")
    profile = cfg.settings
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root)
    ccfg = cfg.condense_config(profile)
    teacher = get_teacher(cfg, log) if needs_teacher(cfg, ccfg) else None
    features = selection_features(ccfg, teacher)
    sets = method_sets(name, cfg, profile, train, baseline_run_dir(cfg, profile, features), progress=progress,
                       workers=workers, log=log, features=features)
    return write_sized_sets(sets, out, cfg, profile, train, teacher, log=log)
