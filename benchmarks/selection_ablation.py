"""Which real images should a nested file start from? Each selection against the random-real control.

    python benchmarks/selection_ablation.py --teacher PATH/teacher.safetensors --out sel.jsonl
    python benchmarks/selection_ablation.py --report sel.jsonl

Every candidate is a nested order of `--ipc` real images per class (`random`: the bench's control,
seed 0; `first`: the split's file order, what gm/dm started from; `herding` / `kmeans` on the teacher's
features, condenser/methods/selection.py). All are relabelled by the same teacher with the same views
(RelabelConfig, seed 0; dense float32 targets, no codec) and trained with the same budget (default: the
cpu profile's quick protocol: 100 epochs, 2,000 stratified test images, 3 seeds), so the differences are
the selection's alone. One JSON line per (selection, size, labels) goes to `--out`; reruns skip done lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import formats
from condenser.data import ImageDataset, load_dataset
from condenser.evaluate import random_real_subset
from condenser.evaluate.protocol import evaluate_images, evaluate_views
from condenser.methods.selection import embed, select_indices
from condenser.profiles import get_profile
from condenser.relabel import RelabelConfig, relabel
from condenser.teacher import load_teacher
from formats import Views

SELECTIONS = ("random", "first", "herding", "kmeans")


def nested_images(train: ImageDataset, ipc: int, how: str, model: torch.nn.Module, pool: int) -> torch.Tensor:
    """IPC-major normalised images [ipc*C, ...] of selection `how`."""
    if how == "random":
        return random_real_subset(train, ipc, seed=0)[0]
    c = train.spec.num_classes
    if how == "first":
        idx = torch.stack([train.first_of_class(k, ipc) for k in range(c)])
    else:
        idx = select_indices(train, ipc, how, lambda x: embed(model, x), pool=pool)
    return train.normalized(idx.t().reshape(-1))  # [C, ipc] -> IPC-major


def prefix_views(views: Views, n: int) -> Views:
    """The first `n` records' views (partners of a prefix lie inside it: condenser/relabel.py)."""
    return Views(**{k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in vars(views).items()})


def score(how: str, images: torch.Tensor, ctx: dict, args: argparse.Namespace) -> None:
    """Relabel `images` (IPC-major, normalised) and train every requested size and label mode on them."""
    c, teacher, budget = ctx["classes"], ctx["teacher"], ctx["budget"]
    labels = torch.arange(c).repeat(images.shape[0] // c)
    rcfg = RelabelConfig(views=args.views, flip=ctx["train"].spec.allow_flip, seed=0)
    views = relabel(images, [teacher.model], c, rcfg, "cpu")
    for size in args.sizes:
        for mode in args.labels:
            key = f"{how}/{size}/{mode}/{args.epochs}/{args.seeds}/{args.loss}"
            if key in ctx["done"]:
                continue
            n = size * c
            started = time.process_time()
            if mode == "hard":
                res = evaluate_images(images[:n], labels[:n], ctx["test"], budget, device="cpu")
            else:
                res = evaluate_views(images[:n], prefix_views(views, n), ctx["test"], replace(budget, loss=args.loss),
                                     device="cpu", labels=labels[:n])
            row = {"key": key, "selection": how, "size": size, "labels": mode, "epochs": args.epochs,
                   "loss": args.loss, "accuracies": res.accuracies, "mean": round(res.mean, 2),
                   "std": round(res.std, 2), "cpu_seconds": round(time.process_time() - started, 1),
                   "teacher": teacher.meta.get("config"), "teacher_accuracy": teacher.test_accuracy}
            with Path(args.out).open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{how:8s} IPC {size:2d} {mode}: {res.mean:.2f} ± {res.std:.2f}", flush=True)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    train = load_dataset(args.dataset, "train")
    ctx = {"train": train, "test": load_dataset(args.dataset, "test"), "classes": train.spec.num_classes,
           "teacher": load_teacher(args.teacher, device="cpu"),
           "budget": replace(get_profile(args.profile).quick_budget, epochs=args.epochs, seeds=args.seeds),
           "done": {json.loads(line)["key"] for line in out.read_text().splitlines()} if out.exists() else set()}
    for how in args.sets:
        score(how, nested_images(train, args.ipc, how, ctx["teacher"].model, args.pool), ctx, args)
    for item in args.images:  # NAME=PATH: an .mdc file's images (relabelled here like the others) or a torch file
        name, _, path = item.partition("=")
        score(name, _stored_images(Path(path)), ctx, args)


def _stored_images(path: Path) -> torch.Tensor:
    """IPC-major normalised images of an .mdc file (all its blocks), or of a torch file holding them."""
    if path.suffix != ".mdc":
        return torch.load(path, weights_only=True)
    with formats.open_mdc(path) as reader:
        return torch.from_numpy(reader.read(reader.ipc_max).images)


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    sizes = sorted({r["size"] for r in rows})
    lines = ["| selection | labels | loss | " + " | ".join(str(s) for s in sizes) + " | mean |",
             "|---|---|---|" + "---:|" * (len(sizes) + 1)]
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        groups.setdefault((r["selection"], r["labels"], r["loss"]), {})[r["size"]] = r
    for (how, mode, loss), by_size in groups.items():
        cells = [f"{by_size[s]['mean']:.2f} ± {by_size[s]['std']:.2f}" if s in by_size else "" for s in sizes]
        avg = statistics.fmean(r["mean"] for r in by_size.values())
        lines.append(f"| {how} | {mode} | {loss} | " + " | ".join(cells) + f" | {avg:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teacher", help="teacher.safetensors (the labeller and the feature extractor)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--sets", nargs="*", default=list(SELECTIONS), choices=SELECTIONS)
    parser.add_argument("--labels", nargs="+", default=["soft"], choices=["soft", "hard"])
    parser.add_argument("--loss", default="soft_ce")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--pool", type=int, default=2000, help="candidate real images per class")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", nargs="*", default=[], metavar="NAME=PATH",
                        help="also score these sets (.mdc files, or torch files of IPC-major normalised images)")
    parser.add_argument("--out", default="selection.jsonl")
    parser.add_argument("--report", type=Path, help="print the Markdown table of a results file and exit")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    torch.set_num_threads(1)
    run(args)


if __name__ == "__main__":
    main()
