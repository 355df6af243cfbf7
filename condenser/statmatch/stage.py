"""`condenser build --method sre2l|gvbsm|teddy`: teacher pool -> recover -> nested order.

Two schedules. `per-ipc` (the papers): every IPC index is recovered independently, then each class's
images are put in herding order on the first teacher's features. `joint` (small sets): all images in one
batch through condenser.condense, so the multisize subset loss, MLS selection and freezing apply.
With multi-formation (`condense.factor` f > 1) `per-ipc` becomes `formed`: no recovery; every stored image is
f x f real crops ranked by the pool (RDED's construction, condenser/statmatch/formed.py), and herding orders
the stored images. Relabelling (the whole pool's ensemble, on the decoded images) and packing are the build's
shared tail.

Under torchrun, `per-ipc` shards chunks of IPC indices over the ranks (condenser.statmatch.recover): the
pool is trained/cached by each node's local rank 0 first and rank 0's weights are broadcast, every rank
recovers its chunks, the images are gathered and herded identically everywhere (rank 0's order is
broadcast). `joint` optimises one batch of all classes (shared BN statistics) and is refused when sharded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import torch

from condenser.checkpoint import config_hash
from condenser.condense import CondenseResult, condense, dataset_fingerprint
from condenser.config.tree import Config
from condenser.data import ImageDataset
from condenser.device import resolve_device
from condenser.distributed import current
from condenser.methods import MethodConfigError
from condenser.paths import runs_dir
from condenser.registry import Registry
from condenser.stages import STAGES, StageResult
from condenser.statmatch.cache import cached_conv_stats, model_hash
from condenser.statmatch.formed import FormationConfig, formed_images
from condenser.statmatch.joint import METHOD_NAME, JointStatMatch  # noqa: F401  (registers the joint method)
from condenser.statmatch.objective import StatMatchObjective
from condenser.statmatch.order import herd
from condenser.statmatch.pool import TeacherPool
from condenser.statmatch.recover import recover
from condenser.statmatch.settings import PRESETS, DecoupledSettings
from condenser.statmatch.teachers import PoolContext, build_pool
from condenser.teacher import Teacher

NESTING = {
    "per-ipc": "independent per-IPC-index recovery (no prefix co-adaptation) + herding order on teacher features",
    "joint": "one joint batch with the multisize subset loss (MLS prefix statistics) and freezing",
    "formed": "f x f teacher-ranked real crops per stored image (RDED-style) + herding order of the stored images "
              "on the mean teacher feature of their decoded images",
}


def _run_dir(dataset: str, method: str, digest: str):
    return runs_dir() / f"{dataset.replace(':', '_').replace('/', '_')}-{method}-{digest}"


def per_ipc_schedule(method: str, cfg: Any, settings: Config, s: DecoupledSettings, train: ImageDataset,
                     pool: TeacherPool, stats: list[dict | None], stats_paths: list[str | None], run_hash: str,
                     stop_after: int | None) -> tuple[CondenseResult, dict]:
    rcfg = s.recover_config(cfg.seed)
    objective = StatMatchObjective(pool, rcfg.match, stats)
    try:
        rr = recover(objective, train, cfg.ipc, rcfg, resolve_device(cfg.device),
                     run_dir=_run_dir(cfg.dataset, method, run_hash), run_hash=run_hash, stop_after=stop_after)
    finally:
        objective.close()
    images, extra = rr.images, {"recover_losses": rr.losses}
    if s.order == "herding":
        images, order = herd(images, pool.members[0].model, train, s.herding_real, cfg.seed)
        dist = current()  # identical on CPU; on CUDA rank 0's order is the one every rank relabels
        images = dist.broadcast(images, what="broadcast of the herded images")
        order = dist.broadcast(order, what="broadcast of the herding order")
        extra["herding_order"] = order.tolist()
    c = train.spec.num_classes
    result = CondenseResult(
        images=images, labels=rr.labels, ipc=cfg.ipc, num_classes=c, factor=1, mls_history=[],
        timings={"elapsed_s": rr.seconds, "device": str(resolve_device(cfg.device)),
                 "threads": torch.get_num_threads()},
        config={"method": method, "schedule": "per-ipc", "recover": asdict(rcfg)},
        init_indices=torch.zeros(c, 0, dtype=torch.int64), outer_loops_done=rcfg.iterations)
    return result, extra


def joint_schedule(method: str, cfg: Any, settings: Config, s: DecoupledSettings, train: ImageDataset,
                   pool: TeacherPool, stats: list[dict | None], stats_paths: list[str | None], run_hash: str,
                   stop_after: int | None) -> tuple[CondenseResult, dict]:
    c = train.spec.num_classes
    if cfg.ipc * c > s.joint_max_images:
        raise MethodConfigError(f"joint schedule: {cfg.ipc}x{c} images exceed joint_max_images={s.joint_max_images}; "
                                "use schedule per-ipc")
    first = pool.members[0]
    if first.arch != "convnet":
        raise MethodConfigError(f"joint schedule: the first teacher must be a convnet (MLS features), got {first.arch}")
    kw = first.meta.get("model_kwargs", {})
    joint = {"members": [m.path for m in pool.members], "conv_stats": stats_paths, "sampling": s.sampling,
             "k": s.k, "match": asdict(s.recover.match), "aug": asdict(s.recover.aug), "lr": s.joint_lr,
             "pool_hash": run_hash}
    # the condense section's loop budgets and multisize rule; the network is the first teacher's
    ccfg = replace(settings.condense, method=METHOD_NAME, ipc=cfg.ipc, init="random", model="convnet",
                   width=kw.get("width", 128), depth=kw.get("depth", 3), norm=kw.get("norm", "instance"),
                   method_settings=joint, seed=cfg.seed, device=cfg.device, precision="fp32")
    result = condense(ccfg, train, run_dir=_run_dir(cfg.dataset, method, config_hash(asdict(ccfg))),
                      stop_after=stop_after)
    return result, {}


def formed_schedule(method: str, cfg: Any, settings: Config, s: DecoupledSettings, train: ImageDataset,
                    pool: TeacherPool, stats: list[dict | None], stats_paths: list[str | None], run_hash: str,
                    stop_after: int | None) -> tuple[CondenseResult, dict]:
    """Multi-formation: stored images of f x f real crops ranked by the pool's ensemble, in herding order
    (s.order) over stored images. Forward passes only, so nothing is checkpointed (a rerun recomputes it)."""
    t0 = time.time()
    fcfg = FormationConfig(factor=settings.condense.factor, seed=cfg.seed)
    order_model = pool.members[0].model if s.order == "herding" else None
    images, labels, record = formed_images(pool.models, order_model, train, cfg.ipc, fcfg, s.herding_real)
    dist = current()  # identical on CPU; on CUDA rank 0's images are the ones every rank relabels
    images = dist.broadcast(images, what="broadcast of the formed images")
    c = train.spec.num_classes
    result = CondenseResult(
        images=images, labels=labels, ipc=cfg.ipc, num_classes=c, factor=fcfg.factor, mls_history=[],
        timings={"elapsed_s": time.time() - t0, "device": str(resolve_device(cfg.device)),
                 "threads": torch.get_num_threads()},
        config={"method": method, "schedule": "formed", "formation": asdict(fcfg)},
        init_indices=torch.tensor(record["sources"], dtype=torch.int64), outer_loops_done=0)
    extra = {"formation": record}
    if "herding_order" in record:  # where the per-ipc schedule records it too
        extra["herding_order"] = record.pop("herding_order")
    return result, extra


SCHEDULES: Registry[Callable[..., tuple[CondenseResult, dict]]] = Registry("decoupled schedule")
SCHEDULES.add("per-ipc", per_ipc_schedule)
SCHEDULES.add("joint", joint_schedule)
SCHEDULES.add("formed", formed_schedule)


def schedule_name(s: DecoupledSettings, factor: int) -> str:
    """The schedule a build runs: `formed` where per-ipc meets condense.factor > 1 (recovered images have no
    patches to decode), else the settings' own."""
    return "formed" if s.schedule == "per-ipc" and factor > 1 else s.schedule


