"""Soft-label codecs: how the teacher's per-view outputs are packed, in a name -> codec registry.

A codec turns rows [m, K] (one row per view) into a few stored arrays [m, ...] and back to dense
rows. Top-k codecs keep the k largest values; what the dropped classes decode to is defined so
that softmax/probabilities are preserved for the kept classes and the remaining probability mass
is spread uniformly over the dropped ones (see docs/format.md, "Soft-label codecs").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from formats.errors import InvalidDataError, UnknownCodecError

F16_MAX = float(np.finfo(np.float16).max)
F16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16
_CHUNK = 2048  # rows per top-k selection step (fits the cache)


@dataclass(frozen=True)
class CodecParams:
    """What a codec needs besides the rows; all of it lives in the header's `views` map."""

    num_classes: int
    topk: int | None
    label_kind: str  # "logits" | "probs"
    temperature: float


@dataclass(frozen=True)
class StoredArray:
    """An array a codec stores per view: allowed dtypes (the file says which) and per-view shape."""

    name: str
    dtypes: tuple[str, ...]
    shape: tuple[int, ...]


class Codec:
    """Base class. Subclasses set `name` and implement the three methods."""

    name: str = ""
    uses_topk: bool = False

    def stored(self, p: CodecParams) -> list[StoredArray]:
        raise NotImplementedError

    def encode(self, rows: np.ndarray, p: CodecParams) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, arrays: dict[str, np.ndarray], p: CodecParams) -> np.ndarray:
        raise NotImplementedError

    def check_stored(self, arrays: dict[str, np.ndarray], p: CodecParams) -> None:
        """Raise InvalidDataError when stored rows break a rule of docs/format.md, section 7."""
        raise NotImplementedError

    def check_params(self, p: CodecParams) -> None:
        """Raise InvalidDataError when the parameters cannot be used with this codec."""
        if p.label_kind not in ("logits", "probs"):
            raise InvalidDataError(f"label_kind must be 'logits' or 'probs', got {p.label_kind!r}")
        if not (np.isfinite(p.temperature) and p.temperature > 0):
            raise InvalidDataError(f"temperature must be a positive finite number, got {p.temperature!r}")
        if self.uses_topk:
            if p.topk is None or not 1 <= p.topk <= p.num_classes:
                raise InvalidDataError(
                    f"codec {self.name!r} needs 1 <= topk <= {p.num_classes}, got {p.topk!r}")
            if p.num_classes > 65536:
                raise InvalidDataError(f"codec {self.name!r} supports at most 65536 classes")


def _check_rows(rows: np.ndarray, p: CodecParams) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != p.num_classes:
        raise InvalidDataError(f"targets rows must be [m, {p.num_classes}], got {list(rows.shape)}")
    if not np.isfinite(rows).all():
        raise InvalidDataError("targets contain NaN or infinity")
    return rows


def _to_f16(a: np.ndarray, what: str) -> np.ndarray:
    if a.size and float(np.abs(a).max()) > F16_MAX:
        raise InvalidDataError(f"{what} exceed the float16 range ({F16_MAX}); use codec dense-f32")
    return a.astype("<f2")


