"""The loaded IPC-k prefix as a dataset: arrays, soft-label views, and the batches training consumes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.errors import ConfigError
from runtime.views import check_views, replay


def decode_targets(targets: np.ndarray, label_kind: str, temperature: float) -> np.ndarray:
    """Teacher outputs -> probabilities: softmax(logits / T) for logits; probs renormalised to sum 1
    (top-k and 8-bit codecs lose a little mass, and CE needs a distribution)."""
    t = np.asarray(targets, dtype=np.float32)
    if label_kind == "logits":
        z = t / np.float32(temperature)
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    if label_kind == "probs":
        p = np.clip(t, 0.0, None)
        s = p.sum(axis=-1, keepdims=True)
        return np.where(s > 0, p / np.where(s > 0, s, 1), np.float32(1.0 / t.shape[-1])).astype(np.float32)
    raise ConfigError(f"unknown label kind {label_kind!r}; known: logits, probs")


@dataclass
class Batch:
    """One training batch, padded to a fixed size: rows with weight 0 are padding (record -1)."""

    x: np.ndarray  # float32 [B, C, H, W]
    targets: np.ndarray  # float32 [B, K] probabilities
    weights: np.ndarray  # float32 [B]
    records: np.ndarray  # int64 [B]
    view_index: np.ndarray  # int64 [B]; -1 = the stored image (hard labels or padding)

    @property
    def count(self) -> int:
        return int((self.records >= 0).sum())


@dataclass
class Dataset:
    """The IPC-k prefix of a .mdc file, decoded: what a device trains on.

    Records are IPC-major (record r = i * C + c), so `images[:k*C]` of a larger prefix is this one.
    """

    images: np.ndarray  # float32 normalised [n, C, H, W]
    labels: np.ndarray  # int64 [n]
    ipc: int
    num_classes: int
    class_names: list[str]
    # formats.Views or None; views.targets are the teacher outputs (see label_kind), dense [n, V, K] or, from
    # runtime.load, a formats.targets.CompactTargets that decodes only the rows a batch indexes
    views: Any = None
    label_kind: str = "probs"
    temperature: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None
    trainer_bundle: bytes | None = None  # serialized runtime.bundle.TrainerBundle embedded in the file
    path: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)  # how the prefix size was chosen

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[0] != self.labels.shape[0]:
            raise ConfigError(f"images {self.images.shape} and labels {self.labels.shape} do not match")
        if self.views is not None:
            check_views(self.views, len(self), tuple(self.images.shape[2:]))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset({self.dataset or 'mdc'!s}, ipc={self.ipc}, n={len(self)}, "
                f"classes={self.num_classes}, image_shape={self.image_shape}, views={self.num_views})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_views(self) -> int:
        return 0 if self.views is None else int(np.shape(self.views.flip)[1])

    @property
    def has_soft_labels(self) -> bool:
        return self.views is not None and self.num_views > 0

    @property
    def soft_labels(self) -> np.ndarray | None:
        """Teacher probabilities per record and view, float32 [n, V, K], decoded whole on each access
        (formats.DecodeLimitError when that exceeds the max_bytes of runtime.load); batches decode only
        their own rows."""
        if not self.has_soft_labels:
            return None
        return decode_targets(self.views.targets, self.label_kind, self.temperature)

    def resolve_labels(self, labels: str) -> str:
        """'auto' -> 'soft' when the file has views, else 'hard'; 'soft' without views is an error."""
        if labels == "auto":
            return "soft" if self.has_soft_labels else "hard"
        if labels == "soft" and not self.has_soft_labels:
            raise ConfigError(f"labels='soft' but {self.path or 'this dataset'} stores no soft-label views; "
                              "use labels='hard'")
        if labels not in ("soft", "hard"):
            raise ConfigError(f"unknown labels {labels!r}; known: auto, soft, hard")
        return labels

    def make_batch(self, records: np.ndarray, batch_size: int | None = None, labels: str = "auto",
                   rng: np.random.Generator | None = None) -> Batch:
        """Render `records` padded to batch_size: soft = one uniformly drawn view per record, replayed in
        numpy, with its teacher probabilities; hard = the stored image with a one-hot label."""
        mode = self.resolve_labels(labels)
        records = np.asarray(records, dtype=np.int64)
        m = records.shape[0]
        b = m if batch_size is None else int(batch_size)
        if m > b:
            raise ConfigError(f"{m} records do not fit a batch of {b}")
        k = self.num_classes
        if mode == "soft":
            rng = rng if rng is not None else np.random.default_rng()
            v = rng.integers(0, self.num_views, size=m)
            x = replay(self.images, self.views, records, v)
            t = decode_targets(self.views.targets[records, v], self.label_kind, self.temperature)
        else:
            v = np.full(m, -1, dtype=np.int64)
            x = self.images[records]
            t = np.zeros((m, k), dtype=np.float32)
            t[np.arange(m), self.labels[records]] = 1.0
        pad = b - m
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=np.float32)])
            t = np.concatenate([t, np.full((pad, k), 1.0 / k, dtype=np.float32)])
        weights = np.concatenate([np.ones(m, np.float32), np.zeros(pad, np.float32)])
        return Batch(x=np.ascontiguousarray(x, dtype=np.float32), targets=np.ascontiguousarray(t),
                     weights=weights, records=np.concatenate([records, np.full(pad, -1, np.int64)]),
                     view_index=np.concatenate([v, np.full(pad, -1, np.int64)]))

    def batches(self, batch_size: int, labels: str = "auto", rng: np.random.Generator | int | None = None,
                shuffle: bool = True, pad: bool = True) -> Iterator[Batch]:
        """One epoch: ceil(n / batch_size) batches, records shuffled, the last one padded (weights 0)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        for i in range(0, len(order), batch_size):
            recs = order[i:i + batch_size]
            yield self.make_batch(recs, batch_size if pad else None, labels, rng)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self.images[i], int(self.labels[i])

    def to_torch(self):
        """A torch TensorDataset of (images float32 [n,C,H,W], labels int64 [n]); needs torch installed."""
        try:
            import torch
            from torch.utils.data import TensorDataset
        except ImportError as exc:
            from runtime.errors import BackendError

            raise BackendError("to_torch() needs torch; the arrays are in .images / .labels") from exc
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(self.images)),
                             torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64)))


__all__ = ["Batch", "Dataset", "decode_targets"]
