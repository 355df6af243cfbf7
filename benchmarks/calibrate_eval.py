"""Calibrate the evaluation protocol on the random-real control (hard labels).

    python benchmarks/calibrate_eval.py --ipc 10 --epochs 100 300 1000 --seeds 3 --out cal.jsonl

Each trained student is scored on three test sets at once: the whole test split, a seeded stratified
random sample of `--max-test` images (what the bench uses now) and the split's class-balanced head (what
it used before), so the bias of a test subset is measured on the same networks. One JSON line per
(ipc, epochs, cutmix, batch, seed) run is appended to `--out`; a rerun skips the lines already there.
`--report` prints the table of docs/RESULTS.md "Calibration" from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from condenser.data import load_dataset
from condenser.evaluate import hard_label_source, random_real_subset
from condenser.evaluate.protocol import head_indices, stratified_indices, train_student
from condenser.profiles import get_profile


def _done(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["key"] for line in out.read_text().splitlines() if line.strip()}


@torch.no_grad()
def _scores(model: torch.nn.Module, test, subsets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy (percent) on each index subset of `test`, from one pass over the whole split."""
    model.eval()
    mean = torch.tensor(test.spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(test.spec.std).view(1, -1, 1, 1)
    correct = torch.cat([model((test.images[i:i + 1000].float() / 255.0 - mean) / std).argmax(-1)
                         == test.labels[i:i + 1000] for i in range(0, len(test), 1000)])
    return {name: round(100.0 * float(correct[idx].float().mean()), 2) for name, idx in subsets.items()}


def report(out: Path) -> str:
    """A Markdown table: mean ± std (population, over seeds) per setting and test set; first row per key."""
    import statistics
    from collections import defaultdict

    rows: dict[str, dict] = {}
    for line in out.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["key"], row)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows.values():
        groups[(row["ipc"], row["cutmix_p"], row["batch"], row["epochs"])].append(row)
    lines = ["| IPC | CutMix p | batch | epochs | seeds | full test split | stratified 2,000 | head 2,000 | "
             "head - full | CPU s/run |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (ipc, p, batch, epochs), runs in sorted(groups.items()):
        def ms(name: str, runs: list[dict] = runs) -> str:
            vals = [r[name] for r in runs]
            return f"{statistics.fmean(vals):.2f} ± {statistics.pstdev(vals):.2f}"

        bias = statistics.fmean(r["head"] - r["full"] for r in runs)
        cpu = statistics.fmean(r["cpu_seconds"] for r in runs)
        lines.append(f"| {ipc} | {p} | {batch} | {epochs} | {len(runs)} | {ms('full')} | {ms('stratified')} | "
                     f"{ms('head')} | {bias:+.2f} | {cpu:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10])
    parser.add_argument("--epochs", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--cutmix", type=float, nargs="+", default=[0.5], help="CutMix probabilities to try.")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="Run seeds first-seed .. first-seed+seeds-1.")
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--max-test", type=int, default=2000)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", action="store_true", help="Print the Markdown table of --out and exit.")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    subsets = {"full": torch.arange(len(test)), "stratified": stratified_indices(test, args.max_test),
               "head": head_indices(test, args.max_test)}
    base = get_profile(args.profile).evaluate
    for ipc in args.ipc:
        images, labels = random_real_subset(train, ipc, seed=args.subset_seed)
        for epochs in args.epochs:
            for p in args.cutmix:
                for batch in args.batch:
                    budget = replace(base, epochs=epochs, cutmix_p=p, batch_size=batch, max_test=None)
                    for seed in range(args.first_seed, args.first_seed + args.seeds):
                        key = f"ipc{ipc}-e{epochs}-cm{p}-b{batch}-s{seed}"
                        if key in _done(args.out):  # another process may have run it
                            continue
                        started = time.process_time()
                        source = hard_label_source(images, labels, train.spec.num_classes, budget,
                                                   train.spec.allow_flip)
                        model = train_student(source, train.spec, budget, seed)
                        row = {"key": key, "ipc": ipc, "epochs": epochs, "cutmix_p": p, "batch": batch,
                               "seed": seed, "subset_seed": args.subset_seed,
                               **_scores(model, test, subsets),
                               "cpu_seconds": round(time.process_time() - started, 1)}
                        with args.out.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
