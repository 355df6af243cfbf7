"""The hot paths of multisize against this machine's float32 GEMM peak and their peers, in one run (issue 14).

    python benchmarks/bench_hotpaths.py                 # the table (3 repeats of every measurement)
    python benchmarks/bench_hotpaths.py --quick         # 1 repeat, no measuring-step rows: under a minute
    python benchmarks/bench_hotpaths.py --json          # one object keyed by hot path
    python benchmarks/bench_hotpaths.py --only dm,gm --no-alloc-tuning    # dm and gm without formats/alloc.py

Everything runs single-threaded (OMP_NUM_THREADS=1, torch.set_num_threads(1), onnxruntime 1 thread). The
unit is CPU time (user + sys of this process, resource.getrusage), the median of --repeats measurements,
because the cores are shared with other work. FLOPs per unit are counted by torch's own formulas
(torch.utils.flop_counter) over one execution (convolutions, matmuls, their backward), so share_of_peak =
FLOP per CPU-second / the GEMM peak measured at the start of the same run (numpy float32 matmul). The
container paths have no FLOPs: their peer is dd on the same file, and share_of_peak is dd's time / ours, in
wall time (the page-cache reads check blocks on several threads; the write waits for fdatasync like dd).

The onnx step needs the trainer bundle that `bench_runtime.py make-file` exports (about 1.5 min on 2 busy
cores); it is made once in --dir and reused, and torch.compile reuses inductor's on-disk cache, so --quick
takes under a minute of CPU time from the second run on (more wall time when the cores are busy). The
process configures the allocator as the condenser and runtime entry points do (formats/alloc.py) unless
--no-alloc-tuning.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy and torch start their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import bench_format  # noqa: E402
import bench_runtime  # noqa: E402

HOT_PATHS = ("dm", "dm_bf16", "gm", "gm_bf16", "onnx_step", "torch_eager_step", "torch_compile_step", "eval",
             "eval_ipc1", "eval_compile", "eval_compile_ipc1", "eval_bf16", "eval_bf16_ipc1", "read", "read_1thread",
             "read_zlib", "decode", "write")
CONDENSE_PATHS = ("dm", "dm_bf16", "gm", "gm_bf16")
MEASURING = ("dm_measuring", "gm_measuring")
IPC, MLS, BATCH_REAL, GM_N_DATA = 10, 5, 64, 256  # the cpu profile's condensation (condenser/profiles.py)


@dataclass
class Row:
    """One hot path: CPU-s (or s) per unit, FLOPs per unit, and the share of its peak."""

    path: str
    unit: str
    seconds: float  # per unit, median
    samples: list[float]
    flops: float | None  # per unit
    share_of_peak: float
    peer: str  # what share_of_peak is relative to
    note: str = ""


# --- measuring ------------------------------------------------------------------------------------

def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = cpu_seconds
                   ) -> tuple[float, list[float]]:
    """Median of `repeats` timings of fn() on `clock` (CPU time by default), and the samples."""
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return statistics.median(samples), samples


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one fn() by torch's formulas. A dispatch mode, not FlopCounterMode: the latter's module
    tracker fails on a no-grad forward of a tensor that requires grad (dm's real batch)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    with Count() as counter:
        fn()
    return float(counter.total)


def flop_row(path: str, unit: str, fn: Callable[[], object], repeats: int, peak: float, peer: str = "GEMM peak",
             note: str = "", per: int = 1) -> Row:
    """Count FLOPs in a first (warm-up) call, then time `repeats` calls; `per` units per call."""
    flops = count_flops(fn) / per
    sys0, cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime, cpu_seconds()
    seconds, samples = median_seconds(fn, repeats)
    kernel = (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0) / max(cpu_seconds() - cpu0, 1e-9)
    seconds /= per
    note = f"{note}; {100 * kernel:.0f} % of it kernel time"
    return Row(path, unit, seconds, [s / per for s in samples], flops, flops / seconds / peak, peer, note)


# --- the paths ------------------------------------------------------------------------------------

def gemm_rates(n: int, calls: int, repeats: int) -> list[float]:
    """FLOP/s of numpy float32 matmul, single thread, one per sample of `calls` products."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    _, samples = median_seconds(lambda: [a @ b for _ in range(calls)], repeats)
    return [2.0 * n**3 * calls / s for s in samples]


