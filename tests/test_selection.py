"""Nested selection of real images (condenser/methods/selection.py): herding and k-means orders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from condenser.data import load_dataset
from condenser.methods.base import MethodConfigError
from condenser.methods.selection import herd_pool, kmeans_centres, select_class, select_indices


def test_herding_first_pick_is_nearest_the_mean_and_prefix_means_track_it():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 8, generator=g)
    order = herd_pool(feats, 20)
    mean = feats.mean(0)
    assert order[0] == ((feats - mean) ** 2).sum(1).argmin()
    assert len(set(order.tolist())) == 20
    herd_err = ((feats[order].cumsum(0) / torch.arange(1, 21)[:, None] - mean) ** 2).sum(1)
    rand_err = ((feats[:20].cumsum(0) / torch.arange(1, 21)[:, None] - mean) ** 2).sum(1)
    assert (herd_err[4:] < rand_err[4:]).all()  # the prefix mean approaches the class mean faster than file order


def test_kmeans_picks_one_point_per_cluster():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feats = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centres])
    picks = kmeans_centres(feats, 3, torch.Generator().manual_seed(0))
    assert sorted((picks // 30).tolist()) == [0, 1, 2]
    assert kmeans_centres(feats[:2], 5, torch.Generator()).tolist() == [0, 1]  # k >= points: all of them


def test_select_class_is_nested_distinct_and_rejects_unknown():
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    for how in ("herding", "kmeans"):
        pos = select_class(feats, 7, how, torch.Generator().manual_seed(0))
        assert pos.shape == (7,) and len(set(pos.tolist())) == 7
    with pytest.raises(MethodConfigError, match="unknown selection 'best'"):
        select_class(feats, 3, "best", torch.Generator())


def test_select_indices_rows_are_the_class_and_deterministic():
    train = load_dataset("synthetic:4:1x8x8", "train")
    embedder = lambda x: x.flatten(1)  # noqa: E731 - pixels as features
    idx = select_indices(train, 3, "herding", embedder, pool=20, generator=torch.Generator().manual_seed(0))
    again = select_indices(train, 3, "herding", embedder, pool=20, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (4, 3) and torch.equal(idx, again)
    for c in range(4):
        assert (train.labels[idx[c]] == c).all()
    with pytest.raises(MethodConfigError, match="selecting 100000"):
        select_indices(train, 100000, "kmeans", embedder)


def test_init_modes_select_on_the_given_features_and_need_them():
    from condenser.methods.synthetic import init_indices, init_synthetic

    train = load_dataset("synthetic:4:1x8x8", "train")
    embedder = lambda x: x.flatten(1)  # noqa: E731
    gens = [torch.Generator().manual_seed(c) for c in range(4)]
    idx = init_indices(train, 2, mode="herding", generator=gens, embedder=embedder)
    expected = torch.cat([select_indices(train, 2, "herding", embedder, generator=torch.Generator().manual_seed(c),
                                         classes=[c]) for c in range(4)])
    assert torch.equal(idx, expected)
    offset = init_indices(train, 1, mode="herding", offset=1, generator=[torch.Generator().manual_seed(c)
                                                                         for c in range(4)], embedder=embedder)
    assert torch.equal(offset[:, 0], idx[:, 1])  # offset skips the first images of the same order
    syn = init_synthetic(train, 2, mode="kmeans", embedder=embedder)
    assert syn.data.shape == (2, 4, 1, 8, 8) and syn.init_indices.shape == (4, 2)
    with pytest.raises(MethodConfigError, match="init 'herding' selects real images"):
        init_indices(train, 2, mode="herding")


def test_condense_starts_from_the_selection_and_keys_its_run_by_the_network(tmp_path):
    from condenser.condense import CondenseConfig, condense
    from condenser.data import synthetic
    from condenser.errors import CheckpointError
    from condenser.methods.selection import FeatureSource
    from condenser.models import build_model
    from condenser.multisize import MultisizeConfig

    train = synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=16)
    cfg = CondenseConfig(method="dm", ipc=2, outer_loops=1, inner_loops=1, multisize=MultisizeConfig(period=1),
                         batch_real=4, width=8, depth=2, device="cpu", init="herding")
    torch.manual_seed(0)
    net = build_model("convnet", (1, 8, 8), 3, width=8, depth=2)
    res = condense(cfg, train, tmp_path, progress=False, features=FeatureSource(net, "net-a"))
    gens = [torch.Generator().manual_seed(s) for s in _class_seeds(cfg.seed, 3)]
    expected = torch.cat([select_indices(train, 2, "herding", FeatureSource(net, "net-a"), generator=g,
                                         classes=[c]) for c, g in enumerate(gens)])
    assert torch.equal(res.init_indices, expected)
    with pytest.raises(CheckpointError, match="belongs to a different condensation run"):
        condense(cfg, train, tmp_path, progress=False, features=FeatureSource(net, "net-b"))
    with pytest.raises(MethodConfigError, match="a build passes its teacher"):
        condense(cfg, train, progress=False)


def _class_seeds(seed: int, num_classes: int) -> list[int]:
    from condenser.condense import class_seed

    return [class_seed(seed, c) for c in range(num_classes)]


def test_baseline_b_runs_start_from_consecutive_images_of_one_selection():
    from condenser.baselines import build_sized_sets
    from condenser.condense import CondenseConfig, class_seed
    from condenser.data import synthetic
    from condenser.methods.selection import FeatureSource
    from condenser.models import build_model
    from condenser.multisize import MultisizeConfig

    train = synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=16)
    cfg = CondenseConfig(method="dm", ipc=3, outer_loops=1, inner_loops=1, multisize=MultisizeConfig(period=1),
                         batch_real=4, width=8, depth=2, device="cpu", init="herding")
    torch.manual_seed(0)
    features = FeatureSource(build_model("convnet", (1, 8, 8), 3, width=8, depth=2), "net")
    sets = build_sized_sets("B", cfg, train, progress=False, features=features)
    full = torch.cat([select_indices(train, 3, "herding", features, classes=[c],
                                     generator=torch.Generator().manual_seed(class_seed(0, c))) for c in range(3)])
    for k, run in enumerate(sets.runs):  # run k starts from image k of every class's nested order
        assert torch.equal(run.init_indices[:, 0], full[:, k])
    with pytest.raises(MethodConfigError, match="init 'kmeans' has no image offset"):
        build_sized_sets("B", dataclasses.replace(cfg, init="kmeans"), train, progress=False, features=features)
