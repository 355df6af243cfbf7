"""The benchmark behind `condenser bench`: every method's per-size sets, cached evaluation cells, a report.

CPU budget plan (profile `cpu`, its `bench` section; Fashion-MNIST IPC 10). Costs are single-thread CPU
seconds measured on the 2-core dev machine (ConvNet-D3 width 128, 28x28):
- condensation: 20 new runs (MDC, C, B: 10, A: 10 minus its IPC-1 run = B's first and its IPC-10 run = C).
  A DM inner step (batch_real 64 per class) costs ~0.85 + 0.03*ipc s, so one step of every run is ~19.2 s;
  150 steps (15 outer x 10 inner, MLS period 3) = ~2900 CPU-s, ~1700 s wall with 2 intra-op threads (~1.7x).
  (The idle fit was 1.06 + 0.04*ipc before the condenser configured glibc malloc (formats/alloc.py); that
  removed the step's kernel time, x0.79 at IPC 1 and x0.77 at IPC 10 in one same-run A/B with
  benchmarks/bench_hotpaths.py's dm step on the loaded machine, and the fit is scaled by those ratios.)
- evaluation: 5 methods x 10 sizes x 2 label modes x 3 seeds = 300 trainings. A training image-epoch costs
  ~3.3 ms (hard or soft; x0.93 from the allocator settings, same A/B) and a test image ~1.9 ms, so the 30
  (method, labels, seed) series cost 30 * 550 * E * 3.3 ms + 300 * n_test * 1.9 ms = 54.5*E + 0.57*n_test
  CPU-s. E = 100 epochs, n_test = 2000 (class-balanced, the same for every method) = ~6600 CPU-s, ~3400 s
  wall in 2 single-threaded processes.
- total ~5100 s (85 min) wall with the teacher cached (the cpu teacher adds ~13 min once); A's and B's runs
  condense in parallel single-threaded workers (`--workers`), which a 2-core CPU runs ~1.2x faster than one
  2-thread process. Knobs: +10 outer loops = +1900 CPU-s (~+19 min); +10 eval epochs = +545 CPU-s (~+5 min).
  The protocol's E = 300 on the full test split would need ~22000 CPU-s for the evaluation alone.
- multi-formation (condense.factor 2, the cpu profile's default since 2026-12-02): a condensed set's cells train
  on k*4 images per class, ~4x the series cost above (measured, summed wall time of single-threaded cells at
  load 3: 50 min for MDC's 60 cells, 63 for random-formed's, 16 for random's), so the full bench is ~3 h on 2
  cores; docs/RESULTS.md "Multi-formation".
  Baseline A at factor 2 (2026-12-02, a box with 25 % steal time, 2 single-threaded workers plus one other job): its
  10 runs condensed in 51 min wall, and an IPC-10 cell took 368-487 s wall (400 decoded images), so A's 60 cells alone
  need ~1.5 h of wall time there. No full factor-2 bench has run yet; the ~3 h above is an estimate.
- bf16 (2026-12-03, a 2-core Intel Xeon with AMX: float32 GEMM peak 155 GFLOP/s, bfloat16 1,051): the cpu profile
  evaluates with `precision = "auto"` (bf16 there) and the bench compiles the step. An IPC-10 image-epoch costs
  2.75 ms fp32 eager, 2.22 fp32 compiled, 1.02 bf16 compiled (benchmarks/bench_hotpaths.py); whole cells gain less,
  since each new batch shape compiles once per worker (~10-35 s) and scoring stays fp32: the 30 factor-1
  random-real hard cells took 498 s fp32 and 356 s bf16 (summed cell wall time), an IPC-10 cell 29.2 -> 14.1 s.
  A dm step in bf16 measured 1.28 -> 0.91 CPU-s (ad hoc); `condense.precision = "auto"` now condenses in bf16 there.
  Measured whole: mdc + random, hard + soft (120 cells) in 25 min wall on 2 workers (condensation 275 s; mdc's 60
  cells 1,862 s summed, random's 501 s). The full bench, measured once with bf16 condensation too: 94.8 min wall
  on 2 workers with the teacher cached (condensation 2,838 s summed, A 1,440 and B 982 of it; 360 cells 7,748 s
  summed; docs/RESULTS.md "The whole bench, one command").
"""

from condenser.bench.cells import Cell, CellCache
from condenser.bench.config import METHODS, BenchConfig
from condenser.bench.report import markdown_table, per_size_table, summary, write_report
from condenser.bench.sets import MethodFiles, build_baseline, method_sets, write_sized_sets
from condenser.bench.stages import BenchOutput, run_bench

__all__ = [
    "METHODS", "BenchConfig", "BenchOutput", "Cell", "CellCache", "MethodFiles", "build_baseline",
    "markdown_table", "method_sets", "per_size_table", "run_bench", "summary", "write_report", "write_sized_sets",
]
