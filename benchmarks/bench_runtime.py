"""Device-runtime measurements for docs/RESULTS.md ("Runtime (device side)").

    python benchmarks/bench_runtime.py make-file --out /tmp/bench_rt      # bundle + IPC-10 FMNIST file (torch)
    python benchmarks/bench_runtime.py step --backend onnx --dir /tmp/bench_rt --threads 1
    python benchmarks/bench_runtime.py step --backend torch --dir /tmp/bench_rt --threads 1
    python benchmarks/bench_runtime.py compare --bundles A.trainer B.trainer --samples 7 --steps 5
    python benchmarks/bench_runtime.py sizes
    python benchmarks/bench_runtime.py load --dir /tmp/bench_rt
    python benchmarks/bench_runtime.py all --out /tmp/bench_rt             # everything, one process per backend

`step` runs in its own process and imports torch only for backend torch, so its peak RSS is what a
device training process with that backend costs. `compare` measures onnx trainers of several bundles
(an exporter before and after a change) next to the torch eager and torch.compile peers, samples
interleaved in one single-threaded process (CPU time, so it reads right on a shared machine; no RSS).
Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE, C, IPC, VIEWS, WIDTH, BATCH = (1, 28, 28), 10, 10, 10, 128, 64
FMNIST = Path("/usr/share/datasets/fashion-mnist")
RUNTIME_EXTRA = ["numpy", "msgpack", "onnxruntime"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -------------------------------------------------------------------------------------- make-file


MEAN, STD = (0.2860,), (0.3530,)


def export_bundle():
    """The benchmarked trainer bundle (ConvNet-D3 width 128, batch 64, default SGD), exported by this checkout."""
    import torch

    from condenser.export import ExportSettings, export_trainer

    torch.set_num_threads(1)
    return export_trainer(ExportSettings(arch="convnet", in_shape=SHAPE, num_classes=C, batch_size=BATCH, seed=0,
                                         model_kwargs={"width": WIDTH}, dataset="fashion-mnist", mean=MEAN, std=STD))


def fixed_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, soft targets, weights) of the trainer-only step measurements."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE)).astype(np.float32)
    return x, rng.dirichlet(np.ones(C), BATCH).astype(np.float32), np.ones(BATCH, np.float32)


def make_file(out: Path) -> dict:
    """Trainer bundle (convnet width 128, batch 64) and an IPC-10 file of real Fashion-MNIST images
    (the first 10 train images per class) with 10 random whole-pixel views each (topk-u8 labels)."""
    import formats
    from runtime.data import read_idx_dir

    out.mkdir(parents=True, exist_ok=True)
    mean, std = MEAN, STD
    t0 = time.perf_counter()
    bundle = export_bundle()
    export_s = time.perf_counter() - t0
    bundle.save(out / "convnet_w128_b64.trainer")
    x, y = read_idx_dir(FMNIST, "train")
    idx = np.stack([np.flatnonzero(y == c)[:IPC] for c in range(C)], 1).reshape(-1)  # IPC-major
    images = ((x[idx].astype(np.float32) / 255 - mean[0]) / std[0])[:, None]
    rng = np.random.default_rng(0)
    n, h, w = IPC * C, SHAPE[1], SHAPE[2]
    ch, cw = rng.integers(h // 2, h + 1, (n, VIEWS)), rng.integers(w // 2, w + 1, (n, VIEWS))
    crop = np.stack([rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1), ch, cw], -1).astype(np.float32)
    pool = (np.arange(n) // C + 1) * C
    partner = np.where(rng.random((n, VIEWS)) < 0.5, np.floor(rng.random((n, VIEWS)) * pool[:, None]), -1)
    box = np.where(partner[..., None] >= 0, np.array([7, 7, 14, 14], np.float32), 0).astype(np.float32)
    lam = (1 - box[..., 2] * box[..., 3] / (h * w)).astype(np.float32)
    targets = rng.dirichlet(np.ones(C) * 0.3, (n, VIEWS)).astype(np.float32)
    views = formats.Views(crop=crop, flip=rng.random((n, VIEWS)) < 0.5, mix_partner=partner.astype(np.int32),
                          mix_box=box, mix_lam=lam, targets=targets)
    data = formats.MDCData(dataset="fashion-mnist", class_names=[str(i) for i in range(C)], image_shape=SHAPE,
                           images=images, labels=np.tile(np.arange(C), IPC), mean=mean, std=std,
                           pixel_encoding="uint8", views=views, codec="topk-u8", topk=5, label_kind="probs",
                           trainer_bundle=bundle.to_bytes())
    formats.write_mdc(out / "fmnist_ipc10.mdc", data)
    return {"bench": "make-file", "export_seconds": round(export_s, 1),
            "bundle_bytes": len(bundle.to_bytes()), "mdc_bytes": (out / "fmnist_ipc10.mdc").stat().st_size}


# ------------------------------------------------------------------------------------------ step


def step(backend: str, d: Path, threads: int, steps: int, epochs: int) -> dict:
    """Trainer-only step time on fixed batches, then a full runtime.train on the IPC-10 file; peak RSS."""
    import runtime
    from runtime.backends import ModelSpec, make_trainer

    rss0 = peak_rss_mb()
    bundle = runtime.TrainerBundle.load(d / "convnet_w128_b64.trainer")
    tr = make_trainer(backend, ModelSpec.from_bundle(bundle), bundle, bundle.initial_params(), threads=threads)
    x, t, w = fixed_batch()
    for _ in range(3):
        tr.step(0.01, x, t, w)
    times, cpu0 = [], time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        tr.step(0.01, x, t, w)
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / steps  # CPU seconds: robust to other processes on shared cores
    del tr
    ds = runtime.load(d / "fmnist_ipc10.mdc", budget=IPC)
    cpu0 = time.process_time()
    model = runtime.train(ds, backend=backend, epochs=epochs, threads=threads, seed=0)
    train_cpu = (time.process_time() - cpu0) / model.steps
    return {"bench": "step", "backend": backend, "threads": threads, "batch": BATCH, "width": WIDTH,
            "step_cpu_ms": round(1000 * cpu, 1),
            "step_wall_ms_min": round(1000 * float(np.min(times)), 1),
            "step_wall_ms_median": round(1000 * float(np.median(times)), 1),
            "train_cpu_ms_per_step_with_views": round(1000 * train_cpu, 1),
            "train_wall_ms_per_step_with_views": round(1000 * model.seconds / model.steps, 1),
            "train_steps": model.steps, "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_after_python_start_mb": round(rss0, 1), "torch_imported": "torch" in sys.modules}


# --------------------------------------------------------------------------------------- compare

PEERS = ("eager", "compile")


def _peer(name: str, bundle) -> object:
    """The torch backend's trainer on the bundle's network and initial parameters, eager or with its network
    through torch.compile (inductor, forward and backward; loss and SGD stay eager, as in bench_hotpaths)."""
    import torch

    from runtime.backends import ModelSpec, make_trainer

    tr = make_trainer("torch", ModelSpec.from_bundle(bundle), bundle, bundle.initial_params(), threads=1)
    if name == "compile":
        tr.model = torch.compile(tr.model)
    return tr


def compare(bundles: list[Path], peers: list[str], samples: int, steps: int) -> dict:
    """CPU time per step of onnx trainers on several bundles and of torch peers, in one single-threaded
    process: every sample (`steps` steps) of each trainer in turn, round-robin, so the load of a shared
    machine spreads over all of them alike; medians of the samples, and of each trainer's ratio to the first
    trainer within a round."""
    import runtime
    from runtime.backends import ModelSpec, make_trainer

    x, t, w = fixed_batch()
    trainers: dict[str, object] = {}
    for path in bundles:
        bundle = runtime.TrainerBundle.load(path)
        trainers[f"onnx {path}"] = make_trainer("onnx", ModelSpec.from_bundle(bundle), bundle,
                                                 bundle.initial_params(), threads=1)
    for name in peers:
        trainers[f"torch {name}"] = _peer(name, runtime.TrainerBundle.load(bundles[0]))
    for tr in trainers.values():
        for _ in range(3):  # warm-up, and the compile
            tr.step(0.01, x, t, w)
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(samples):
        for k, tr in trainers.items():
            c0 = time.process_time()
            for _ in range(steps):
                tr.step(0.01, x, t, w)
            cpu[k].append(1000 * (time.process_time() - c0) / steps)
    first = np.array(next(iter(cpu.values())))
    return {"bench": "compare", "batch": BATCH, "width": WIDTH, "threads": 1, "steps_per_sample": steps,
            "step_cpu_ms_median": {k: round(float(np.median(v)), 1) for k, v in cpu.items()},
            # each sample over the first trainer's sample of the same round: the load of the moment cancels
            "ratio_to_first_median": {k: round(float(np.median(np.array(v) / first)), 3) for k, v in cpu.items()},
            "step_cpu_ms_samples": {k: [round(c, 1) for c in v] for k, v in cpu.items()},
            "load_average_1min": round(os.getloadavg()[0], 1)}


# ----------------------------------------------------------------------------------------- sizes


def _closure(names: list[str]) -> set[str]:
    """Installed distributions needed by `names` (requirements followed, markers evaluated, no extras)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _dist_bytes(name: str) -> int:
    import importlib.metadata as md

    total = 0
    for f in md.distribution(name).files or []:
        p = Path(f.locate())
        if p.is_file():
            total += p.stat().st_size
    return total


