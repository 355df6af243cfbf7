"""Decode bombs and compact targets: small valid files whose dense targets are huge.

A top-k file stores a few bytes per view, but decodes to [n, V, K] float32. The reader refuses a
decode over max_bytes before allocating (DecodeLimitError), runtime.load keeps targets compact and
expands them per batch, and every dense row it gives is bit for bit the row of the dense decode.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import formats
import runtime
from formats.testing import make_data, topk_file

MB = 1 << 20


@contextmanager
def bounded(peak_bytes: int, rss_bytes: int = 256 * MB) -> Iterator[None]:
    """Peak traced allocation (numpy arrays included) below peak_bytes, resident growth below rss_bytes."""
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = psutil.Process().memory_info().rss - rss0
    assert peak < peak_bytes, f"peak allocation {peak / MB:.1f} MiB"
    assert growth < rss_bytes, f"resident memory grew by {growth / MB:.1f} MiB"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """The reported file: 8,192 classes, 1 view, top-1 topk-u8, 2 blocks: ~0.6 MB, dense targets 512 MiB."""
    return topk_file(8192, ipc_max=2)


@pytest.fixture(scope="module")
def big_bomb() -> bytes:
    """65,536 classes (the top-k maximum), one block: ~2.7 MB, dense targets 16 GiB."""
    return topk_file(65536, ipc_max=1)


def test_a_16_gib_decode_is_refused_before_allocating(big_bomb: bytes) -> None:
    with formats.open_mdc(big_bomb) as r:
        assert r.decoded_nbytes(1) > 16 << 30
        with bounded(8 * MB), pytest.raises(formats.DecodeLimitError, match="IPC-1 of <bytes> decodes to 17,18"):
            r.read(1)  # default limit, 1 GiB
        with bounded(8 * MB), pytest.raises(formats.DecodeLimitError, match="over the limit of 1,000 bytes"):
            r.read(1, targets="compact", max_bytes=1000)


def test_runtime_load_of_the_bombs_stays_compact(bomb: bytes, big_bomb: bytes) -> None:
    for data, k in ((bomb, 8192), (big_bomb, 65536)):
        with bounded(32 * MB, 128 * MB):
            ds = runtime.load(data)
        with bounded(6 * 64 * k * 4):  # a few temporaries of the batch's own [64, K] targets
            batch = ds.make_batch(np.arange(64), labels="soft", rng=np.random.default_rng(0))
        assert batch.targets.shape == (64, k) and ds.views.targets.nbytes < 2 * MB
        np.testing.assert_allclose(batch.targets.sum(1), 1.0, rtol=1e-5)
        small = runtime.load(data, max_bytes=64 * MB)  # the whole dense array: 512 MiB or 16 GiB
        for dataset in (small, ds) if k == 65536 else (small,):
            with bounded(8 * MB), pytest.raises(formats.DecodeLimitError, match=r"dense targets \["):
                dataset.soft_labels  # noqa: B018


def test_dense_read_under_a_raised_limit_matches_compact_rows() -> None:
    with formats.open_mdc(topk_file(2048, ipc_max=1, topk=3)) as r:  # dense: 16 MiB
        compact = r.read(1, targets="compact").views.targets
        with pytest.raises(formats.DecodeLimitError):
            r.read(1, max_bytes=r.decoded_nbytes(1) - 1)
        dense = r.read(1, max_bytes=r.decoded_nbytes(1)).views.targets  # exactly at the limit: allowed
    rows = np.random.default_rng(1).integers(0, 2048, 300)
    assert np.array_equal(compact[rows, 0], dense[rows, 0])
    assert compact[rows, 0].tobytes() == dense[rows, 0].tobytes()


def test_decoded_nbytes_is_what_read_returns() -> None:
    data = make_data(num_classes=5, ipc_max=3, views=3, codec="topk-u8", topk=2, label_kind="logits")
    import io

    out = io.BytesIO()
    formats.encode(data).write_to(out)
    with formats.open_mdc(out.getvalue()) as r:
        for mode in ("dense", "compact"):
            p = r.read(3, targets=mode)
            v = p.views
            got = p.images.nbytes + p.labels.nbytes + sum(getattr(v, a).nbytes for a in
                                                          ("crop", "flip", "mix_partner", "mix_box", "mix_lam"))
            assert got + v.targets.nbytes == r.decoded_nbytes(3, targets=mode)


def test_limit_and_mode_arguments_are_checked(bomb: bytes) -> None:
    with formats.open_mdc(bomb) as r:
        for bad in (-1, 1.5, True, "1GB"):
            with pytest.raises(ValueError, match="max_bytes must be a non-negative integer or None"):
                r.read(1, max_bytes=bad)
        with pytest.raises(ValueError, match="targets must be 'dense' or 'compact'"):
            r.read(1, targets="sparse")
        assert r.read(1, targets="compact", max_bytes=None).views.targets.shape == (8192, 1, 8192)


# ------------------------------------------------------------------- compact rows == dense rows, bit for bit

CODECS = [("topk-u8", 3, "probs"), ("topk-u8", 3, "logits"), ("topk-f16", 2, "probs"), ("topk-u8", 7, "probs"),
          ("dense-f16", None, "probs"), ("dense-f32", None, "logits")]


@pytest.fixture(scope="module")
def pairs() -> dict[tuple, tuple]:
    """Per codec: (compact targets, dense targets) of the same 4-block file."""
    import io

    out = {}
    for codec, k, kind in CODECS:
        buf = io.BytesIO()
        formats.encode(make_data(num_classes=7, ipc_max=4, views=3, codec=codec, topk=k, label_kind=kind,
                                 temperature=1.5)).write_to(buf)
        with formats.open_mdc(buf.getvalue()) as r:
            out[codec, k, kind] = r.read(4, targets="compact").views.targets, r.read(4).views.targets
    return out


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert a.tobytes() == b.tobytes()


KEYS = st.one_of(
    st.integers(-28, 27),
    st.builds(slice, st.none() | st.integers(-30, 30), st.none() | st.integers(-30, 30),
              st.none() | st.integers(1, 4) | st.integers(-4, -1)),
    st.tuples(st.lists(st.integers(-28, 27), max_size=9), st.lists(st.integers(-3, 2), max_size=9)),
    st.tuples(st.lists(st.integers(0, 27), min_size=1, max_size=5), st.integers(-3, 2)),
    st.tuples(st.integers(0, 27), st.integers(0, 2), st.integers(-7, 6)),
    st.tuples(st.lists(st.integers(0, 27), min_size=2, max_size=2),
              st.lists(st.integers(0, 2), min_size=2, max_size=2), st.builds(slice, st.integers(0, 7))),
    st.lists(st.booleans(), min_size=28, max_size=28),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CODECS), KEYS)
def test_compact_indexing_equals_dense_indexing(pairs, case, key) -> None:
    compact, dense = pairs[case]
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], list) and isinstance(key[1], list):
        m = min(len(key[0]), len(key[1]))  # numpy broadcasts equal lengths; keep the case valid
        key = (np.array(key[0][:m], dtype=np.int64), np.array(key[1][:m], dtype=np.int64))
    elif isinstance(key, list):
        key = np.array(key)
    elif isinstance(key, tuple):
        key = tuple(np.array(k) if isinstance(k, list) else k for k in key)
    _same(compact[key], dense[key])


def test_whole_compact_array_equals_dense(pairs) -> None:
    for compact, dense in pairs.values():
        _same(np.asarray(compact), dense)
        assert np.asarray(compact, dtype=np.float64).dtype == np.float64
        assert compact.shape == dense.shape and len(compact) == len(dense)


def test_compact_indexing_errors(pairs) -> None:
    compact, _ = pairs["topk-u8", 3, "probs"]
    with pytest.raises(IndexError, match="out of bounds"):
        compact[np.array([28]), np.array([0])]
    with pytest.raises(IndexError):
        compact[28]
    with pytest.raises(TypeError, match="without an Ellipsis"):
        compact[..., 0]
    with pytest.raises(TypeError, match="int or a slice"):
        compact[np.array([0]), np.array([0]), np.array([1])]
    with pytest.raises(ValueError, match="without decoding"):
        np.array(compact, copy=False)


def test_batches_from_compact_and_dense_views_are_identical(pairs) -> None:
    """Dataset.make_batch on a runtime.load (compact) and on a dense Dataset: same x, same targets."""
    import io

    buf = io.BytesIO()
    formats.encode(make_data(num_classes=7, ipc_max=4, views=3, codec="topk-u8", topk=3)).write_to(buf)
    compact_ds = runtime.load(buf.getvalue())
    with formats.open_mdc(buf.getvalue()) as r:
        p = r.read(4)
    dense_ds = runtime.Dataset(images=p.images, labels=p.labels, ipc=4, num_classes=7, class_names=list("abcdefg"),
                               views=p.views, label_kind="probs")
    for seed in range(3):
        a = list(compact_ds.batches(8, labels="soft", rng=seed))
        b = list(dense_ds.batches(8, labels="soft", rng=seed))
        for x, y in zip(a, b, strict=True):
            _same(x.targets, y.targets)
            _same(x.x, y.x)
    _same(compact_ds.soft_labels, dense_ds.soft_labels)
