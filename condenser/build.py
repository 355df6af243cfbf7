"""The build pipeline behind `condenser build`: teacher -> condense -> relabel -> pack one .mdc.

Every stage is resumable: the teacher is cached by (dataset, arch, profile, data fingerprint), the
condensation checkpoints every period into a run directory keyed by its configuration and the training
data's fingerprint, and the file is written atomically at the end. Rerunning the same command after an
interrupt continues where it stopped; rerunning it after the data changed trains and condenses anew.

`build(cfg, out)` condenses the dataset that `cfg.dataset` names; `build(cfg, out, data=from_arrays(...))`
the user's in-memory arrays (condenser.data.arrays; README "Python API").

Under torchrun (condenser.distributed) every rank runs this pipeline on its shard: each node's local
rank 0 trains/caches the teacher first and rank 0's weights are broadcast, the stage condenses its share
of classes (or IPC chunks) and gathers the images, the relabelling labels a share of the views, and rank
0 alone exports the trainer and writes the file.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import formats
from condenser.checkpoint import atomic_write_bytes, config_hash
from condenser.condense import CondenseConfig, CondenseResult, condense, run_config_key
from condenser.config import ConfigError
from condenser.config.tree import Config
from condenser.data import DEFAULT_DATASET, ArraySource, DatasetSpec, ImageDataset, get_source, load_dataset
from condenser.data.arrays import register
from condenser.device import resolve_device
from condenser.distributed import current
from condenser.errors import CondenserError
from condenser.methods import METHODS
from condenser.methods.selection import SELECTIONS, FeatureSource
from condenser.paths import cache_root, runs_dir
from condenser.profiles import get_profile
from condenser.progress import stage
from condenser.relabel import RelabelConfig, label_record, relabel
from condenser.stages import STAGES, StageResult
from condenser.teacher import Teacher, TeacherConfig, load_teacher, train_teacher


@dataclass(frozen=True)
class BuildConfig:
    """One build: the data and its size, the resolved settings tree (condenser.config.tree; each stage takes its
    own section), the labels and where it runs. Without settings it builds with the cpu profile."""

    dataset: str = DEFAULT_DATASET
    ipc: int = 10
    settings: Config = field(default_factory=lambda: get_profile("cpu"))
    soft_labels: str = "teacher"  # teacher (soft-label views) | none (hard labels only)
    teacher_path: str | None = None  # a teacher.safetensors instead of the cached/trained teacher
    seed: int = 0  # condensation, relabelling and recover seed
    device: str = "auto"
    data_root: str | None = None

    @property
    def profile(self) -> str:
        """The name of the profile the settings were resolved from."""
        return self.settings.name

    def record(self) -> dict:
        """What the file's provenance says about the job itself (the tree is recorded beside it)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"},
                "profile": self.profile}

    def condense_config(self, settings: Config | None = None) -> CondenseConfig:
        """The condense section of `settings` (default: this build's) as this build's run of its method."""
        tree = settings or self.settings
        name = tree.method.name
        if name not in METHODS:
            raise ConfigError(f"method.name {name!r} does not run the condense loop; valid here: "
                              f"{', '.join(m for m in METHODS.names() if m in tree.method.methods())}")
        return replace(tree.condense, method=name, ipc=self.ipc, seed=self.seed, device=self.device,
                       method_settings=asdict(tree.method.settings(name)))


@dataclass
class BuildOutput:
    path: Path
    result: CondenseResult
    teacher: Teacher | None
    seconds: dict[str, float]


def get_teacher(cfg: BuildConfig, log: Callable[[str], None] = print) -> Teacher:
    if cfg.teacher_path:
        return load_teacher(cfg.teacher_path, device=cfg.device)
    tcfg = TeacherConfig.from_profile(cfg.dataset, None, cfg.settings, seed=0, data_root=cfg.data_root)
    return train_teacher(tcfg, device=cfg.device, log=log)


def run_dir_for(ccfg: CondenseConfig, dataset: str, fingerprint: str | None = None,
                data_root: str | None = None, features: FeatureSource | None = None) -> Path:
    """A condensation's run directory: the dataset name, its training data's fingerprint (looked up by name
    unless given) and the configuration hash (with the selection init's network, `run_config_key`), so
    changed data or another teacher never meets an old run's checkpoint."""
    data = fingerprint or load_dataset(dataset, "train", root=data_root).fingerprint
    stem = dataset.replace(":", "_").replace("/", "_")
    return runs_dir() / f"{stem}-{data[:8]}-{config_hash(run_config_key(ccfg, features))}"