def decoupled_stage(method: str):
    """The build stage of one preset (sre2l, gvbsm, teddy)."""

    def stage(cfg: Any, settings: Config, train: ImageDataset, log: Callable[[str], None], stop_after: int | None,
              seconds: dict[str, float]) -> StageResult:
        s: DecoupledSettings = settings.method.settings(method)
        name = schedule_name(s, settings.condense.factor)
        dist = current()
        if dist.sharded and name == "joint":
            raise MethodConfigError(f"{method}: the joint schedule optimises one batch of all classes and cannot be "
                                    f"sharded over {dist.world_size} processes; use schedule per-ipc or one process")
        t0 = time.time()
        with dist.local_first(f"{method} teacher pool"):
            # the pool's teachers train with the tree's teacher section (condenser.teacher.TeacherConfig.from_profile)
            pool = build_pool(PoolContext(cfg.dataset, settings, train, cfg.data_root, cfg.device, cfg.seed, log), s)
        for m in pool.members:
            dist.broadcast_module(m.model, what=f"broadcast of teacher {m.arch}")
        seconds["teacher"] = time.time() - t0
        stats: list[dict | None] = [None] * len(pool)
        paths: list[str | None] = [None] * len(pool)
        if s.recover.match.conv_weight > 0 and name != "formed":  # formed images match no statistics
            t0 = time.time()
            with dist.local_first(f"{method} conv statistics"):
                for i, m in enumerate(pool.members):
                    stats[i], p = cached_conv_stats(m.model, train, m.arch, s.recover.match.patch, s.stat_images)
                    paths[i] = str(p)
            seconds["statistics"] = time.time() - t0
        run_hash = config_hash({"method": method, "settings": asdict(s), "ipc": cfg.ipc, "seed": cfg.seed,
                                "pool": [model_hash(m.model) for m in pool.members],
                                "data": dataset_fingerprint(train)})
        t0 = time.time()
        schedule = SCHEDULES.get(name)
        result, extra = schedule(method, cfg, settings, s, train, pool, stats, paths, run_hash, stop_after)
        seconds["condense"] = time.time() - t0
        first = pool.members[0]
        describe = pool.describe()
        provenance = {
            "method": method, "base_method": method, "schedule": name, "nesting": NESTING[name],
            "teacher": describe[0], "teachers": describe, **extra,  # its settings: provenance.settings.method
        }
        return StageResult(result=result, relabel_models=pool.models if cfg.soft_labels == "teacher" else [],
                           teacher=Teacher(model=first.model, meta=first.meta), provenance=provenance)

    return stage


for _name in PRESETS.names():  # one stage per preset, registered beside the stage's definition
    STAGES.add(_name, decoupled_stage(_name))
