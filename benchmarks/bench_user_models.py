"""Users' own models on the device runtime, for docs/RESULTS.md ("Users' own models", issue 18).

    python benchmarks/bench_user_models.py all --out /tmp/bench_user    # export, then one process per run
    python benchmarks/bench_user_models.py export --out /tmp/bench_user
    python benchmarks/bench_user_models.py step --model convnet-bn --backend onnx --dir /tmp/bench_user

Two networks at batch 64 on 1x28x28 inputs, 10 classes: ConvNet-D3 (width 128) with BatchNorm, and the
MobileNet-like net of examples/user_models.py (depthwise convs as Conv2d with groups, BatchNorm, max and
global average pooling, dropout). `step` runs in its own single-threaded process and imports torch only for
backend torch, so its peak RSS is what a device training process with that backend costs; it prints one
JSON line with the CPU and wall time per step and the losses of the timed steps (for the parity check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE, C, BATCH = (1, 28, 28), 10, 64
MODELS = {
    "convnet-bn": ("convnet", {"width": 128, "norm": "batch"}),
    "mobilenet": ("examples.user_models:mobilenet_like", {"width": 16}),
}


def peak_rss_mb() -> float:
    """VmHWM of this process: unlike ru_maxrss, it starts afresh at exec (ru_maxrss keeps the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export(out: Path) -> list[dict]:
    """One trainer bundle per model (SGD momentum 0.9, soft cross-entropy, stored initial parameters)."""
    import torch

    from condenser.export import ExportSettings, export_trainer

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (arch, kwargs) in MODELS.items():
        t0 = time.perf_counter()
        bundle = export_trainer(ExportSettings(arch=arch, in_shape=SHAPE, num_classes=C, batch_size=BATCH, seed=0,
                                               model_kwargs=kwargs))
        seconds = time.perf_counter() - t0
        bundle.save(out / f"{name}.trainer")
        rows.append({"bench": "export", "model": name, "export_seconds": round(seconds, 1),
                     "params": int(sum(p.size for p in bundle.params)), "buffers": len(bundle.buffers),
                     "train_step_bytes": len(bundle.train_step), "inference_bytes": len(bundle.inference),
                     "bundle_bytes": len(bundle.to_bytes())})
    return rows


def step(model: str, backend: str, d: Path, steps: int) -> dict:
    """3 warm-up and `steps` timed train steps on one fixed batch, from the bundle's initial state."""
    import runtime
    from runtime.backends import ModelSpec, make_trainer

    rss0 = peak_rss_mb()
    bundle = runtime.TrainerBundle.load(d / f"{model}.trainer")
    tr = make_trainer(backend, ModelSpec.from_bundle(bundle), bundle, bundle.initial_params(), seed=0, threads=1,
                      buffers=bundle.initial_buffers())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE)).astype(np.float32)
    t = rng.dirichlet(np.ones(C), BATCH).astype(np.float32)
    w = np.ones(BATCH, np.float32)
    losses = [tr.step(0.01, x, t, w, step=i) for i in range(3)]
    times, cpu0 = [], time.process_time()
    for i in range(3, 3 + steps):
        t0 = time.perf_counter()
        losses.append(tr.step(0.01, x, t, w, step=i))
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / steps  # CPU seconds: robust to other processes on shared cores
    return {"bench": "step", "model": model, "backend": backend, "batch": BATCH,
            "step_cpu_ms": round(1000 * cpu, 1), "step_wall_ms_min": round(1000 * float(np.min(times)), 1),
            "step_wall_ms_median": round(1000 * float(np.median(times)), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_imports_mb": round(rss0, 1),
            "torch_imported": "torch" in sys.modules, "losses": losses}


def run_all(out: Path, steps: int) -> None:
    for row in export(out):
        print(json.dumps(row), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for model in MODELS:
        results = {}
        for backend in ("onnx", "torch"):
            cmd = [sys.executable, __file__, "step", "--model", model, "--backend", backend, "--dir", str(out),
                   "--steps", str(steps)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip()
            results[backend] = json.loads(line.splitlines()[-1])
            print(json.dumps({k: v for k, v in results[backend].items() if k != "losses"}), flush=True)
        a, b = (np.array(results[k]["losses"]) for k in ("onnx", "torch"))
        print(json.dumps({"bench": "parity", "model": model, "steps": len(a),
                          "max_abs_loss_diff": float(np.abs(a - b).max()),
                          "max_rel_loss_diff": float((np.abs(a - b) / np.abs(b)).max())}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--steps", type=int, default=20)
    e = sub.add_parser("export")
    e.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("step")
    s.add_argument("--model", choices=list(MODELS), required=True)
    s.add_argument("--backend", choices=["onnx", "torch"], required=True)
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    if args.cmd == "all":
        run_all(args.out, args.steps)
    elif args.cmd == "export":
        for row in export(args.out):
            print(json.dumps(row))
    else:
        print(json.dumps(step(args.model, args.backend, args.dir, args.steps)))


if __name__ == "__main__":
    main()
