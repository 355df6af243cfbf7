"""Where the onnx device train step spends its time: onnxruntime's own profile, ranked (issue 14, item 3).

    OMP_NUM_THREADS=1 python benchmarks/profile_onnx_step.py                      # export with this checkout
    OMP_NUM_THREADS=1 python benchmarks/profile_onnx_step.py --bundle /tmp/bench_rt/convnet_w128_b64.trainer
    OMP_NUM_THREADS=1 python benchmarks/profile_onnx_step.py --save /tmp/new.trainer --top 40

The step is the default device trainer of bench_runtime.py (ConvNet-D3 width 128, batch 64, SGD), run
by the onnx backend's session options with one thread (intra_op_num_threads=1) and
`SessionOptions.enable_profiling`: --warmup steps, then --steps profiled ones. Kernel times of the
profiled steps are summed per op type and per node and printed, largest first, with the step's CPU time
beside them. Kernel times are onnxruntime's wall-clock spans, so on a shared machine they include time
the thread waited for a core; their shares are the ranking, the CPU time is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_runtime  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def _profiled_trainer(bundle, profile_dir: str):
    """The onnx trainer with its train-step session replaced by one that profiles (same options)."""
    import onnxruntime as ort

    from runtime.backends import ModelSpec, make_trainer
    from runtime.backends.onnx_backend import _options

    tr = make_trainer("onnx", ModelSpec.from_bundle(bundle), bundle, bundle.initial_params(), threads=1)
    so = _options(ort, 1, profile_dir)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(profile_dir) / "step")
    tr._train = ort.InferenceSession(bundle.train_step, so, providers=["CPUExecutionProvider"])
    return tr


def kernel_events(profile: Path, skip_runs: int) -> list[dict]:
    """The node kernel events of the model runs after the first `skip_runs` (the warm-up)."""
    events = json.loads(profile.read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    start = runs[skip_runs] - 1 if len(runs) > skip_runs else 0
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]


def rank(events: list[dict], key) -> list[tuple[str, float, int]]:
    """(key, total microseconds, count), largest total first."""
    total, count = defaultdict(float), defaultdict(int)
    for e in events:
        k = key(e)
        total[k] += e["dur"]
        count[k] += 1
    return sorted(((k, total[k], count[k]) for k in total), key=lambda r: -r[1])


def _node_label(e: dict) -> str:
    args = e.get("args", {})
    shapes = [list(s.values())[0] for s in args.get("input_type_shape", [])][:3]
    return f"{args.get('op_name', '?')} {e['name'].removesuffix('_kernel_time')} {shapes}"


def _print(title: str, rows: list[tuple[str, float, int]], steps: int, top: int) -> None:
    whole = sum(r[1] for r in rows) or 1.0
    print(f"\n{title}  (ms per step, share of kernel time, calls per step)")
    for k, us, n in rows[:top]:
        print(f"{us / steps / 1000:9.2f} {100 * us / whole:5.1f} % {n / steps:6.1f}  {k}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a saved trainer bundle (default: export one now)")
    p.add_argument("--save", type=Path, help="save the exported bundle here")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()

    import runtime

    bundle = runtime.TrainerBundle.load(a.bundle) if a.bundle else bench_runtime.export_bundle()
    if a.save:
        bundle.save(a.save)
    x, t, w = bench_runtime.fixed_batch()
    with tempfile.TemporaryDirectory(prefix="multisize-prof-") as d:
        tr = _profiled_trainer(bundle, d)
        for _ in range(a.warmup):
            tr.step(0.01, x, t, w)
        cpu0 = time.process_time()
        for _ in range(a.steps):
            tr.step(0.01, x, t, w)
        cpu = (time.process_time() - cpu0) / a.steps
        events = kernel_events(Path(tr._train.end_profiling()), a.warmup)
    kernels = sum(e["dur"] for e in events) / a.steps / 1000
    print(f"CPU per step {1000 * cpu:.1f} ms (profiled), kernels {kernels:.1f} ms wall per step, "
          f"{len(events) // a.steps} kernel calls per step")
    _print("by op type", rank(events, lambda e: e["args"].get("op_name", "?")), a.steps, a.top)
    _print("by node", rank(events, _node_label), a.steps, a.top)


if __name__ == "__main__":
    main()