def bf16_gemm_rates(n: int, calls: int, repeats: int) -> list[float]:
    """FLOP/s of torch bfloat16 matmul, single thread: the peak of the bf16 rows (AMX/AVX512-BF16 where present)."""
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    _, samples = median_seconds(lambda: [a @ b for _ in range(calls)], repeats)
    return [2.0 * n**3 * calls / s for s in samples]


def peak_row(n: int, rates: list[float], path: str, kind: str) -> Row:
    """A GEMM peak: the best sample (the float32 one taken before and after the hot paths: the cores are shared,
    and a busy moment would otherwise inflate every share)."""
    flops = 2.0 * n**3
    best = max(rates)
    return Row(path, f"{n}x{n} {kind} matmul", flops / best, [flops / r for r in rates], flops, 1.0, "itself",
               f"{best / 1e9:.1f} GFLOP/s (best of {len(rates)}; median {statistics.median(rates) / 1e9:.1f})")


def condensation_step(method_name: str, measuring: bool, precision: str = "fp32") -> Callable[[], None]:
    """One inner step of condense() (condenser/condense.py's own `_start` and `_inner_step`) on Fashion-MNIST,
    all 10 classes at IPC 10, ConvNet-D3 width 128, the multisize subset term at MLS 5. fp32 unless the row
    asks for bf16 (condense.precision; its default `auto` would pick per machine)."""
    import torch

    from condenser.condense import CondenseConfig, _inner_step, _start
    from condenser.data import load_dataset
    from condenser.distributed import current

    train = load_dataset("fashion-mnist", "train")
    cfg = CondenseConfig(method=method_name, ipc=IPC, batch_real=BATCH_REAL, device="cpu", precision=precision,
                         method_settings={"n_data": GM_N_DATA} if method_name == "gm" else {})
    run = _start(cfg, train, current())
    run.objective.selector.current = [MLS]  # the state after a selection of MLS 5
    run.method.prepare_model(run.model, run.ctx)
    labels = torch.tensor(run.classes)
    return lambda: _inner_step(run, labels, measuring, None)


def condensation_rows(names: list[str], repeats: int, peak: float) -> list[Row]:
    rows = []
    for name in names:
        method, measuring = name.split("_")[0], name.endswith("_measuring")
        precision = "bf16" if name.endswith("_bf16") else "fp32"
        note = f"IPC {IPC} x 10 classes, batch_real {BATCH_REAL}, MLS {MLS}" + (
            f", network trains on {GM_N_DATA} real images" if method == "gm" else "") + (
            ", measuring distances" if measuring else "") + (", bf16 autocast" if precision == "bf16" else "")
        rows.append(flop_row(name, "step", condensation_step(method, measuring, precision), repeats, peak,
                             note=note))
    return rows


def trainer_rows(names: list[str], bundle_dir: Path, steps: int, repeats: int, peak: float) -> list[Row]:
    """The device train step (batch 64, ConvNet-D3 w128) with onnxruntime, torch eager and torch.compile."""
    import torch

    import runtime
    from runtime.backends import ModelSpec, make_trainer

    bundle_path = bundle_dir / "convnet_w128_b64.trainer"
    if not bundle_path.exists():
        bench_runtime.make_file(bundle_dir)
    bundle = runtime.TrainerBundle.load(bundle_path)
    spec = ModelSpec.from_bundle(bundle)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((bench_runtime.BATCH, *bench_runtime.SHAPE)).astype(np.float32)
    t = rng.dirichlet(np.ones(bench_runtime.C), bench_runtime.BATCH).astype(np.float32)
    w = np.ones(bench_runtime.BATCH, np.float32)
    eager = make_trainer("torch", spec, bundle, bundle.initial_params(), threads=1)
    flops = count_flops(lambda: eager.step(0.01, x, t, w))  # the onnx graph computes the same operations

    def trainer(name: str):  # noqa: ANN202
        if name == "onnx_step":
            return make_trainer("onnx", spec, bundle, bundle.initial_params(), threads=1)
        if name == "torch_eager_step":
            return eager
        compiled = make_trainer("torch", spec, bundle, bundle.initial_params(), threads=1)
        compiled.model = torch.compile(compiled.model)  # forward and backward through inductor
        return compiled

    rows = []
    for name in names:
        tr = trainer(name)
        t0 = time.perf_counter()
        for _ in range(2):
            tr.step(0.01, x, t, w)  # warm-up (and the compile)
        warm = time.perf_counter() - t0
        seconds, samples = median_seconds(lambda tr=tr: [tr.step(0.01, x, t, w) for _ in range(steps)], repeats)
        note = f"batch {bench_runtime.BATCH}, {steps} steps per sample" + (
            f", warm-up incl. compile {warm:.0f} s wall" if name == "torch_compile_step" else "")
        rows.append(Row(name, "step", seconds / steps, [s / steps for s in samples], flops,
                        flops * steps / seconds / peak, "GEMM peak", note))
    return rows


