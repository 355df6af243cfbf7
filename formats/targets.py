"""Soft-label targets kept as the codec stores them, decoded to dense float32 rows only when indexed.

A top-k file stores a few bytes per view, but its dense targets are [n, V, K] float32: 8,192 classes at
top-1 turn 5 stored bytes per view into 32 KiB. `CompactTargets` holds the stored arrays and decodes
only the rows a batch selects, with the codec's own decoding rule, so `targets[records, views]` is bit
for bit the same rows as indexing the dense array (docs/format.md, section 7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from formats.codecs import Codec, CodecParams
from formats.errors import DecodeLimitError


def check_decode(nbytes: int, max_bytes: int | None, what: str) -> None:
    """Raise DecodeLimitError before allocating `nbytes` when that is over the caller's limit."""
    if max_bytes is not None and nbytes > max_bytes:
        raise DecodeLimitError(f"{what} decodes to {nbytes:,} bytes, over the limit of {max_bytes:,} bytes "
                               f"(max_bytes); pass a larger max_bytes, or None for no limit")


class CompactTargets:
    """Teacher outputs [n, V, K] of a prefix, stored compactly; indexing returns dense float32 rows.

    Index with anything that selects records and views (`t[r]`, `t[records, views]`, slices, masks),
    optionally followed by an int or slice over the K classes. `np.asarray(t)` decodes everything, within
    the same `max_bytes` limit that the reader was given.
    """

    def __init__(self, codec: Codec, params: CodecParams, arrays: dict[str, np.ndarray], num_views: int,
                 max_bytes: int | None = None) -> None:
        rows = next(iter(arrays.values())).shape[0]
        if rows % num_views:
            raise ValueError(f"{rows} stored rows do not split into {num_views} views per record")
        self.codec, self.params, self.arrays = codec, params, arrays
        self.shape = (rows // num_views, num_views, params.num_classes)
        self.max_bytes = max_bytes

    ndim = 3
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"CompactTargets({self.codec.name}, shape={list(self.shape)}, {self.nbytes:,} bytes stored, "
                f"{self.dense_nbytes:,} dense)")

    @property
    def nbytes(self) -> int:
        """Bytes held (the stored arrays)."""
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the whole [n, V, K] float32 array that np.asarray() would build."""
        n, v, k = self.shape
        return n * v * k * 4

    def rows(self, flat: np.ndarray) -> np.ndarray:
        """Dense float32 rows [m, K] for flat row numbers (record * V + view)."""
        flat = np.asarray(flat, dtype=np.intp).reshape(-1)
        check_decode(flat.size * self.shape[2] * 4, self.max_bytes, f"selecting {flat.size} target rows")
        return self.codec.decode({name: a[flat] for name, a in self.arrays.items()}, self.params)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key) or len(key) > 3:
            raise TypeError("CompactTargets supports [records], [records, views] and [records, views, classes] "
                            "indexing, without an Ellipsis")
        classes = key[2] if len(key) == 3 else slice(None)
        if not isinstance(classes, (int, np.integer, slice)):
            raise TypeError("index the class axis of CompactTargets with an int or a slice; "
                            "use np.asarray(targets) for anything else")
        flat = self._flat(key[:2])
        return self.rows(flat).reshape(*flat.shape, self.shape[2])[..., classes]

    def _flat(self, key: tuple) -> np.ndarray:
        """Flat row numbers that numpy indexing of an [n, V] array with `key` would select."""
        n, v, _ = self.shape
        if len(key) == 2:
            r, j = np.asarray(key[0]), np.asarray(key[1])
            if r.dtype.kind in "iu" and j.dtype.kind in "iu":  # the batch path: no [n, V] grid
                r, j = np.broadcast_arrays(r.astype(np.intp), j.astype(np.intp))
                if ((r < -n) | (r >= n)).any() or ((j < -v) | (j >= v)).any():
                    raise IndexError(f"index out of bounds for targets of shape {list(self.shape)}")
                return np.where(r < 0, r + n, r) * v + np.where(j < 0, j + v, j)
        return np.arange(n * v).reshape(n, v)[key]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("CompactTargets cannot be viewed as an array without decoding (a copy)")
        check_decode(self.dense_nbytes, self.max_bytes, f"dense targets {list(self.shape)}")
        dense = self.codec.decode(self.arrays, self.params).reshape(self.shape)
        return dense if dtype is None else dense.astype(dtype, copy=False)


__all__ = ["CompactTargets", "check_decode"]
