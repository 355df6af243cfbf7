"""The benchmark behind `condenser bench`: every method's per-size sets, cached evaluation cells, a report.

CPU budget plan (profile `cpu`, its `bench` section; Fashion-MNIST IPC 10; costs are single-thread CPU
seconds measured on the 2-core dev machine, ConvNet-D3 width 128, 28x28):
- condensation: 21 runs (MDC, C, A: 10, B: 10 minus the IPC-1 run it shares with A). A DM inner step
  costs 1.06 + 0.04*ipc s (batch_real 64), so one step of every run is ~25.6 s; 100 steps (10 outer x 10
  inner) = ~2600 CPU-s, ~1500 s wall with 2 intra-op threads (~1.7x).
- evaluation: 5 methods x 10 sizes x 2 label modes x 3 seeds = 300 trainings. A training image-epoch
  costs ~3.2 ms and a test image ~1.9 ms, so one (method, labels, seed) series costs 550*E*3.2 ms plus
  10 test passes: 30 series = 52.8*E + 0.56*n_test CPU-s. E = 100 epochs, n_test = 2000 (class-balanced,
  the same for every method) = ~6400 CPU-s, ~3300 s wall in 2 single-threaded worker processes.
- total ~4900 s (82 min) with the teacher cached; the cpu teacher adds ~20 min once. E = 300 on the full
  test split alone would be ~21000 CPU-s.
"""

from condenser.bench.cells import Cell, CellCache
from condenser.bench.config import METHODS, BenchConfig, bench_profile
from condenser.bench.report import markdown_table, per_size_table, summary, write_report
from condenser.bench.sets import MethodFiles, build_baseline, method_sets, write_sized_sets
from condenser.bench.stages import BenchOutput, run_bench

__all__ = [
    "METHODS", "BenchConfig", "BenchOutput", "Cell", "CellCache", "MethodFiles", "bench_profile", "build_baseline",
    "markdown_table", "method_sets", "per_size_table", "run_bench", "summary", "write_report", "write_sized_sets",
]