# name: (IPC, torch.compile, evaluate.precision); the bf16 rows are compiled too, the fastest setting on AMX
EVAL_ROWS = {"eval": (10, False, "fp32"), "eval_ipc1": (1, False, "fp32"), "eval_compile": (10, True, "fp32"),
             "eval_compile_ipc1": (1, True, "fp32"), "eval_bf16": (10, True, "bf16"),
             "eval_bf16_ipc1": (1, True, "bf16")}


@dataclass
class EvalRun:
    """One prepared evaluation training: `sample()` trains `per` image-epochs."""

    sample: Callable[[], object]
    per: int
    flops: float  # per image-epoch
    note: str


def eval_run(name: str, image_epochs: int) -> EvalRun:
    """Server-side evaluation training (condenser/training.py train_epoch) of one seed of an IPC-10 or IPC-1
    cell with the pinned protocol's augmentation (DSA + CutMix), hard labels, batch 64 (IPC-1: one batch of
    10), eager or compiled as `condenser eval` with MULTISIZE_COMPILE=1 trains (condenser/compiled.py); its
    first epoch (the compile) is run here, outside the samples."""
    import torch

    from condenser.compiled import compiled, inductor_cache_dir
    from condenser.data import load_dataset
    from condenser.evaluate.protocol import hard_label_source
    from condenser.models import build_model
    from condenser.profiles import get_profile
    from condenser.training import sgd, train_epoch

    ipc, use_compile, precision = EVAL_ROWS[name]
    train = load_dataset("fashion-mnist", "train")
    c = train.spec.num_classes
    idx = torch.cat([train.first_of_class(k, ipc) for k in range(c)])
    budget = get_profile("cpu").evaluate
    source = hard_label_source(train.normalized(idx), train.labels[idx], c, budget, train.spec.allow_flip)
    torch.manual_seed(0)
    model = build_model("convnet", train.spec.image_shape, c, width=budget.width)
    optimizer = sgd(model, budget.lr, budget.momentum, budget.weight_decay)
    generator = torch.Generator().manual_seed(0)
    cold = use_compile and not any(inductor_cache_dir().rglob("*.py"))
    step_model = compiled(model) if use_compile else model
    epoch = lambda m=step_model: train_epoch(m, source, optimizer, budget.batch_size, generator,  # noqa: E731
                                             torch.device("cpu"), precision=precision)
    t0, c0 = time.perf_counter(), cpu_seconds()
    epoch()
    first = ""
    if use_compile:
        first = (f"; first epoch (the compile, {'cold' if cold else 'warm'} cache) {time.perf_counter() - t0:.1f} s "
                 f"wall, {cpu_seconds() - c0:.1f} CPU-s of this process")
    epochs = max(1, image_epochs // len(idx))
    flops = count_flops(lambda: epoch(model)) / len(idx)  # eager: a dispatch mode cannot see into inductor's kernels
    note = (f"IPC-{ipc}: {len(idx)} images, {epochs} epochs per sample, DSA + CutMix, batch "
            f"{min(budget.batch_size, len(idx))}, {'compiled' if use_compile else 'eager'}, {precision}{first}")
    return EvalRun(lambda: [epoch() for _ in range(epochs)], epochs * len(idx), flops, note)


def eval_rows(names: list[str], image_epochs: int, repeats: int, peak: float, bf16_peak: float) -> list[Row]:
    """CPU-s per trained image-epoch of each eval variant, their samples interleaved (round-robin), so that a busy
    moment of the shared cores does not favour one variant. A bf16 row's share is of the bf16 GEMM peak; its note
    gives the share of the float32 peak too."""
    runs = {name: eval_run(name, image_epochs) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, run in runs.items():
            c0 = cpu_seconds()
            run.sample()
            samples[name].append((cpu_seconds() - c0) / run.per)
    rows = []
    for name, run in runs.items():
        seconds = statistics.median(samples[name])
        rate = run.flops / seconds
        if EVAL_ROWS[name][2] == "bf16":
            rows.append(Row(name, "image-epoch", seconds, samples[name], run.flops, rate / bf16_peak,
                            "bf16 GEMM peak", f"{run.note}; {100 * rate / peak:.0f} % of the float32 peak"))
        else:
            rows.append(Row(name, "image-epoch", seconds, samples[name], run.flops, rate / peak, "GEMM peak",
                            run.note))
    return rows


def container_rows(names: list[str], work: Path, repeats: int) -> list[Row]:
    """write_mdc, a verified read_raw and a compact-target read of the whole file against dd on the same file
    (bench_format.py's file)."""
    import formats

    data, _ = bench_format.make_file_data(np.random.default_rng(0), 1.0)
    path = work / "bench.mdc"
    formats.write_mdc(path, data)
    size = path.stat().st_size
    gb = size / 1e9
    mib = max(1, round(size / 2**20))
    rows = []
    if "write" in names:
        ours, samples = median_seconds(lambda: formats.write_mdc(path, data), repeats, time.perf_counter)
        dd_mbs = statistics.median(bench_format.dd(["if=/dev/zero", f"of={work / 'dd.bin'}", "bs=1M",
                                                    f"count={mib}", "conv=fdatasync"]) for _ in range(repeats))
        dd_s = mib * 2**20 / 1e6 / dd_mbs  # seconds for our size at dd's rate
        rows.append(Row("write", "GB (wall)", ours / gb, [s / gb for s in samples], None, dd_s / ours,
                        "dd write, conv=fdatasync", f"{size / 1e6:.1f} MB file: {size / 1e6 / ours:.0f} MB/s, "
                        f"dd {dd_mbs:.0f} MB/s; encode + write + fsync + rename"))

    def raw(threads: int | None, crc32: Callable[[bytes], int] | None = None) -> None:
        import formats.checksum as checksum

        fastest = checksum._crc32
        checksum._crc32 = crc32 or fastest  # read_zlib: the checksum the reader had before formats/checksum.py
        try:
            with formats.open_mdc(path, threads=threads) as r:
                r.read_raw(bench_format.IPC)
        finally:
            checksum._crc32 = fastest

    def compact() -> None:
        with formats.open_mdc(path) as r:
            r.read(bench_format.IPC, targets="compact")

    reads = {"read": ("verified read_raw", lambda: raw(None)),
             "read_1thread": ("verified read_raw on one thread (the reader before issue 14 item 5)", lambda: raw(1)),
             "read_zlib": ("verified read_raw with zlib.crc32 (the checksum before formats/checksum.py)",
                           lambda: raw(None, zlib.crc32)),
             "decode": ("read(targets='compact')", compact)}
    wanted = {name: reads[name] for name in reads if name in names}
    if wanted:
        rows += cached_read_rows(wanted, path, repeats)
    return rows


def cached_read_rows(reads: dict[str, tuple[str, Callable[[], object]]], path: Path, repeats: int) -> list[Row]:
    """Whole-file reads from the page cache against dd's copy of the same file, all in wall time (the reader
    checks blocks on several threads, so CPU time is the wrong clock; the note gives both), samples interleaved
    round-robin with dd's. dd's time is the one it reports for its copy, without its process start."""
    size = path.stat().st_size
    gb = size / 1e9
    per = max(1, round(0.25 / gb))  # ~250 MB per sample: a few ms of file is below the clocks' noise
    walls: dict[str, list[float]] = {name: [] for name in reads}
    cpus: dict[str, list[float]] = {name: [] for name in reads}
    dd_mbs: list[float] = []
    for _, fn in reads.values():
        fn()  # into the page cache, and any first-call cost out of the samples
    for _ in range(repeats):
        for name, (_, fn) in reads.items():
            t0, c0 = time.perf_counter(), cpu_seconds()
            for _ in range(per):
                fn()
            walls[name].append((time.perf_counter() - t0) / per / gb)
            cpus[name].append((cpu_seconds() - c0) / per / gb)
        dd_mbs += [bench_format.dd([f"if={path}", "of=/dev/null", "bs=1M"]) for _ in range(per)]
    dd_s = 1e3 / statistics.median(dd_mbs)  # seconds per GB
    rows = []
    for name, (what, _) in reads.items():
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        rows.append(Row(name, "GB (wall)", wall, walls[name], None, dd_s / wall, "dd read, page cache (wall)",
                        f"{what}(IPC {bench_format.IPC}) of the {size / 1e6:.1f} MB file from the page cache: "
                        f"{1e3 / wall:.0f} MB/s wall, {1e3 / cpu:.0f} MB/s of CPU; dd {1e3 / dd_s:.0f} MB/s "
                        f"(median of {len(dd_mbs)})"))
    return rows


# --- the run --------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> list[Row]:
    import torch

    torch.set_num_threads(1)
    wanted = [p for p in args.only.split(",") if p] if args.only else list(HOT_PATHS) + (
        [] if args.quick else list(MEASURING))
    unknown = sorted(set(wanted) - set(HOT_PATHS) - set(MEASURING))
    if unknown:
        raise SystemExit(f"unknown hot paths {unknown}; known: {', '.join(HOT_PATHS + MEASURING)}")
    n, calls = 2048, 2 if args.quick else 4
    rates = gemm_rates(n, calls, args.repeats)
    peak = max(rates)
    rows = condensation_rows([p for p in (*CONDENSE_PATHS, *MEASURING) if p in wanted], args.repeats, peak)
    trainers = [p for p in ("onnx_step", "torch_eager_step", "torch_compile_step") if p in wanted]
    if trainers:
        rows += trainer_rows(trainers, args.dir, 3 if args.quick else 10, args.repeats, peak)
    evals = [p for p in EVAL_ROWS if p in wanted]
    if evals:
        bf16 = any(EVAL_ROWS[p][2] == "bf16" for p in evals)
        bf16_rates = bf16_gemm_rates(n, calls, args.repeats) if bf16 else [float("nan")]
        rows += eval_rows(evals, 100 if args.quick else 300, args.repeats, peak, max(bf16_rates))
        if bf16:
            rows.insert(0, peak_row(n, bf16_rates, "gemm_peak_bf16", "torch bfloat16"))
    rates += gemm_rates(n, calls, args.repeats)
    if max(rates) > peak:  # a quieter moment at the end: every share against the better peak
        for r in rows:
            r.share_of_peak *= peak / max(rates) if r.peer == "GEMM peak" else 1.0
    rows.insert(0, peak_row(n, rates, "gemm_peak", "numpy float32"))
    io = [p for p in ("read", "read_1thread", "read_zlib", "decode", "write") if p in wanted]
    if io:
        with tempfile.TemporaryDirectory(prefix="bench-hot-") as work:
            rows += container_rows(io, Path(work), args.repeats)
    return rows


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| hot path | unit | seconds per unit (median) | GFLOP per unit | GFLOP/s | share of peak "
             "| peer | setting |", "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        gf = "" if r.flops is None else f"{r.flops / 1e9:.3g}"
        rate = "" if r.flops is None else f"{r.flops / r.seconds / 1e9:.1f}"
        secs = f"{r.seconds:.4g}" + (f" (n={len(r.samples)})" if len(r.samples) > 1 else "")
        lines.append(f"| {r.path} | {r.unit} | {secs} | {gf} | {rate} | {100 * r.share_of_peak:.0f} % | {r.peer} "
                     f"| {r.note} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, smaller units, no measuring-step rows")
    ap.add_argument("--json", action="store_true", help="print one JSON object keyed by hot path")
    ap.add_argument("--repeats", type=int, default=None, help="measurements per hot path (default 3; 1 quick)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(HOT_PATHS + MEASURING)}")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_rt"), help="trainer bundle cache (bench_runtime)")
    ap.add_argument("--no-alloc-tuning", action="store_true", help="leave glibc malloc at its defaults")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    alloc = False
    if not args.no_alloc_tuning:
        from formats.alloc import configure_allocator

        alloc = configure_allocator()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = run(args)
    meta = {"machine": bench_format.machine(), "load_average_1min": round(load, 2), "allocator_tuned": alloc,
            "wall_s": round(time.perf_counter() - t0, 1), "command": " ".join(["python", *sys.argv])}
    if args.json:
        out = {r.path: asdict(r) for r in rows}
        out["gemm_peak"].update(meta)
        print(json.dumps(out))
        return
    import torch

    print(table(rows, f"`{meta['command']}`: {meta['machine']}; numpy {np.__version__}, torch {torch.__version__}; "
                      f"1 thread; allocator tuned: {alloc}; 1-min load average {load:.1f} at the start; "
                      f"{meta['wall_s']} s wall."))


if __name__ == "__main__":
    main()
