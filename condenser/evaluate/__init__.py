"""Evaluation protocol: train fresh networks on condensed (or control) sets, last-epoch accuracy."""

from condenser.evaluate.controls import formed_real_subset, random_real_subset
from condenser.evaluate.protocol import (
    EvalResult,
    evaluate_images,
    evaluate_source,
    evaluate_views,
    hard_label_source,
    train_and_test,
)

__all__ = [
    "EvalResult",
    "evaluate_images",
    "evaluate_source",
    "evaluate_views",
    "formed_real_subset",
    "hard_label_source",
    "random_real_subset",
    "train_and_test",
]
