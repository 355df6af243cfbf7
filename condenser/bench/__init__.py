"""The benchmark behind `condenser bench`: every method's per-size sets, cached evaluation cells, a report."""

from condenser.bench.cells import Cell, CellCache
from condenser.bench.config import METHODS, BenchConfig, bench_profile
from condenser.bench.report import markdown_table, per_size_table, summary, write_report
from condenser.bench.sets import MethodFiles, build_baseline, method_sets, write_sized_sets
from condenser.bench.stages import BenchOutput, run_bench

__all__ = [
    "METHODS", "BenchConfig", "BenchOutput", "Cell", "CellCache", "MethodFiles", "bench_profile", "build_baseline",
    "markdown_table", "method_sets", "per_size_table", "run_bench", "summary", "write_report", "write_sized_sets",
]
