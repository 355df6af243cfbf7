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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import formats
from condenser.checkpoint import atomic_write_bytes, config_hash
from condenser.condense import CondenseConfig, CondenseResult, condense
from condenser.data import DEFAULT_DATASET, ArraySource, ImageDataset, get_source, load_dataset
from condenser.data.arrays import register
from condenser.device import resolve_device
from condenser.distributed import current
from condenser.errors import CondenserError
from condenser.paths import cache_root, runs_dir
from condenser.profiles import Profile, get_profile
from condenser.progress import stage
from condenser.relabel import RelabelConfig, relabel
from condenser.stages import STAGES, StageResult
from condenser.teacher import Teacher, TeacherConfig, load_teacher, train_teacher


@dataclass(frozen=True)
class BuildConfig:
    dataset: str = "fashion-mnist"
    ipc: int = 10
    profile: str = "cpu"
    method: str | None = None  # None: the profile's base method
    multisize: bool = True  # False = Baseline C (the base method alone, prefixes taken)
    freeze: str = "paper"
    class_wise: bool = False
    subset_weight: float = 1.0
    soft_labels: str = "teacher"  # teacher | none
    views: int | None = None  # None: the profile's views per image
    teacher_arch: str = "convnet"
    teacher_path: str | None = None
    codec: str = "topk-u8"
    topk: int | None = None  # None: min(num_classes, 10)
    pixels: str = "float16"
    embed_trainer: bool = True
    trainer_batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    data_root: str | None = None
    condense_overrides: dict = field(default_factory=dict)  # any CondenseConfig field
    method_settings: dict = field(default_factory=dict)  # settings of a decoupled method (sre2l, gvbsm, teddy)

    def condense_config(self, profile: Profile, init_offset: int = 0, ipc: int | None = None,
                        multisize: bool | None = None) -> CondenseConfig:
        budget = profile.condense
        cfg = CondenseConfig(
            method=self.method or budget.method,
            ipc=ipc or self.ipc,
            factor=budget.factor,
            outer_loops=budget.outer_loops,
            inner_loops=budget.inner_loops,
            period=budget.period,
            batch_real=budget.batch_real,
            n_data=budget.n_data,
            multisize=self.multisize if multisize is None else multisize,
            subset_weight=self.subset_weight,
            freeze=self.freeze,
            class_wise=self.class_wise,
            init_offset=init_offset,
            width=budget.width,
            seed=self.seed,
            device=self.device,
            amp=self.amp,
        )
        return replace(cfg, **self.condense_overrides)


@dataclass
class BuildOutput:
    path: Path
    result: CondenseResult
    teacher: Teacher | None
    seconds: dict[str, float]


def get_teacher(cfg: BuildConfig, log: Callable[[str], None] = print) -> Teacher:
    if cfg.teacher_path:
        return load_teacher(cfg.teacher_path, device=cfg.device)
    tcfg = TeacherConfig.from_profile(cfg.dataset, cfg.teacher_arch, cfg.profile, seed=0, data_root=cfg.data_root)
    return train_teacher(tcfg, device=cfg.device, log=log)


def run_dir_for(ccfg: CondenseConfig, dataset: str, fingerprint: str | None = None,
                data_root: str | None = None) -> Path:
    """A condensation's run directory: the dataset name, its training data's fingerprint (looked up by name
    unless given) and the configuration hash, so changed data never meets an old run's checkpoint."""
    data = fingerprint or load_dataset(dataset, "train", root=data_root).fingerprint
    stem = dataset.replace(":", "_").replace("/", "_")
    return runs_dir() / f"{stem}-{data[:8]}-{config_hash(asdict(ccfg))}"


def exporter_digest() -> str:
    """A digest of the exporter's source: condenser/export/*.py, condenser/models/*.py, and the runtime modules it
    traces or encodes with (the network definitions, the loss, the bundle layout)."""
    import hashlib

    import condenser.export
    import condenser.models
    import runtime.bundle
    import runtime.models
    import runtime.torch_losses

    sources = [s for package in (condenser.export, condenser.models)
               for s in sorted(Path(package.__file__).parent.glob("*.py"))]
    sources += [Path(m.__file__) for m in (runtime.bundle, runtime.models, runtime.torch_losses)]
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