def sizes() -> dict:
    runtime_set = _closure(RUNTIME_EXTRA)
    server_set = _closure(["torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "numpy", "msgpack",
                           "typer", "rich", "matplotlib", "safetensors"])
    rb = {n: _dist_bytes(n) for n in sorted(runtime_set)}
    sb = {n: _dist_bytes(n) for n in sorted(server_set)}
    gpu = {n for n in sb if n.startswith(("nvidia-", "cuda-", "triton"))}
    mb = 1 << 20
    return {"bench": "sizes", "runtime_extra_mb": round(sum(rb.values()) / mb, 1),
            "runtime_extra": {n: round(b / mb, 1) for n, b in rb.items()},
            "server_mb": round(sum(sb.values()) / mb, 1),
            "server_without_cuda_wheels_mb": round(sum(b for n, b in sb.items() if n not in gpu) / mb, 1),
            "torch_mb": round(sb.get("torch", 0) / mb, 1),
            "server_largest": {n: round(b / mb, 1) for n, b in sorted(sb.items(), key=lambda kv: -kv[1])[:8]}}


# ------------------------------------------------------------------------------------------ load


def load(d: Path, repeats: int) -> dict:
    """Median wall time of runtime.load(file, budget=k) for k = 1..10 (file in the page cache)."""
    import formats
    import runtime

    path = d / "fmnist_ipc10.mdc"
    rows = []
    with formats.open_mdc(path) as r:
        nbytes = {k: r.prefix_nbytes(k) for k in range(1, r.ipc_max + 1)}
    for k in range(1, IPC + 1):
        runtime.load(path, budget=k)
        ts, tr = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runtime.load(path, budget=k)
            t1 = time.perf_counter()
            with formats.open_mdc(path) as r:  # the blocks alone: no trainer bundle, no Dataset checks
                r.read(k)
            ts.append(t1 - t0)
            tr.append(time.perf_counter() - t1)
        rows.append({"ipc": k, "load_ms": round(1000 * float(np.median(ts)), 2),
                     "blocks_only_ms": round(1000 * float(np.median(tr)), 2), "prefix_bytes": nbytes[k]})
    return {"bench": "load", "repeats": repeats, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["make-file", "step", "compare", "sizes", "load", "all"])
    p.add_argument("--out", "--dir", dest="dir", type=Path, default=Path("/tmp/bench_rt"))
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--bundles", type=Path, nargs="+", help="compare: trainer bundles (default: the one in --dir)")
    p.add_argument("--peers", default=",".join(PEERS), help="compare: torch peers among eager,compile ('' none)")
    p.add_argument("--samples", type=int, default=7, help="compare: samples per trainer")
    a = p.parse_args()
    if a.what == "make-file":
        print(json.dumps(make_file(a.dir)))
    elif a.what == "step":
        print(json.dumps(step(a.backend, a.dir, a.threads, a.steps, a.epochs)))
    elif a.what == "compare":
        peers = [n for n in a.peers.split(",") if n]
        if set(peers) - set(PEERS):
            p.error(f"--peers: choose among {', '.join(PEERS)}")
        bundles = a.bundles or [a.dir / "convnet_w128_b64.trainer"]
        print(json.dumps(compare(bundles, peers, a.samples, a.steps)))
    elif a.what == "sizes":
        print(json.dumps(sizes()))
    elif a.what == "load":
        print(json.dumps(load(a.dir, a.repeats)))
    else:
        me = [sys.executable, __file__]
        if not (a.dir / "fmnist_ipc10.mdc").exists():
            subprocess.run(me + ["make-file", "--out", str(a.dir)], check=True)
        for backend in ("onnx", "torch"):
            subprocess.run(me + ["step", "--backend", backend, "--dir", str(a.dir), "--threads", str(a.threads),
                                 "--steps", str(a.steps), "--epochs", str(a.epochs)], check=True)
        subprocess.run(me + ["load", "--dir", str(a.dir), "--repeats", str(a.repeats)], check=True)
        subprocess.run(me + ["sizes"], check=True)


if __name__ == "__main__":
    main()