class DenseCodec(Codec):
    """Every class, as float16 (dense-f16) or float32 (dense-f32, the lossless reference)."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, dtype

    def stored(self, p: CodecParams) -> list[StoredArray]:
        return [StoredArray("targets", (self.dtype,), (p.num_classes,))]

    def encode(self, rows: np.ndarray, p: CodecParams) -> dict[str, np.ndarray]:
        rows = _check_rows(rows, p)
        out = _to_f16(rows, "targets") if self.dtype == "float16" else rows.astype("<f4")
        return {"targets": out}

    def decode(self, arrays: dict[str, np.ndarray], p: CodecParams) -> np.ndarray:
        return arrays["targets"].astype(np.float32)

    def check_stored(self, arrays: dict[str, np.ndarray], p: CodecParams) -> None:
        t = arrays["targets"]
        _check_finite("targets", t)
        if p.label_kind == "probs":
            _check_nonnegative("targets", t)
            _check_row_sums("targets", t)


def _first_row(bad: np.ndarray) -> int:
    """Row (= record * V + view) of the first True entry of a [m, ...] mask."""
    return int(np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0][0])


def _check_finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        raise InvalidDataError(f"views.{name} row {_first_row(bad)} holds NaN or infinity")


def _check_nonnegative(name: str, a: np.ndarray) -> None:
    bad = a < 0
    if bad.any():
        raise InvalidDataError(f"views.{name} row {_first_row(bad)} holds a negative probability")


def _check_row_sums(name: str, rows: np.ndarray) -> None:
    """Probability rows must sum to a finite number (runtime normalises them, docs/format.md section 7)."""
    with np.errstate(over="ignore"):
        sums = np.sum(rows, axis=1, dtype=np.float32)  # buffered casts: no float32 copy of the rows
    bad = ~np.isfinite(sums)
    if bad.any():
        raise InvalidDataError(f"views.{name} row {_first_row(bad)} sums to infinity")


def index_dtype(num_classes: int) -> str:
    return "uint8" if num_classes <= 256 else "uint16"


def topk_select(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row (in no particular order)."""
    m, n = rows.shape
    if k < n:
        idx = np.argpartition(rows, n - k, axis=1)[:, n - k:]
    else:
        idx = np.broadcast_to(np.arange(n), (m, n)).copy()
    return idx, np.take_along_axis(rows, idx, axis=1)


def logit_fill(rows: np.ndarray, idx: np.ndarray, temperature: float) -> np.ndarray:
    """Logit that, given to every dropped class, keeps their total softmax mass at temperature T.

    fill = T * (logsumexp(z_dropped / T) - log(K - k)); when nothing is dropped, the smallest kept logit.
    """
    m, n = rows.shape
    k = idx.shape[1]
    if k == n:
        return rows.min(axis=1).astype(np.float32)
    dropped = np.ones((m, n), dtype=bool)
    np.put_along_axis(dropped, idx, False, axis=1)
    a = np.where(dropped, rows.astype(np.float64) / temperature, -np.inf)
    mx = a.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(a - mx).sum(axis=1))
    return (temperature * (lse - np.log(n - k))).astype(np.float32)


