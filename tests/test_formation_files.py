"""Multi-formation files end to end on the numpy side: the writer, the reader's decoded prefixes, cut files and
range requests, the partner rule, and runtime.load's training images (docs/format.md §4, §4.1, §6)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import formats
import runtime
from formats.formation import decode_images, regroup_views, to_decoded_order
from formats.testing import assert_prefix_equal, expected_prefix, make_data, patch_arrays
from runtime.budget import Budget, FileFacts, choose_ipc
from runtime.views import apply_views

C, IPC, VD = 3, 3, 2  # classes, stored images per class, views per decoded image
SHAPES = {1: (1, 4, 4), 2: (1, 4, 4), 3: (3, 6, 6)}


def _data(factor: int, **kw) -> formats.MDCData:
    return make_data(num_classes=C, ipc_max=IPC, views=VD, image_shape=SHAPES[factor], formation_factor=factor,
                     **kw)


def _bytes(data: formats.MDCData) -> bytes:
    out = io.BytesIO()
    formats.encode(data, created="2000-01-01T00:00:00+00:00").write_to(out)
    return out.getvalue()


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_round_trip_stored_and_decoded(factor: int) -> None:
    data = _data(factor)
    ff = factor * factor
    with formats.open_mdc(_bytes(data)) as r:
        assert r.spec.formation_factor == factor and r.spec.views.count == ff * VD
        for k in (1, IPC):
            want = expected_prefix(data, k)
            assert_prefix_equal(r.read(k), want)
            dec = r.read(k, formation="decoded")
            assert dec.stored_images is not None and np.array_equal(dec.stored_images, want.images)
            assert dec.images.shape == (k * ff * C, *SHAPES[factor])
            np.testing.assert_array_equal(dec.images, to_decoded_order(decode_images(want.images, factor), C))
            np.testing.assert_array_equal(dec.labels, np.arange(k * ff * C) % C)
            views = regroup_views(want.views, C, factor, to_decoded=True)
            for name in ("crop", "flip", "mix_partner", "mix_box", "mix_lam", "targets"):
                np.testing.assert_array_equal(getattr(dec.views, name), getattr(views, name), err_msg=name)
            assert dec.views.num_views == VD


def test_factor_one_files_are_byte_identical_to_the_unformed_layout() -> None:
    """Setting formation_factor=1 explicitly changes nothing in the file (the old layout, bit for bit)."""
    plain = make_data(num_classes=C, ipc_max=IPC, views=VD, image_shape=(1, 4, 4))
    assert _bytes(plain) == _bytes(_data(1))
    with formats.open_mdc(_bytes(plain)) as r:
        dec = r.read(IPC, formation="decoded")
        assert_prefix_equal(dec, r.read(IPC))
        assert dec.stored_images is dec.images


@pytest.mark.parametrize("factor", [2, 3])
def test_a_file_cut_at_a_block_boundary_loads_the_decoded_prefix(factor: int) -> None:
    full = _bytes(_data(factor))
    with formats.open_mdc(full) as r:
        cut = full[:r.prefix_nbytes(2)]  # what a range request for IPC-2 fetches
    whole = runtime.load(full, budget=IPC)
    part = runtime.load(cut, budget=None)
    ff = factor * factor
    assert part.ipc == 2 and len(part) == 2 * ff * C and part.formation_factor == factor
    np.testing.assert_array_equal(part.images, whole.images[:2 * ff * C])
    np.testing.assert_array_equal(part.stored_images, whole.stored_images[:2 * C])
    np.testing.assert_array_equal(part.views.mix_partner, whole.views.mix_partner[:2 * ff * C])
    assert part.views.mix_partner.max() < len(part)  # partners lie among the prefix's decoded images
    with pytest.raises(formats.TruncatedError, match="holds 2 of 3 IPC blocks"):
        runtime.load(cut, budget=3)


def test_runtime_dataset_serves_decoded_images_and_their_views() -> None:
    factor, ff = 2, 4
    ds = runtime.load(_bytes(_data(factor)), budget=2)
    assert (len(ds), ds.ipc, ds.num_views, ds.stored_images.shape[0]) == (2 * ff * C, 2, VD, 2 * C)
    np.testing.assert_array_equal(ds.labels, np.arange(len(ds)) % C)
    assert "formation_factor=2" in repr(ds)
    d, v = 17, 1  # decoded sample 17 // C = 5 = stored image 1, patch 1, of class 17 % C = 2
    sample = ds[d, v]
    views = ds.views
    want = apply_views(ds.images, [d], views.crop[[d], v], views.flip[[d], v], views.mix_partner[[d], v],
                       views.mix_box[[d], v])[0]
    np.testing.assert_array_equal(sample.image, want)
    assert sample.label == 2 and sample.view == v
    np.testing.assert_allclose(sample.target.sum(), 1.0, rtol=1e-5)
    batch = ds.batch(np.arange(8), 10, labels="soft", rng=np.random.default_rng(0))
    assert batch.x.shape == (10, 1, 4, 4) and batch.count == 8
    hard = ds.batch(np.arange(len(ds)), labels="hard")
    np.testing.assert_array_equal(hard.x, ds.images)


def test_partners_must_stay_in_the_decoded_prefix() -> None:
    data = _data(2)
    data.views.mix_partner[0, 0] = C * 4  # stored record 0 (block 0) mixing decoded record 12 (block 1)
    with pytest.raises(formats.InvalidDataError, match=r"views.mix_partner\[0, 0\] = 12: a partner must be -1 "
                                                       r"or a decoded record in block <= 0"):
        formats.encode(data)
    data.views.mix_partner[0, 0] = C * 4 - 1  # decoded record 11: the last one of block 0
    formats.encode(data)


def test_a_crc_valid_file_with_a_partner_past_the_prefix_is_refused() -> None:
    good = _bytes(_data(2))

    def late_partner(a: np.ndarray) -> None:
        a[0, 1, 3] = 2 * C * 4  # block 0's record 1, view 3 -> decoded record 24, block 2

    bad = patch_arrays(good, {"mix_partner": late_partner})
    with formats.open_mdc(bad) as r, pytest.raises(formats.InvalidDataError, match=r"views.mix_partner\[1, 3\]"):
        r.read(1)


def test_views_must_split_into_one_group_per_patch() -> None:
    data = _data(2)  # 8 views per stored image
    for name in ("crop", "flip", "mix_partner", "mix_box", "mix_lam", "targets"):
        setattr(data.views, name, getattr(data.views, name)[:, :7])
    with pytest.raises(formats.InvalidDataError, match="7 views per stored image; formation factor 2 needs a "
                                                       "multiple of 4"):
        formats.encode(data)


def test_decoded_bytes_are_counted_before_decoding() -> None:
    data = _data(2)
    with formats.open_mdc(_bytes(data)) as r:
        stored = r.decoded_nbytes(IPC, targets="compact")
        decoded = r.decoded_nbytes(IPC, targets="compact", formation="decoded")
        assert decoded - stored == IPC * C * 4 * (16 * 4 + 8)  # f*f float32 images and int64 labels each
        r.read(IPC, targets="compact", max_bytes=stored)
        with pytest.raises(formats.DecodeLimitError, match="IPC-3"):
            r.read(IPC, targets="compact", max_bytes=decoded - 1, formation="decoded")
        with pytest.raises(ValueError, match="formation must be 'stored' or 'decoded'"):
            r.read(1, formation="patches")


def test_budgets_count_decoded_images() -> None:
    """Training iterates k*f*f*C records; memory holds them, their views, and the stored images."""
    facts = FileFacts(ipc_max=4, blocks_present=4, num_classes=10, image_shape=(1, 28, 28), num_views=8,
                      block_bytes=1000, formation_factor=2)
    assert facts.records(3) == 120
    plain = FileFacts(ipc_max=4, blocks_present=4, num_classes=10, image_shape=(1, 28, 28), num_views=2,
                      block_bytes=1000)
    assert facts.record_bytes == plain.record_bytes  # 8 views per stored image = 2 per decoded image
    assert facts.prefix_bytes(3) == 120 * plain.record_bytes + 30 * 28 * 28 * 4 + 2 * 3 * 1000
    # 1 epoch, batch 40, 1 s a step: IPC-k takes k*40/40 = k steps, so 2.5 s allows IPC-2
    k, report = choose_ipc(Budget(seconds=2.5, step_seconds=1.0), facts, epochs=1, batch_size=40)
    assert k == 2 and [row["records"] for row in report["per_ipc"]] == [40, 80, 120, 160]