def relabel_and_pack(
    cfg: BuildConfig,
    out: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    train: ImageDataset,
    teacher: Teacher | None,
    provenance: dict,
    profile: Profile,
    seconds: dict[str, float],
    models: Sequence[nn.Module] | None = None,
) -> Path:
    """Shared tail of every build: soft-label views (if any), trainer bundle, atomic write.

    `models` (an ensemble: mean of their probabilities) replaces `teacher` as the labeller when given.
    """
    spec = train.spec
    views = None
    relabel_cfg = RelabelConfig(views=cfg.views or profile.condense.views_per_image, flip=spec.allow_flip,
                                seed=cfg.seed)
    dist = current()
    if cfg.soft_labels == "teacher":
        labellers = list(models) if models else ([teacher.model] if teacher is not None else [])
        if not labellers:
            raise CondenserError("soft labels requested but no teacher was given")
        t0 = time.time()
        views = relabel(images, labellers, spec.num_classes, relabel_cfg, resolve_device(cfg.device))
        seconds["relabel"] = time.time() - t0
        provenance["relabel"] = asdict(relabel_cfg)
    if not dist.is_main:  # rank 0 writes the one file
        return Path(out)
    t0 = time.time()
    # the device trains the same network the server evaluates, so their per-size numbers compare
    trainer = (trainer_bundle_bytes(spec, cfg.trainer_batch_size, width=profile.evaluate.width)
               if cfg.embed_trainer else None)
    seconds["export_trainer"] = time.time() - t0
    provenance["seconds"] = seconds
    topk = cfg.topk or min(spec.num_classes, 10)
    return pack(out, images, labels, spec, views=views, codec=cfg.codec, topk=topk, pixels=cfg.pixels,
                temperature=relabel_cfg.temperature, trainer=trainer, provenance=provenance)


@STAGES.register("dm")
@STAGES.register("gm")
def condense_stage(cfg: BuildConfig, profile: Profile, train: ImageDataset, log: Callable[[str], None],
                   stop_after: int | None, seconds: dict[str, float]) -> StageResult:
    """gm/dm: teacher (for the soft labels) -> the condense loop with the multisize wrapper."""
    teacher = None
    if cfg.soft_labels == "teacher":
        t0 = time.time()
        dist = current()
        with dist.local_first("teacher training"):
            teacher = get_teacher(cfg, log)
        dist.broadcast_module(teacher.model, what="broadcast of the teacher")  # one labeller on every rank
        seconds["teacher"] = time.time() - t0

    ccfg = cfg.condense_config(profile)
    t0 = time.time()
    result = condense(ccfg, train, run_dir=run_dir_for(ccfg, cfg.dataset, train.fingerprint), stop_after=stop_after)
    seconds["condense"] = time.time() - t0
    provenance = {
        "method": "multisize" if ccfg.multisize else ccfg.method,
        "base_method": ccfg.method,
        "teacher": None if teacher is None else {k: teacher.meta[k] for k in
                                                   ("arch", "dataset", "test_accuracy", "config")},
    }
    return StageResult(result=result, relabel_models=[teacher.model] if teacher is not None else [],
                       teacher=teacher, provenance=provenance)


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
    profile = get_profile(cfg.profile)
    if profile.condense.factor != 1:
        raise CondenserError("packing multi-formation (factor > 1) images is not supported yet")
    seconds: dict[str, float] = {}
    train = load_dataset(cfg.dataset, "train", root=cfg.data_root)

    stage = STAGES.get(cfg.method or profile.condense.method)
    staged = stage(cfg, profile, train, log, stop_after, seconds)
    result = staged.result
    provenance = {
        **staged.provenance,
        "profile": profile.as_dict(),
        "build": asdict(cfg),
        "data": data_record(cfg, train),
        "environment": environment(),
        "distributed": current().describe(),
        "command": " ".join(sys.argv),
        **result.provenance(),
    }
    path = relabel_and_pack(cfg, out, result.images, result.labels, train, staged.teacher, provenance, profile,
                            seconds, models=staged.relabel_models)
    if current().is_main:
        log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return BuildOutput(path=path, result=result, teacher=staged.teacher, seconds=seconds)
