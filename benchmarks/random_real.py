"""Evaluation protocol on a random real subset (the honest control of docs/RESULTS.md).

    python benchmarks/random_real.py --dataset fashion-mnist --ipc 10 --profile cpu --seeds 3

Prints one JSON line with per-seed last-epoch accuracies, mean, std, the budget and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time

from condenser.data import load_dataset
from condenser.evaluate import evaluate_images, random_real_subset
from condenser.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-augment", action="store_true", help="Protocol without DSA and CutMix.")
    args = parser.parse_args()

    budget = get_profile(args.profile).evaluate
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.no_augment:
        overrides.update(dsa_strategy="", cutmix_p=0.0)
    if overrides:
        from dataclasses import replace

        budget = replace(budget, **overrides)
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    images, labels = random_real_subset(train, args.ipc, seed=args.subset_seed)
    started = time.time()
    result = evaluate_images(images, labels, test, budget, seeds=range(args.seeds))
    print(json.dumps({"dataset": args.dataset, "ipc": args.ipc, "profile": args.profile,
                      "subset_seed": args.subset_seed, **result.as_dict(),
                      "total_seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
