"""runtime.Dataset as data: map-style samples with replayed views, batches, DataLoader, torch/HF exports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import formats
import runtime
from formats.testing import make_data
from runtime.dataset import Sample, decode_targets, item_view
from runtime.views import apply_views

ROOT = Path(__file__).resolve().parents[1]
C, IPC, V, SHAPE = 3, 4, 3, (1, 6, 6)


@pytest.fixture(scope="module")
def mdc(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "toy.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=SHAPE, views=V, codec="topk-u8",
                                      topk=2, label_kind="logits", temperature=2.0, mix=True))
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "plain.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=SHAPE, views=0))
    return path


@pytest.fixture()
def ds(mdc) -> runtime.Dataset:
    return runtime.load(mdc)


def _dense(mdc: Path, ds: runtime.Dataset) -> np.ndarray:
    """Reference targets: the dense decode of the whole prefix, turned into probabilities."""
    with formats.open_mdc(mdc) as r:
        prefix = r.read(ds.ipc)
    return decode_targets(prefix.views.targets, ds.label_kind, ds.temperature)


def _expected_view(ds: runtime.Dataset, r: int, v: int) -> np.ndarray:
    w = ds.views
    return apply_views(ds.images, [r], w.crop[r, v][None], w.flip[r, v][None], w.mix_partner[r, v][None],
                       w.mix_box[r, v][None])[0]


# ------------------------------------------------------------------------------------- map-style


def test_item_is_the_replayed_view_and_its_target(mdc, ds):
    dense = _dense(mdc, ds)
    assert len(ds) == C * IPC and ds.num_views == V
    for r in range(len(ds)):
        for v in range(V):
            s = ds[r, v]
            assert isinstance(s, Sample) and s.view == v and s.label == int(ds.labels[r])
            assert s.image.shape == SHAPE and s.image.dtype == np.float32
            np.testing.assert_array_equal(s.image, _expected_view(ds, r, v))
            np.testing.assert_array_equal(s.target, dense[r, v])


def test_item_decodes_only_its_own_row(ds):
    targets = ds.views.targets
    sizes = []
    rows = targets.rows
    targets.rows = lambda flat: (sizes.append(np.asarray(flat).size), rows(flat))[1]
    ds[5]
    ds[7, 2]
    assert sizes == [1, 1]


def test_item_view_follows_seed_and_epoch(ds):
    first = [ds[i].view for i in range(len(ds))]
    assert first == [ds[i].view for i in range(len(ds))]  # reproducible
    assert first == [item_view(0, 0, i, V) for i in range(len(ds))]
    seen = set()
    for epoch in range(1, 30):
        ds.set_epoch(epoch)
        seen.update((i, ds[i].view) for i in range(len(ds)))
    assert seen == {(i, v) for i in range(len(ds)) for v in range(V)}  # every view gets its turn
    ds.set_epoch(0)
    ds.view_seed = 1
    assert [ds[i].view for i in range(len(ds))] != first
    with pytest.raises(runtime.ConfigError, match="epoch"):
        ds.set_epoch(-1)


def test_item_index_errors(ds):
    assert ds[-1].label == ds[len(ds) - 1].label
    with pytest.raises(IndexError, match="outside the 12 records"):
        ds[len(ds)]
    with pytest.raises(IndexError, match="view 3 is outside the 3 views"):
        ds[0, V]
    with pytest.raises(TypeError, match="not str"):
        ds["0"]
    with pytest.raises(TypeError, match="not float"):
        ds[0, 1.0]


def test_hard_items_are_stored_images_with_one_hot_targets(plain, ds):
    for d in (runtime.load(plain), ds):
        d.item_labels = "hard"
        s = d[4]
        np.testing.assert_array_equal(s.image, d.images[4])
        assert s.view == -1 and s.label == int(d.labels[4])
        np.testing.assert_array_equal(s.target, np.eye(C, dtype=np.float32)[d.labels[4]])
    with pytest.raises(runtime.ConfigError, match="hard labels"):
        ds[0, 1]
    soft = runtime.load(plain)
    soft.item_labels = "soft"
    with pytest.raises(runtime.ConfigError, match="no soft-label views"):
        soft[0]


def test_iteration_yields_the_items(ds):
    items = list(ds)
    assert len(items) == len(ds)
    np.testing.assert_array_equal(items[3].image, ds[3].image)


# --------------------------------------------------------------------------------------- batches


def test_batch_with_explicit_views_stacks_the_items(ds):
    records, views = np.array([4, 0, 9]), np.array([2, 1, 0])
    b = ds.batch(records, batch_size=5, views=views)
    assert b.count == 3 and b.x.shape == (5, *SHAPE)
    for j, (r, v) in enumerate(zip(records, views, strict=True)):
        s = ds[int(r), int(v)]
        np.testing.assert_array_equal(b.x[j], s.image)
        np.testing.assert_array_equal(b.targets[j], s.target)
    np.testing.assert_array_equal(b.weights, [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(b.view_index, [2, 1, 0, -1, -1])


def test_batch_errors(ds):
    with pytest.raises(runtime.ConfigError, match="3 integers"):
        ds.batch([0, 1, 2], views=[0, 1])
    with pytest.raises(runtime.ConfigError, match="view index is outside"):
        ds.batch([0], views=[V])
    with pytest.raises(runtime.ConfigError, match="record index is outside"):
        ds.batch([len(ds)])
    with pytest.raises(runtime.ConfigError, match="hard labels"):
        ds.batch([0], labels="hard", views=[0])


def test_batches_draw_permutation_then_views_from_one_stream(ds):
    got = list(ds.batches(5, labels="soft", rng=7))
    rng = np.random.default_rng(7)
    order = rng.permutation(len(ds))
    for i, b in enumerate(got):
        recs = order[5 * i: 5 * i + 5]
        views = rng.integers(0, V, size=len(recs))
        want = ds.batch(recs, 5, views=views)
        np.testing.assert_array_equal(b.x, want.x)
        np.testing.assert_array_equal(b.view_index, want.view_index)
    assert [b.count for b in got] == [5, 5, 2]


# ------------------------------------------------------------------------------------ torch side


def test_dataloader_batches_the_items(ds):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    ds.set_epoch(3)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert isinstance(batch, Sample) and batch.image.shape == (4, *SHAPE)
    assert batch.label.dtype == torch.int64 and batch.target.shape == (4, C)
    for j in range(4):
        s = ds[j]
        np.testing.assert_array_equal(batch.image[j].numpy(), s.image)
        np.testing.assert_array_equal(batch.target[j].numpy(), s.target)
        assert int(batch.view[j]) == s.view


def test_dataloader_workers_see_set_epoch(ds):
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    ds.set_epoch(5)
    loader = DataLoader(ds, batch_size=len(ds), shuffle=False, num_workers=1)
    views = next(iter(loader)).view.tolist()
    assert views == [item_view(0, 5, i, V) for i in range(len(ds))]


def test_to_torch_soft_keeps_the_views(ds, plain):
    torch = pytest.importorskip("torch")
    td = ds.to_torch(labels="soft")
    assert isinstance(td, torch.utils.data.Dataset) and len(td) == len(ds)
    td.set_epoch(2)
    ds.set_epoch(2)
    s, t = ds[6], td[6]
    np.testing.assert_array_equal(t.image.numpy(), s.image)
    np.testing.assert_array_equal(t.target.numpy(), s.target)
    assert int(t.view) == s.view and int(t.label) == s.label
    hard = ds.to_torch()  # the default stays the stored images and hard labels
    x, y = hard[6]
    np.testing.assert_array_equal(x.numpy(), ds.images[6])
    assert int(y) == int(ds.labels[6])
    with pytest.raises(runtime.ConfigError, match="no soft-label views"):
        runtime.load(plain).to_torch(labels="soft")


# --------------------------------------------------------------------------------------- exports


def test_columns_hold_every_view(mdc, ds):
    cols = ds.to_columns()
    assert sorted(cols) == ["image", "label", "view_crop", "view_flip", "view_mix_box", "view_mix_partner",
                            "view_target"]
    assert cols["view_crop"].shape == (len(ds), V, 4) and cols["view_target"].shape == (len(ds), V, C)
    np.testing.assert_array_equal(cols["view_target"], _dense(mdc, ds))
    r, v = 7, 1
    again = apply_views(cols["image"], [r], cols["view_crop"][r, v][None], cols["view_flip"][r, v][None],
                        cols["view_mix_partner"][r, v][None], cols["view_mix_box"][r, v][None])[0]
    np.testing.assert_array_equal(again, ds[r, v].image)


def test_columns_without_views(plain):
    assert sorted(runtime.load(plain).to_columns()) == ["image", "label"]


def test_to_hf(ds):
    try:
        import datasets
    except ImportError:
        with pytest.raises(runtime.BackendError, match="pip install datasets"):
            ds.to_hf()
        return
    hf = ds.to_hf()
    assert len(hf) == len(ds) and hf.features["label"].names == ds.class_names
    row = hf.with_format("numpy")[7]
    np.testing.assert_array_equal(row["image"], ds.images[7])
    np.testing.assert_allclose(row["view_target"], ds.to_columns()["view_target"][7])
    assert isinstance(hf, datasets.Dataset)


def test_items_and_columns_leave_torch_out(mdc):
    code = textwrap.dedent(f"""
        import sys, runtime
        ds = runtime.load({str(mdc)!r})
        ds[0]; ds[1, 2]; ds.to_columns(); list(ds.batches(4, rng=0))
        assert "torch" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
