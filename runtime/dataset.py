"""The loaded IPC-k prefix as a dataset: arrays, soft-label views, and the batches training consumes.

Three ways to read it (docs/trainer.md, "Data interfaces"):

- map-style, ``ds[i]`` / ``ds[i, v]`` -> :class:`Sample` ``(image, label, target, view)``: one record as a
  training step sees it. With soft labels, ``image`` is view ``v`` of record ``i`` *replayed* (crop,
  resize, flip, CutMix: docs/format.md section 6) and ``target`` the teacher's probabilities on exactly
  those pixels; with hard labels, the stored image and a one-hot row. ``ds[i]`` picks the view from
  ``(view_seed, epoch, i)`` so that an item is reproducible and ``set_epoch`` draws new views, the
  convention of torch's DistributedSampler. Works with ``torch.utils.data.DataLoader`` as it is.
- batches, ``ds.batches(b, rng=...)`` / ``ds.batch(records, ...)`` -> :class:`Batch`: numpy arrays padded
  to a fixed batch size, what ``runtime.train`` feeds both backends.
- exports: ``to_torch(labels="soft")`` (a torch Dataset of the same samples), ``to_columns()`` (numpy
  columns: images, labels and every view's parameters and target) and ``to_hf()`` (those columns as a
  Hugging Face ``datasets.Dataset``; the package is optional and imported only there).

Records are training images: for a multi-formation file (docs/format.md §4.1) the decoded ones, k*f*f per
class, each with its own views; ``stored_images`` keeps what the file stores.

Soft-label targets stay as the file stores them (formats.targets.CompactTargets, from runtime.load): an
item or a batch decodes only its own rows.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from runtime.errors import BackendError, ConfigError
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


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele, Lea and Flood, OOPSLA 2014): a cheap, portable 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_view(view_seed: int, epoch: int, record: int, num_views: int) -> int:
    """The view that ``ds[record]`` replays in `epoch`: uniform over the views, the same on every
    machine and in every DataLoader worker (no generator state to share)."""
    h = _splitmix64(_splitmix64(_splitmix64(view_seed & _MASK64) ^ (epoch & _MASK64)) ^ (record & _MASK64))
    return h % num_views


class Sample(NamedTuple):
    """Item ``ds[i]``: one record as a training step sees it."""

    image: np.ndarray  # float32 [C, H, W]: the replayed view (soft) or the stored image (hard)
    label: int  # the record's class
    target: np.ndarray  # float32 [K]: teacher probabilities on exactly `image` (soft), or one-hot (hard)
    view: int  # the view replayed; -1 = the stored image


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
    With multi-formation (factor f > 1, docs/format.md §4.1) the records are the decoded training images:
    k*f*f per class, decoded sample j = i*f*f + p of class c at record j*C + c, so `images[:k*f*f*C]` of a
    larger prefix is this one; `stored_images` are the k*C images the file stores, `ipc` counts those.
    `item_labels`, `view_seed` and `epoch` say what ``ds[i]`` returns (see the module docstring).
    """

    images: np.ndarray  # float32 normalised [n, C, H, W]: the training images (decoded when f > 1)
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
    item_labels: str = "auto"  # what ds[i] serves: auto (soft when the file has views), soft or hard
    view_seed: int = 0  # with `epoch`, picks the view of ds[i]
    epoch: int = 0
    formation_factor: int = 1  # f: each stored image decodes to f*f training images
    stored_images: np.ndarray | None = None  # float32 [n / (f*f), C, H, W] as stored; None: `images` (f = 1)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[0] != self.labels.shape[0]:
            raise ConfigError(f"images {self.images.shape} and labels {self.labels.shape} do not match")
        self._check_formation()
        if self.views is not None:
            check_views(self.views, len(self), tuple(self.images.shape[2:]))

    def _check_formation(self) -> None:
        """`stored_images` defaults to `images` at f = 1, and holds len(self) / (f*f) images of their shape."""
        f = self.formation_factor
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
            raise ConfigError(f"formation_factor must be a positive integer, got {f!r}")
        if self.stored_images is None:
            if f != 1:
                raise ConfigError(f"formation_factor {f} needs the stored_images the training images decode from")
            self.stored_images = self.images
        stored = self.stored_images
        if stored.shape[1:] != self.images.shape[1:] or stored.shape[0] * f * f != len(self):
            raise ConfigError(f"stored_images {stored.shape} do not decode to the {len(self)} training images "
                              f"{self.images.shape} at formation factor {f}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        formation = f", formation_factor={self.formation_factor}" if self.formation_factor > 1 else ""
        return (f"Dataset({self.dataset or 'mdc'!s}, ipc={self.ipc}, n={len(self)}, "
                f"classes={self.num_classes}, image_shape={self.image_shape}, views={self.num_views}{formation})")

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

    # ------------------------------------------------------------------------------ map-style items
    def set_epoch(self, epoch: int) -> None:
        """Draw new views for ``ds[i]``: call once per epoch, before iterating a DataLoader over ds."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def _record(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Dataset indices are ints or (record, view) pairs, not {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} is outside the {n} records of this prefix")
        return int(index) % n

    def _view(self, view: Any) -> int:
        if isinstance(view, bool) or not isinstance(view, (int, np.integer)):
            raise TypeError(f"a view index is an int, not {type(view).__name__}")
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} is outside the {self.num_views} views of each record")
        return int(view)

    def __getitem__(self, key: Any) -> Sample:
        """``ds[i]``: record i with the view of this epoch; ``ds[i, v]``: with view v (soft labels only)."""
        record, view = (key if isinstance(key, tuple) and len(key) == 2 else (key, None))
        r = self._record(record)
        if self.resolve_labels(self.item_labels) == "hard":
            if view is not None:
                raise ConfigError("ds[i, v] selects a soft-label view; this dataset serves hard labels")
            target = np.zeros(self.num_classes, np.float32)
            target[self.labels[r]] = 1.0
            return Sample(np.array(self.images[r], np.float32), int(self.labels[r]), target, -1)
        v = item_view(self.view_seed, self.epoch, r, self.num_views) if view is None else self._view(view)
        image = replay(self.images, self.views, [r], [v])[0]
        target = decode_targets(self.views.targets[[r], [v]], self.label_kind, self.temperature)[0]
        return Sample(image, int(self.labels[r]), target, v)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    # ----------------------------------------------------------------------------------- batches
    def batch(self, records: Any, batch_size: int | None = None, labels: str = "auto",
              rng: np.random.Generator | None = None, *, views: Any = None) -> Batch:
        """Render `records` as one batch padded to batch_size (rows of weight 0 after the real ones).

        soft: view ``views[j]`` of each record (default: one view per record drawn uniformly from rng),
        replayed in numpy, with its teacher probabilities; hard: the stored image with a one-hot label.
        """
        mode = self.resolve_labels(labels)
        records = np.asarray(records, dtype=np.int64).reshape(-1)
        m = records.shape[0]
        b = m if batch_size is None else int(batch_size)
        if m > b:
            raise ConfigError(f"{m} records do not fit a batch of {b}")
        if m and (records.min() < 0 or records.max() >= len(self)):
            raise ConfigError(f"a record index is outside the {len(self)} records of this prefix")
        k = self.num_classes
        if mode == "soft":
            v = self._batch_views(m, rng, views)
            x = replay(self.images, self.views, records, v)
            t = decode_targets(self.views.targets[records, v], self.label_kind, self.temperature)
        else:
            if views is not None:
                raise ConfigError("views= selects soft-label views; this batch uses hard labels")
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

    def _batch_views(self, m: int, rng: np.random.Generator | None, views: Any) -> np.ndarray:
        if views is None:
            rng = rng if rng is not None else np.random.default_rng()
            return rng.integers(0, self.num_views, size=m)
        v = np.asarray(views).reshape(-1)
        if v.dtype.kind not in "iu" or v.shape[0] != m:
            raise ConfigError(f"views= must be {m} integers, one per record, got {v.dtype} {v.shape}")
        if m and (v.min() < 0 or v.max() >= self.num_views):
            raise ConfigError(f"a view index is outside the {self.num_views} views of each record")
        return v.astype(np.int64)

    def make_batch(self, records: Any, batch_size: int | None = None, labels: str = "auto",
                   rng: np.random.Generator | None = None) -> Batch:
        """The former name of :meth:`batch`, kept for existing callers."""
        return self.batch(records, batch_size, labels, rng)

    def batches(self, batch_size: int, labels: str = "auto", rng: np.random.Generator | int | None = None,
                shuffle: bool = True, pad: bool = True) -> Iterator[Batch]:
        """One epoch: ceil(n / batch_size) batches, records shuffled, the last one padded (weights 0).

        The permutation, then each batch's views, are drawn from `rng` in that order: the stream that
        ``runtime.train`` uses, so ``batches(b, rng=seed)`` yields the batches of its first epoch.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        for i in range(0, len(order), batch_size):
            recs = order[i:i + batch_size]
            yield self.batch(recs, batch_size if pad else None, labels, rng)

    # ----------------------------------------------------------------------------------- exports
    def to_torch(self, labels: str = "hard") -> Any:
        """A torch Dataset; needs torch installed.

        labels "hard": a TensorDataset of (images float32 [n,C,H,W], labels int64 [n]), as before.
        "soft" / "auto": a runtime.torch_data.TorchDataset over this dataset's samples (tensors of
        ``ds[i]``, views replayed, `set_epoch` forwarded), without copying the arrays.
        """
        mode = self.resolve_labels(labels)
        try:
            import torch
            from torch.utils.data import TensorDataset

            from runtime.torch_data import TorchDataset
        except ImportError as exc:
            raise BackendError("to_torch() needs torch; the arrays are in .images / .labels and "
                               "ds[i] serves the samples") from exc
        if mode == "soft":
            served = copy.copy(self)
            served.item_labels = "soft"
            return TorchDataset(served)
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(self.images)),
                             torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64)))

    def to_columns(self) -> dict[str, np.ndarray]:
        """The prefix as numpy columns, one row per record: `image`, `label` and, with views, each view's
        parameters (`view_crop`, `view_flip`, `view_mix_partner`, `view_mix_box`; replay them with
        runtime.views.apply_views) and `view_target` (teacher probabilities [n, V, K], decoded whole)."""
        cols = {"image": np.ascontiguousarray(self.images, dtype=np.float32),
                "label": np.asarray(self.labels, dtype=np.int64)}
        if self.has_soft_labels:
            v = self.views
            cols.update(view_crop=np.rint(np.asarray(v.crop)).astype(np.int32),
                        view_flip=np.asarray(v.flip, dtype=bool),
                        view_mix_partner=np.asarray(v.mix_partner).astype(np.int32),
                        view_mix_box=np.rint(np.asarray(v.mix_box)).astype(np.int32),
                        view_target=self.soft_labels)
        return cols

    def to_hf(self) -> Any:
        """`to_columns()` as a Hugging Face datasets.Dataset with typed features (label names as a
        ClassLabel); needs the optional `datasets` package, which the device install does not pull."""
        try:
            import datasets
        except ImportError as exc:
            raise BackendError("to_hf() needs the Hugging Face datasets package (pip install datasets); "
                               "to_columns() gives the same columns as numpy arrays") from exc
        cols = self.to_columns()
        return datasets.Dataset.from_dict(cols, features=_hf_features(datasets, cols, self.class_names))


def _hf_features(datasets: Any, cols: dict[str, np.ndarray], class_names: list[str]) -> Any:
    """Fixed-shape array features for every column (Arrow keeps the shapes), labels as a ClassLabel."""
    arrays = {2: datasets.Array2D, 3: datasets.Array3D}
    features: dict[str, Any] = {}
    for name, col in cols.items():
        if name == "label":
            features[name] = datasets.ClassLabel(names=list(class_names))
        elif col.ndim == 2:
            features[name] = datasets.Sequence(datasets.Value(str(col.dtype)), length=col.shape[1])
        else:
            features[name] = arrays[col.ndim - 1](shape=col.shape[1:], dtype=str(col.dtype))
    return datasets.Features(features)


__all__ = ["Batch", "Dataset", "Sample", "decode_targets", "item_view"]