def exporter_digest() -> str:
    """A digest of the exporter's source: condenser/export/*.py, condenser/models/*.py, and the runtime modules it
    traces or encodes with (the network definitions, the loss, the bundle layout)."""
    import hashlib

    import condenser.export
    import condenser.models
    import runtime.bundle
    import runtime.models
    import runtime.torch_losses
    import runtime.torch_step
    import runtime.user_models

    sources = [s for package in (condenser.export, condenser.models)
               for s in sorted(Path(package.__file__).parent.glob("*.py"))]
    sources += [Path(m.__file__) for m in (runtime.bundle, runtime.models, runtime.torch_losses, runtime.torch_step,
                                           runtime.user_models)]
    h = hashlib.sha256()
    for source in sources:
        h.update(source.name.encode())
        h.update(source.read_bytes())
    return h.hexdigest()[:16]


def trainer_bundle_bytes(spec, batch_size: int, width: int = 128) -> bytes:
    """The device trainer (ConvNet-D3 train-step + inference graphs) to embed before the blocks.

    Exporting traces and converts the graphs (tens of seconds on a CPU), so bundles are cached by
    their settings, the installed torch version and the exporter's own source: a changed exporter must
    not keep serving graphs it would no longer produce.
    """
    from condenser.export import ExportSettings, export_trainer

    settings = ExportSettings(arch="convnet", in_shape=tuple(spec.image_shape), num_classes=spec.num_classes,
                              batch_size=batch_size, dataset=spec.name, mean=tuple(spec.mean),
                              std=tuple(spec.std), model_kwargs={"width": width}, params="seeded")
    key = config_hash({"settings": asdict(settings), "torch": torch.__version__, "exporter": exporter_digest()})
    cached = cache_root() / "trainers" / f"{key}.bundle"
    if cached.exists():
        return cached.read_bytes()
    with stage(f"export the device trainer (ONNX train step, batch {batch_size})"):
        blob = export_trainer(settings).to_bytes()
    atomic_write_bytes(cached, blob)
    return blob


def pack(
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec,
    *,
    views: formats.Views | None,
    codec: str,
    topk: int | None,
    pixels: str,
    temperature: float,
    trainer: bytes | None,
    provenance: dict,
    formation_factor: int = 1,
) -> Path:
    """Write one nested .mdc (atomically) from IPC-major images and labels."""
    data = formats.MDCData(
        dataset=spec.name,
        class_names=list(spec.class_names),
        image_shape=tuple(spec.image_shape),
        images=images.detach().cpu().float().numpy(),
        labels=labels.detach().cpu().numpy().astype(np.int64),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        pixel_encoding=pixels,
        views=views,
        codec=codec,
        topk=topk if views is not None else None,
        label_kind="probs",
        temperature=temperature,
        trainer_bundle=trainer,
        provenance=provenance,
        formation_factor=formation_factor,
    )
    formats.write_mdc(path, data)
    return Path(path)


def environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def relabel_config(section: RelabelConfig, spec: DatasetSpec, seed: int) -> RelabelConfig:
    """The `relabel` section as this build's labelling: flipped views only where the dataset allows flips."""
    return replace(section, flip=section.flip and spec.allow_flip, seed=seed)


def relabel_and_pack(
    cfg: BuildConfig,
    out: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    train: ImageDataset,
    teacher: Teacher | None,
    provenance: dict,
    settings: Config,
    seconds: dict[str, float],
    models: Sequence[nn.Module] | None = None,
    factor: int = 1,
) -> Path:
    """Shared tail of every build: soft-label views (if any), trainer bundle, atomic write, with the `relabel`,
    `pack` and `evaluate` sections of `settings` (the trainer is the evaluation network).

    `models` (an ensemble: mean of their probabilities) replaces `teacher` as the labeller when given;
    `factor` > 1: `images` are multi-formation images, labelled on their decoded training images.
    """
    spec = train.spec
    views = None
    relabel_cfg = relabel_config(settings.relabel, spec, cfg.seed)
    packing = settings.pack
    dist = current()
    topk = packing.topk if packing.topk is not None else min(spec.num_classes, 10)
    if cfg.soft_labels == "teacher":
        labellers = list(models) if models else ([teacher.model] if teacher is not None else [])
        if not labellers:
            raise CondenserError("soft labels requested but no teacher was given")
        t0 = time.time()
        views = relabel(images, labellers, spec.num_classes, relabel_cfg, resolve_device(cfg.device), factor=factor)
        seconds["relabel"] = time.time() - t0
        provenance["relabel"] = asdict(relabel_cfg)
        provenance["soft_labels"] = label_record(relabel_cfg, views, spec.num_classes, tuple(spec.image_shape[1:]),
                                                 factor, packing.codec, topk)
    if not dist.is_main:  # rank 0 writes the one file
        return Path(out)
    t0 = time.time()
    # the device trains the same network the server evaluates, so their per-size numbers compare
    trainer = (trainer_bundle_bytes(spec, packing.trainer_batch_size, width=settings.evaluate.width)
               if packing.embed_trainer else None)
    seconds["export_trainer"] = time.time() - t0
    provenance["seconds"] = seconds
    return pack(out, images, labels, spec, views=views, codec=packing.codec, topk=topk, pixels=packing.pixels,
                temperature=relabel_cfg.temperature, trainer=trainer, provenance=provenance, formation_factor=factor)


