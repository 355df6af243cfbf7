"""Users' own models on the device runtime, for docs/RESULTS.md ("Users' own models", issue 18).

    python benchmarks/bench_user_models.py all --out /tmp/bench_user    # export, then one process per run
    python benchmarks/bench_user_models.py export --out /tmp/bench_user
    python benchmarks/bench_user_models.py step --model convnet-bn --backend onnx --dir /tmp/bench_user

Two networks at batch 64 on 1x28x28 inputs, 10 classes: ConvNet-D3 (width 128) with BatchNorm, and the
MobileNet-like net of examples/user_models.py (depthwise convs as Conv2d with groups, BatchNorm, max and
global average pooling, dropout). `step` runs in its own single-threaded process and imports torch only for
backends torch and compile, so its peak RSS is what a device training process with that backend costs; it
prints one JSON line with the CPU and wall time per step and the losses of the steps (for the parity check).

Backend compile is the torch backend with its network under torch.compile (condenser/compiled.py: inductor,
static shapes, kernels cached on disk); the loss and the SGD update stay eager. Its first step is the
compile, timed apart. `all` runs it twice per model on one fresh cache directory (--out/inductor): the first
process compiles cold, the second reads the kernels the first wrote, as a later process on a device would.
`export` writes each model's bundle with --params stored (the steps' bundle) and seeded, and prints the
bytes of each part: train-step graph, inference graph, parameters and state buffers, metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE, C, BATCH = (1, 28, 28), 10, 64
MODELS = {
    "convnet-bn": ("convnet", {"width": 128, "norm": "batch"}),
    "mobilenet": ("examples.user_models:mobilenet_like", {"width": 16}),
}
PARAM_MODES = ("stored", "seeded")  # the first is the bundle the steps train from
BACKENDS = ("onnx", "torch", "compile")
WARMUP = 3


def peak_rss_mb() -> float:
    """VmHWM of this process: unlike ru_maxrss, it starts afresh at exec (ru_maxrss keeps the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bundle_path(d: Path, model: str, params: str = PARAM_MODES[0]) -> Path:
    return d / (f"{model}.trainer" if params == PARAM_MODES[0] else f"{model}-{params}.trainer")


def part_bytes(blob: bytes) -> dict[str, int]:
    """Bytes of each part of a serialised bundle: the graphs as stored, and the parameter and buffer lists
    and the metadata as msgpack encodes them alone (the rest, under 100 B, is the outer map's keys)."""
    doc = msgpack.unpackb(blob, raw=False)
    size = {key: len(msgpack.packb(doc[key], use_bin_type=True)) if key in doc else 0
            for key in ("params", "buffers", "meta")}
    return {"train_step_bytes": len(doc["train_step"]), "inference_bytes": len(doc["inference"]),
            "params_bytes": size["params"], "buffers_bytes": size["buffers"], "meta_bytes": size["meta"],
            "bundle_bytes": len(blob)}


def export(out: Path) -> list[dict]:
    """One trainer bundle per model and params mode (SGD momentum 0.9, soft cross-entropy), with its sizes."""
    import torch

    from condenser.export import ExportSettings, export_trainer

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (arch, kwargs) in MODELS.items():
        for params in PARAM_MODES:
            t0 = time.perf_counter()
            bundle = export_trainer(ExportSettings(arch=arch, in_shape=SHAPE, num_classes=C, batch_size=BATCH,
                                                   seed=0, model_kwargs=kwargs, params=params))
            seconds = time.perf_counter() - t0
            bundle.save(bundle_path(out, name, params))
            rows.append({"bench": "export", "model": name, "params_mode": params,
                         "export_seconds": round(seconds, 1), "params": int(sum(p.size for p in bundle.params)),
                         "buffers": len(bundle.buffers), **part_bytes(bundle.to_bytes())})
    return rows


def compiled_trainer(bundle: Any, seed: int = 0) -> Any:
    """The torch backend's trainer with its network compiled; see CompiledTrainer."""
    import torch
    from torch import nn

    from condenser.compiled import compiled
    from runtime.backends import ModelSpec, dropout_noise, make_trainer
    from runtime.torch_step import seeded_dropout, student_loss

    class NoiseDropout(nn.Module):
        """nn.Dropout keeping the elements where `noise` >= p. The noise is a buffer that every step refills
        in place, so the compiled graph reads it as an input instead of being traced again each step (the
        torch backend's per-step forward swap would be a new function, a guard failure, each step)."""

        def __init__(self, p: float, shape: tuple[int, ...]):
            super().__init__()
            self.p = p
            self.register_buffer("noise", torch.zeros(shape), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return seeded_dropout(x, self.noise, self.p)

    class CompiledTrainer:
        """TorchTrainer's network, parameters, state buffers and optimizer, with the forward (and so the
        backward) compiled; same loss, update and dropout noise (runtime/backends/torch_backend.py), for
        full batches only (the bench feeds no padding rows)."""

        backend = "compile"

        def __init__(self) -> None:
            self.eager = make_trainer("torch", ModelSpec.from_bundle(bundle), bundle, bundle.initial_params(),
                                      seed=seed, threads=1, buffers=bundle.initial_buffers())
            self.noise = []
            for index, d in enumerate(self.eager.spec.dropout or ()):
                parent, _, child = d.module.rpartition(".")
                module = NoiseDropout(d.p, (BATCH, *d.shape))
                setattr(self.eager.model.get_submodule(parent), child, module)
                self.noise.append((index, module.noise))
            self.model = compiled(self.eager.model)

        def step(self, lr: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray, step: int = 0) -> float:
            if not (weights > 0).all():
                raise ValueError("CompiledTrainer.step: weights must be > 0 (no padding rows in the bench)")
            for index, noise in self.noise:
                noise.copy_(torch.from_numpy(dropout_noise(seed, step, index, tuple(noise.shape))))
            for group in self.eager.opt.param_groups:
                group["lr"] = float(lr)
            xt, tt, wt = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, targets, weights))
            loss = student_loss(self.model(xt), tt, wt, self.eager.spec.loss)
            self.eager.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.eager.opt.step()
            return float(loss.detach())

    return CompiledTrainer()


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (inductor's compiler runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def compile_counters() -> dict[str, int]:
    """Dynamo's graph count and inductor's on-disk cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"graphs": int(counters["stats"]["unique_graphs"]), "fx_cache_hits": int(inductor["fxgraph_cache_hit"]),
            "fx_cache_misses": int(inductor["fxgraph_cache_miss"])}


def make_step_trainer(backend: str, bundle: Any) -> Any:
    if backend == "compile":
        return compiled_trainer(bundle)
    from runtime.backends import ModelSpec, make_trainer

    return make_trainer(backend, ModelSpec.from_bundle(bundle), bundle, bundle.initial_params(), seed=0, threads=1,
                        buffers=bundle.initial_buffers())


def step(model: str, backend: str, d: Path, steps: int) -> dict:
    """WARMUP warm-up and `steps` timed train steps on one fixed batch, from the bundle's initial state; for
    backend compile the first warm-up step (the compile) is timed apart."""
    import runtime

    rss0 = peak_rss_mb()
    bundle = runtime.TrainerBundle.load(bundle_path(d, model))
    tr = make_step_trainer(backend, bundle)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE)).astype(np.float32)
    t = rng.dirichlet(np.ones(C), BATCH).astype(np.float32)
    w = np.ones(BATCH, np.float32)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    losses = [tr.step(0.01, x, t, w, step=0)]
    first = {"first_step_wall_s": round(time.perf_counter() - t0, 2),
             "first_step_cpu_s": round(cpu_seconds() - cpu0, 2)}
    losses += [tr.step(0.01, x, t, w, step=i) for i in range(1, WARMUP)]
    times, cpu0 = [], time.process_time()
    for i in range(WARMUP, WARMUP + steps):
        t0 = time.perf_counter()
        losses.append(tr.step(0.01, x, t, w, step=i))
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / steps  # CPU seconds: robust to other processes on shared cores
    row = {"bench": "step", "model": model, "backend": backend, "batch": BATCH, "timed_steps": steps,
           "step_cpu_ms": round(1000 * cpu, 1), "step_wall_ms_min": round(1000 * float(np.min(times)), 1),
           "step_wall_ms_median": round(1000 * float(np.median(times)), 1),
           "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_imports_mb": round(rss0, 1),
           "torch_imported": "torch" in sys.modules}
    if backend == "compile":
        row.update({**first, **compile_counters(), "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")})
    return {**row, "losses": losses}


def run_step(model: str, backend: str, out: Path, steps: int, env: dict[str, str]) -> dict:
    """One `step` process; a failure becomes a row with the last line of its stderr (a compile error, say)."""
    cmd = [sys.executable, __file__, "step", "--model", model, "--backend", backend, "--dir", str(out),
           "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or [f"exit {done.returncode}"]
        return {"bench": "step", "model": model, "backend": backend, "error": lines[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parity(model: str, reference: dict, other: dict) -> dict:
    """Largest loss difference of `other` against `reference` over the steps both ran."""
    n = min(len(reference["losses"]), len(other["losses"]))
    a, b = np.array(other["losses"][:n]), np.array(reference["losses"][:n])
    return {"bench": "parity", "model": model, "backends": f"{other['backend']} vs {reference['backend']}",
            "steps": n, "max_abs_loss_diff": float(np.abs(a - b).max()),
            "max_rel_loss_diff": float((np.abs(a - b) / np.abs(b)).max())}


def run_all(out: Path, steps: int, cold_steps: int) -> None:
    """Exports, then per model: onnx, torch eager, compile on a cold cache, compile on the warm cache."""
    for row in export(out):
        print(json.dumps(row), flush=True)
    cache = out / "inductor"
    shutil.rmtree(cache, ignore_errors=True)  # this bench's own directory: the first compile is cold
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(cache),
           "TORCHINDUCTOR_COMPILE_THREADS": "1"}  # compile in-process, on this one core
    for model in MODELS:
        runs = [("onnx", steps), ("torch", steps), ("compile", cold_steps), ("compile", steps)]
        results = []
        for backend, n in runs:
            results.append(run_step(model, backend, out, n, env))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "losses"}), flush=True)
        onnx, eager, *compiled = results
        for other in [onnx, *compiled]:
            if "losses" in other and "losses" in eager:
                print(json.dumps(parity(model, eager, other)), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--steps", type=int, default=20)
    a.add_argument("--cold-steps", type=int, default=3, help="timed steps of the cold-cache compile process")
    e = sub.add_parser("export")
    e.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("step")
    s.add_argument("--model", choices=list(MODELS), required=True)
    s.add_argument("--backend", choices=BACKENDS, required=True)
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    if args.cmd == "all":
        run_all(args.out, args.steps, args.cold_steps)
    elif args.cmd == "export":
        for row in export(args.out):
            print(json.dumps(row))
    else:
        print(json.dumps(step(args.model, args.backend, args.dir, args.steps)))


if __name__ == "__main__":
    main()
