"""From finished cells to the paper-style table: per-size mean ± std, Avg. over sizes, Diff. vs Baseline C.

Averages and differences are always recomputed from the per-size means (never stored separately), so the
JSON, the Markdown and the plot cannot disagree. Missing cells (a partial run) show as "–" and leave the
average of that row undefined.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

from condenser.bench.config import DISPLAY_NAMES, REFERENCE
from condenser.checkpoint import atomic_write_bytes
from condenser.evaluate import EvalResult
from condenser.evaluate.controls import CONTROL_METHOD, FORMED_CONTROL_METHOD
from condenser.evaluate.sizes import summarize


def per_size_table(records: Iterable[dict], methods: Sequence[str], labels: Sequence[str], sizes: Sequence[int],
                   seeds: Sequence[int]) -> dict[str, dict[str, dict[str, dict]]]:
    """{method: {labels: {size: summary}}} over the wanted seeds; a size appears once all its seeds finished.

    A summary carries `images`, the decoded training images a cell trained on (k*f*f*C with formation
    factor f), and `stored_images`, what the file stores for that size (k*C; absent in older cached cells).
    """
    grouped: dict[tuple[str, str, int], dict[int, dict]] = {}
    for r in records:
        grouped.setdefault((r["method"], r["labels"], r["size"]), {})[r["seed"]] = r
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for m in methods:
        for lab in labels:
            row = table.setdefault(m, {}).setdefault(lab, {})
            for n in sizes:
                cells = grouped.get((m, lab, n), {})
                if not all(s in cells for s in seeds):
                    continue
                result = EvalResult(accuracies=[cells[s]["accuracy"] for s in seeds], seeds=list(seeds), labels=lab,
                                    num_images=cells[seeds[0]]["num_images"], arch="convnet", budget={},
                                    wall_seconds=sum(cells[s]["wall_seconds"] for s in seeds))
                row[str(n)] = {**summarize(result), "images": result.num_images,
                               "stored_images": cells[seeds[0]].get("stored_images")}
    return table


def row_average(row: dict[str, dict], sizes: Sequence[int]) -> float | None:
    """Mean over sizes of the per-size means; None until every size has finished."""
    if not all(str(n) in row for n in sizes):
        return None
    return statistics.fmean(row[str(n)]["mean"] for n in sizes)


def summary(table: dict, sizes: Sequence[int]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{method: {labels: {"avg", "diff"}}}, diff = avg - avg of Baseline C with the same labels."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for m, by_label in table.items():
        for lab, row in by_label.items():
            avg = row_average(row, sizes)
            ref = row_average(table.get(REFERENCE, {}).get(lab, {}), sizes)
            diff = None if avg is None or ref is None else avg - ref
            out.setdefault(m, {})[lab] = {"avg": _round(avg), "diff": _round(diff)}
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _cell(s: dict | None) -> str:
    return "–" if s is None else f"{s['mean']:.2f}±{s['std']:.2f}"


def markdown_table(results: dict) -> str:
    """One row per (label mode, method), one column per size, then Avg. and Diff. vs Baseline C."""
    sizes = results["sizes"]
    head = ["Labels", "Method", *map(str, sizes), "Avg.", f"Diff. vs {REFERENCE}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(sizes) + 2)]
    for lab in results["labels"]:
        for m in results["methods"]:
            row = results["table"].get(m, {}).get(lab, {})
            summ = results["summary"].get(m, {}).get(lab, {})
            avg, diff = summ.get("avg"), summ.get("diff")
            cells = [_cell(row.get(str(n))) for n in sizes]
            lines.append("| " + " | ".join([lab, DISPLAY_NAMES.get(m, m), *cells,
                                            "–" if avg is None else f"{avg:.2f}",
                                            "–" if diff is None else f"{diff:+.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def _short_cell(s: dict | None) -> str:
    return "-" if s is None else f"{s['mean']:.1f}±{s['std']:.1f}"


def _console_rows(results: dict) -> list[tuple[str, list[str]]]:
    """(row name, cells: one per size, then Avg. and Diff.) for every (label mode, method)."""
    rows = []
    for lab in results["labels"]:
        for m in results["methods"]:
            row = results["table"].get(m, {}).get(lab, {})
            summ = results["summary"].get(m, {}).get(lab, {})
            avg, diff = summ.get("avg"), summ.get("diff")
            cells = [_short_cell(row.get(str(n))) for n in results["sizes"]]
            cells += ["-" if avg is None else f"{avg:.1f}", "-" if diff is None else f"{diff:+.1f}"]
            rows.append((f"{lab} {m}", cells))
    return rows


def _legend(method: str) -> str:
    """'A (separate per size)' -> 'separate per size'; other display names as they are."""
    name = DISPLAY_NAMES.get(method, method)
    return name[len(method) + 2:-1] if name.startswith(f"{method} (") and name.endswith(")") else name


def console_table(results: dict, width: int = 80) -> str:
    """The per-size table as plain fixed-width text for a terminal or a log: no line longer than `width`
    (columns that do not fit continue in a block below, each block repeating the row names), no cell cut."""
    rows = _console_rows(results)
    heads = [f"IPC {n}" for n in results["sizes"]] + ["Avg.", f"vs {REFERENCE}"]
    name_w = max(len("labels method"), *(len(name) for name, _ in rows))
    col_w = max(len(h) for h in heads)
    col_w = max(col_w, *(len(c) for _, cells in rows for c in cells))
    per_block = max(1, (width - name_w) // (col_w + 1))
    lines = []
    for lo in range(0, len(heads), per_block):
        cols = range(lo, min(lo + per_block, len(heads)))
        lines.append(f"{'labels method':<{name_w}}" + "".join(f" {heads[i]:>{col_w}}" for i in cols))
        lines += [f"{name:<{name_w}}" + "".join(f" {cells[i]:>{col_w}}" for i in cols) for name, cells in rows]
        lines.append("")
    legend = (f"Test accuracy (%), mean±std over {len(results['seeds'])} seeds, last epoch. Avg. = mean over sizes; "
              f"vs {REFERENCE} = Avg. minus Baseline {REFERENCE}'s with the same labels. "
              + "; ".join(f"{m} = {_legend(m)}" for m in results["methods"]) + ".")
    return "\n".join(lines + textwrap.wrap(legend, width)) + "\n"


def markdown_report(results: dict) -> str:
    """The table with what produced it: command, budgets, seeds, times."""
    ev, cond = results["budgets"]["evaluate"], results["budgets"]["condense_config"]
    seconds = results.get("seconds", {})
    return "\n".join([
        f"# Benchmark: {results['dataset']}, IPC 1..{results['ipc']}, profile `{results['profile']}`",
        "",
        f"Test accuracy (%) of ConvNet-D3 (width {ev['width']}) trained on each size, last epoch, mean ± std over "
        f"{len(results['seeds'])} seeds. Avg. = mean over sizes of the per-size means; Diff. = Avg. minus "
        f"Baseline C's Avg. with the same labels.{formation_note(results)}",
        "",
        markdown_table(results),
        f"- command: `{results['command']}`",
        f"- condensation (every method alike): {cond['method']}, {cond['outer_loops']} outer x {cond['inner_loops']} "
        f"inner loops, period {cond['multisize']['period']}, batch_real {cond['batch_real']}, "
        f"width {cond['width']}; the method's settings {cond['method_settings']} (the whole tree: results.json)",
        f"- evaluation: {ev['epochs']} epochs, batch {ev['batch_size']}, lr {ev['lr']}, "
        f"test images {ev['max_test'] or 'all'}; soft labels: {results['budgets']['views']} teacher views per image",
        f"- teacher test accuracy: {_fmt(results.get('teacher_accuracy'))}",
        f"- compute: condensation {seconds.get('condense', 0):.0f} s, evaluation {seconds.get('evaluate', 0):.0f} s "
        f"(summed over runs, resumes included); wall time of the last invocation {seconds.get('wall', 0):.0f} s",
        "",
    ])


def formation_note(results: dict) -> str:
    """The sentence that says what a size holds when the methods store multi-formation images."""
    f = results.get("formation_factor", 1)
    if f == 1:
        return ""
    formed, plain = DISPLAY_NAMES[FORMED_CONTROL_METHOD], DISPLAY_NAMES[CONTROL_METHOD]
    return (f" Formation factor {f}: size k stores k images per class, each of {f}x{f} patches that decode to "
            f"{f * f} training images (k*{f * f} per class) for A, B, C, MDC and {formed} (k*{f * f} real images "
            f"formed into the same layout); {plain} stores k real images per class (the same storage).")


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}%"


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.md and results.png (atomic writes)."""
    from condenser.bench.plot import plot_results

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "plot": out_dir / "results.png"}
    atomic_write_bytes(paths["json"], json.dumps(results, indent=2).encode())
    atomic_write_bytes(paths["markdown"], markdown_report(results).encode())
    plot_results(results, paths["plot"])
    return paths