@STAGES.register("dm")
@STAGES.register("gm")
def condense_stage(cfg: BuildConfig, settings: Config, train: ImageDataset, log: Callable[[str], None],
                   stop_after: int | None, seconds: dict[str, float]) -> StageResult:
    """gm/dm: teacher (for the soft labels) -> the condense loop with the multisize wrapper."""
    ccfg = cfg.condense_config(settings)
    teacher = None
    if needs_teacher(cfg, ccfg):
        t0 = time.time()
        dist = current()
        with dist.local_first("teacher training"):
            teacher = get_teacher(cfg, log)
        dist.broadcast_module(teacher.model, what="broadcast of the teacher")  # one labeller on every rank
        seconds["teacher"] = time.time() - t0
    features = selection_features(ccfg, teacher)
    t0 = time.time()
    run_dir = run_dir_for(ccfg, cfg.dataset, train.fingerprint, features=features)
    result = condense(ccfg, train, run_dir=run_dir, stop_after=stop_after, features=features)
    seconds["condense"] = time.time() - t0
    provenance = {
        "method": "multisize" if ccfg.multisize.enabled else ccfg.method,
        "base_method": ccfg.method,
        "teacher": None if teacher is None else {k: teacher.meta[k] for k in
                                                   ("arch", "dataset", "test_accuracy", "config")},
    }
    return StageResult(result=result, relabel_models=[teacher.model] if teacher is not None else [],
                       teacher=teacher, provenance=provenance)


def needs_teacher(cfg: BuildConfig, ccfg: CondenseConfig) -> bool:
    """The teacher labels the views, and its features choose the real images a selection init starts from."""
    return cfg.soft_labels == "teacher" or ccfg.init in SELECTIONS


def selection_features(ccfg: CondenseConfig, teacher: Teacher | None) -> FeatureSource | None:
    """The network a selection init (herding, kmeans) embeds with: the teacher; None for the other inits."""
    return teacher.features() if teacher is not None and ccfg.init in SELECTIONS else None


def data_record(cfg: BuildConfig, train: ImageDataset) -> dict:
    """What the file's provenance says about the data: the source's choices (a held-out split's fraction and
    seed, for instance) and the training set's size and fingerprint."""
    return {**get_source(cfg.dataset).describe(), "train_images": len(train), "train_fingerprint": train.fingerprint}


def with_data(cfg: BuildConfig, data: ArraySource | None) -> BuildConfig:
    """`cfg` building from `data` (in-memory arrays, registered under their name) when given."""
    if data is None:
        return cfg
    if not isinstance(data, ArraySource):
        raise CondenserError(f"data= takes condenser.data.from_arrays(...), got {type(data).__name__}; "
                             "name a dataset with BuildConfig(dataset=...) instead")
    if cfg.dataset not in (DEFAULT_DATASET, data.name):
        raise CondenserError(f"BuildConfig(dataset={cfg.dataset!r}) and data={data.name!r} both name the data; "
                             "give one of them")
    register(data)  # the stages load it by name, like any dataset
    return replace(cfg, dataset=data.name, data_root=None)


def build(
    cfg: BuildConfig,
    out: str | Path,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    *,
    data: ArraySource | None = None,
) -> BuildOutput:
    """Run the whole pipeline and write `out`: from `cfg.dataset`, or from `data`
    (condenser.data.from_arrays). `stop_after` (outer loops or recover chunks) simulates an interrupt:
    condenser.resume.Interrupted, and rerunning resumes."""
    cfg = with_data(cfg, data)
    if cfg.soft_labels not in ("teacher", "none"):
        raise CondenserError(f"--soft-labels must be 'teacher' or 'none', got {cfg.soft_labels!r}")
    settings = cfg.settings.checked()
    seconds: dict[str, float] = {}
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root)

    stage = STAGES.get(settings.method.name)
    staged = stage(cfg, settings, train, log, stop_after, seconds)
    result = staged.result
    provenance = {
        **staged.provenance,
        "settings": settings.as_dict(),
        "build": cfg.record(),
        "data": data_record(cfg, train),
        "environment": environment(),
        "distributed": current().describe(),
        "command": " ".join(sys.argv),
        **result.provenance(),
    }
    path = relabel_and_pack(cfg, out, result.images, result.labels, train, staged.teacher, provenance, settings,
                            seconds, models=staged.relabel_models, factor=result.factor)
    if current().is_main:
        log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return BuildOutput(path=path, result=result, teacher=staged.teacher, seconds=seconds)
