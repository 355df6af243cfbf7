"""Accuracy against IPC, one line per method with a ± std band, one panel per label mode (Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

from condenser.bench.config import DISPLAY_NAMES
from condenser.checkpoint import atomic_write_bytes


def plot_results(results: dict, path: str | Path) -> Path:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot state, no display

    labels = list(results["labels"])
    fig = Figure(figsize=(6 * len(labels), 4.5))
    axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)
    for ax, lab in zip(axes[0], labels, strict=True):
        for m in results["methods"]:
            row = results["table"].get(m, {}).get(lab, {})
            sizes = [n for n in results["sizes"] if str(n) in row]
            if not sizes:
                continue
            mean = [row[str(n)]["mean"] for n in sizes]
            std = [row[str(n)]["std"] for n in sizes]
            (line,) = ax.plot(sizes, mean, marker="o", ms=3, label=DISPLAY_NAMES.get(m, m))
            ax.fill_between(sizes, [a - s for a, s in zip(mean, std, strict=True)],
                            [a + s for a, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.2)
        ax.set_title(f"{lab} labels")
        ax.set_xlabel("images per class (IPC)")
        ax.set_xticks(results["sizes"])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    factor = results.get("formation_factor", 1)
    formed = f", formation factor {factor}" if factor > 1 else ""
    fig.suptitle(f"{results['dataset']}, profile {results['profile']}, {len(results['seeds'])} seeds{formed}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
