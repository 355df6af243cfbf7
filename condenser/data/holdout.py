"""A held-out test split for data that comes without one: per class, a fixed fraction, chosen by a seed.

Used by `imagefolder:PATH` when there is no test/ or val/ folder and by `from_arrays` without test arrays.
Each item has a key (an image file's path relative to the dataset root, or an array index); within its
class the items are ranked by sha256(seed, key) and the first `holdout_count` go to the test split. So the
split depends only on the keys, the labels, the fraction and the seed: the teacher, the build and
`condenser eval` all get the same one, a file added to one class moves at most one other file of that
class, and the two splits are disjoint by construction.

The default fraction is 0.2 (the usual 80/20 split). The held-out split measures every accuracy the
tools report (teacher, per-size table, random-real control), whose standard error falls as
1/sqrt(test images): against 0.1, 0.2 makes those numbers 1.4 times as precise for 11% fewer training
images, and condensation needs far fewer real images per class than a few hundred user images give.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from condenser.errors import CondenserError

DEFAULT_HOLDOUT = 0.2
DEFAULT_SPLIT_SEED = 0


class HoldoutError(CondenserError, ValueError):
    """A held-out test split cannot be made: a bad fraction or seed, or a class with fewer than 2 items."""


def check_holdout(fraction: float, seed: int, where: str) -> None:
    """A fraction strictly between 0 and 1 and a seed >= 0; `where` names the setting in the message."""
    if not 0.0 < fraction < 1.0:
        raise HoldoutError(f"{where}: holdout={fraction} must be a fraction between 0 and 1 (exclusive), e.g. 0.2")
    if seed < 0:
        raise HoldoutError(f"{where}: seed={seed} must be >= 0")


def holdout_count(n: int, fraction: float) -> int:
    """Test items of a class of n >= 2: round(fraction * n), but at least 1 and leaving at least 1 to train."""
    return min(n - 1, max(1, int(np.floor(fraction * n + 0.5))))


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def holdout_mask(labels: Sequence[int], keys: Sequence[str], class_names: Sequence[str], fraction: float,
                 seed: int, where: str) -> np.ndarray:
    """bool [N], True for the items of the test split; every class needs at least 2 items (one per split)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(keys) != len(labels):
        raise HoldoutError(f"{where}: {len(keys)} keys for {len(labels)} labels")
    mask = np.zeros(len(labels), dtype=bool)
    for c, name in enumerate(class_names):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise HoldoutError(
                f"{where}: class {name!r} has {len(members)} image(s); holding out a test split needs at "
                "least 2 per class: add images or give a test split")
        ranked = sorted(members.tolist(), key=lambda i: _rank(seed, keys[i]))
        mask[ranked[: holdout_count(len(members), fraction)]] = True
    return mask