class TopKCodec(Codec):
    """The k largest outputs per view: uint8/16 indices plus float16 or 8-bit quantised values."""

    uses_topk = True

    def __init__(self, name: str, quantized: bool) -> None:
        self.name, self.quantized = name, quantized

    def stored(self, p: CodecParams) -> list[StoredArray]:
        k = int(p.topk or 0)
        out = [StoredArray("topk_index", (index_dtype(p.num_classes),), (k,)),
               StoredArray("topk_value", ("uint8",) if self.quantized else ("float16",), (k,))]
        if self.quantized:
            out.append(StoredArray("topk_scale", ("float16", "float32"), ()))
        if p.label_kind == "logits":
            out.append(StoredArray("topk_fill", ("float32",), ()))
        return out

    def encode(self, rows: np.ndarray, p: CodecParams) -> dict[str, np.ndarray]:
        rows = _check_rows(rows, p)
        k = int(p.topk or 0)
        m = rows.shape[0]
        logits = p.label_kind == "logits"
        idx = np.empty((m, k), dtype=index_dtype(p.num_classes))
        vals = np.empty((m, k), dtype=np.float32)
        offset = np.zeros(m, dtype=np.float32)
        for s in range(0, m, _CHUNK):  # chunks keep the selection's temporaries in cache
            ci, cv = topk_select(rows[s:s + _CHUNK], k)
            idx[s:s + _CHUNK], vals[s:s + _CHUNK] = ci, cv
            if logits:
                offset[s:s + _CHUNK] = logit_fill(rows[s:s + _CHUNK], ci, p.temperature)
        out: dict[str, np.ndarray] = {"topk_index": idx}
        if logits:
            out["topk_fill"] = offset.astype("<f4")
        elif (vals < 0).any():
            raise InvalidDataError("probability targets must be >= 0")
        if not self.quantized:
            out["topk_value"] = _to_f16(vals, "targets")
            return out
        scale = (vals.max(axis=1) - offset) / 255.0
        scale = np.maximum(scale, 0.0)
        nz = scale[scale > 0]
        normal16 = nz.size == 0 or (nz.min() >= F16_TINY and nz.max() <= F16_MAX)
        scale_st = scale.astype("<f2" if normal16 else "<f4")
        s = scale_st.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(s > 0, np.rint((vals - offset[:, None]) / s), 0.0)
        out["topk_value"] = np.clip(q, 0, 255).astype("<u1")
        out["topk_scale"] = scale_st
        return out

    def _values(self, arrays: dict[str, np.ndarray], p: CodecParams) -> tuple[np.ndarray, np.ndarray]:
        """(kept values [m, k], fill offset [m]) as float32, by the decoding rule of docs/format.md section 7."""
        m = arrays["topk_index"].shape[0]
        offset = arrays["topk_fill"].astype(np.float32) if p.label_kind == "logits" else np.zeros(m, np.float32)
        if self.quantized:
            scale = arrays["topk_scale"].astype(np.float32)
            return offset[:, None] + arrays["topk_value"].astype(np.float32) * scale[:, None], offset
        return arrays["topk_value"].astype(np.float32), offset

    def check_stored(self, arrays: dict[str, np.ndarray], p: CodecParams) -> None:
        idx = arrays["topk_index"]
        if idx.size and int(idx.max()) >= p.num_classes:
            row = _first_row(idx >= p.num_classes)
            raise InvalidDataError(f"views.topk_index row {row} holds class {int(idx[row].max())} >= num_classes "
                                   f"{p.num_classes}")
        if idx.shape[1] > 1:
            ordered = np.sort(idx, axis=1)
            same = ordered[:, 1:] == ordered[:, :-1]
            if same.any():
                row = _first_row(same)
                c = int(ordered[row, 1:][same[row]][0])
                raise InvalidDataError(f"views.topk_index row {row} lists class {c} twice; top-k indices are "
                                       f"distinct")
        if self.quantized:
            scale = arrays["topk_scale"]
            _check_finite("topk_scale", scale)
            if (scale < 0).any():
                raise InvalidDataError(f"views.topk_scale row {_first_row(scale < 0)} is negative")
        if p.label_kind == "logits":
            _check_finite("topk_fill", arrays["topk_fill"])
        else:
            _check_nonnegative("topk_value", arrays["topk_value"])
        with np.errstate(over="ignore", invalid="ignore"):
            vals, _ = self._values(arrays, p)
        _check_finite("topk_value" if not self.quantized else "topk_value * topk_scale", vals)
        if p.label_kind == "probs":
            _check_row_sums("topk_value", vals)

    def decode(self, arrays: dict[str, np.ndarray], p: CodecParams) -> np.ndarray:
        idx = arrays["topk_index"].astype(np.intp)
        m, k = idx.shape
        n = p.num_classes
        if idx.size and int(idx.max()) >= n:
            raise InvalidDataError(f"topk_index holds class {int(idx.max())} >= num_classes {n}")
        logits = p.label_kind == "logits"
        vals, offset = self._values(arrays, p)
        if logits:
            fill = offset
        elif k < n:
            fill = np.clip(1.0 - vals.sum(axis=1), 0.0, None) / (n - k)
        else:
            fill = np.zeros(m, np.float32)
        dense = np.empty((m, n), dtype=np.float32)
        dense[:] = fill[:, None]
        np.put_along_axis(dense, idx, vals, axis=1)
        return dense


class CodecRegistry:
    """Name -> codec; an unknown name raises UnknownCodecError listing the known ones."""

    def __init__(self) -> None:
        self._items: dict[str, Codec] = {}

    def add(self, codec: Codec) -> Codec:
        if codec.name in self._items:
            raise ValueError(f"codec {codec.name!r} is registered twice")
        self._items[codec.name] = codec
        return codec

    def get(self, name: str) -> Codec:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownCodecError(f"unknown soft-label codec {name!r}; known: {', '.join(self)}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


REGISTRY = CodecRegistry()
REGISTRY.add(DenseCodec("dense-f16", "float16"))
REGISTRY.add(DenseCodec("dense-f32", "float32"))
REGISTRY.add(TopKCodec("topk-f16", quantized=False))
REGISTRY.add(TopKCodec("topk-u8", quantized=True))


def get_codec(name: str) -> Codec:
    return REGISTRY.get(name)
