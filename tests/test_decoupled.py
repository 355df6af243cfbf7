"""Decoupled methods (sre2l, gvbsm, teddy) on the statistics-matching engine: smoke tests, seconds each."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import formats
from condenser.cli import app
from condenser.config import ConfigError
from condenser.errors import CheckpointError
from condenser.evaluate.losses import STUDENT_LOSSES, mse_gt
from condenser.models import build_model
from condenser.profiles import EvalBudget, get_profile
from condenser.relabel import RelabelConfig, relabel, teacher_probabilities
from condenser.resume import Interrupted
from condenser.statmatch import (
    SAMPLERS,
    MatchConfig,
    RecoverAugConfig,
    StatMatchObjective,
    cached_conv_stats,
    herding_order,
    recover,
    settings_for,
)
from condenser.statmatch.cache import compute_conv_stats, load_conv_stats
from condenser.statmatch.order import apply_order
from condenser.statmatch.recover import initial_images
from condenser.statmatch.stats import channel_stats, patch_stats
from condenser.statmatch.teachers import PoolContext, build_pool
from formats.testing import make_data

TINY = {"norm": "batch", "width": 8}
# Tiny teachers on the smoke profile (128 real images, one epoch) and tiny G-VBSM backbones.
SMALL = {"teacher_kwargs": TINY, "teacher_max_train": 128}
METHOD_SETTINGS = {
    "sre2l": SMALL,
    "teddy": {**SMALL, "teacher_epochs": 3, "k": 2},
    # an instance-norm convnet (conv statistics only, like G-VBSM's CW128) next to a BN network
    "gvbsm": {**SMALL, "backbones": ["convnet", "resnet-ap10"],
              "backbone_kwargs": {"convnet": {"width": 8}, "resnet-ap10": {"width": 4, "norm": "batch"}},
              "stat_images": 128, "recover": {"match": {"dd_weight": 1.0, "dd_normalize": True}}},
}


@pytest.fixture(scope="module")
def small_train(fmnist_train):
    """A tiny real subset: the first 20 images of every class."""
    idx = torch.cat([fmnist_train.first_of_class(c, 20) for c in range(10)])
    return fmnist_train.subset(idx)


@pytest.fixture(scope="module")
def pools(small_train, tmp_path_factory):
    out = {}
    with pytest.MonkeyPatch.context() as mp:  # restored on exit, also when a pool fails to build
        mp.setenv("MULTISIZE_CACHE", str(tmp_path_factory.mktemp("pools-cache")))
        for method, extra in METHOD_SETTINGS.items():
            s = settings_for(method, **extra)
            ctx = PoolContext("fashion-mnist", "smoke", small_train, device="cpu", log=lambda _: None)
            pool = build_pool(ctx, s)
            stats = None
            if s.recover.match.conv_weight > 0:
                stats = [cached_conv_stats(m.model, small_train, m.arch, s.recover.match.patch, s.stat_images)[0]
                         for m in pool.members]
            out[method] = (s, pool, stats)
    return out


def test_channel_stats_are_batchnorms_batch_statistics_per_group_and_prefix():
    torch.manual_seed(0)
    x = torch.randn(3 * 5, 4, 6, 6)
    bn = nn.BatchNorm2d(4, momentum=1.0).train()
    mean, var = channel_stats(x, groups=3)
    for g in range(3):
        bn.reset_running_stats()
        bn(x[g * 5:(g + 1) * 5])
        n = 5 * 36
        torch.testing.assert_close(mean[g], bn.running_mean)
        torch.testing.assert_close(var[g], bn.running_var * (n - 1) / n)  # BN keeps the unbiased variance
    w = torch.tensor([1.0, 1, 0, 0, 0]).repeat(3)  # prefix mask of size 2 per group
    pm, pv = channel_stats(x, groups=3, weights=w)
    sub = torch.cat([x[g * 5:g * 5 + 2] for g in range(3)])
    em, ev = channel_stats(sub, groups=3)
    torch.testing.assert_close(pm, em)
    torch.testing.assert_close(pv, ev)
    # patch statistics: one value per 4x4 tile location (6x6 is resized up to 8x8 first)
    m, v = patch_stats(x, 4, groups=3)
    assert m.shape == v.shape == (3, 4) and (v >= 0).all()


def test_conv_statistics_cache_round_trips(small_train, monkeypatch, tmp_path):
    torch.manual_seed(0)
    model = build_model("convnet", (1, 28, 28), 10, width=8, norm="batch").eval()
    stats, path = cached_conv_stats(model, small_train, "convnet", patch=4, max_images=64, root=tmp_path)
    assert path.exists() and set(stats) == {f"body.{i}.{k}" for i in (0, 4, 8)
                                            for k in ("mean", "var", "patch_mean", "patch_var")}

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr("condenser.statmatch.cache.compute_conv_stats", boom)
    again, path2 = cached_conv_stats(model, small_train, "convnet", patch=4, max_images=64, root=tmp_path)
    assert path2 == path
    for k in stats:
        torch.testing.assert_close(again[k], stats[k], rtol=0, atol=0)
    # a retrained teacher (different weights) gets its own entry; a foreign key is refused
    other = build_model("convnet", (1, 28, 28), 10, width=8, norm="batch").eval()
    monkeypatch.setattr("condenser.statmatch.cache.compute_conv_stats", compute_conv_stats)
    _, path3 = cached_conv_stats(other, small_train, "convnet", patch=4, max_images=64, root=tmp_path)
    assert path3 != path
    from condenser.statmatch.cache import ConvStatsKey

    with pytest.raises(CheckpointError):
        load_conv_stats(path, ConvStatsKey("fashion-mnist", "convnet", "0" * 16, 4, 64))


@pytest.mark.parametrize("method", ["sre2l", "gvbsm", "teddy"])
def test_each_method_lowers_its_matching_loss(method, pools, small_train):
    s, pool, stats = pools[method]
    cfg = dataclasses.replace(s.recover_config(seed=0), iterations=30)
    # Measure on the plain images with every teacher, no EMA, no drop: a fixed yardstick.
    probe = StatMatchObjective(pool, dataclasses.replace(cfg.match, ema=0.0, conv_drop=0.0), stats)
    labels = torch.arange(10).repeat(2)
    g = torch.Generator().manual_seed(0)
    everyone = list(range(len(pool)))

    def measure(x: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            total, parts = probe(x, labels, 0, g, groups=2, chosen=everyone)
        return float(total), float(parts["bn"] + parts["conv"])

    before = measure(initial_images(small_train, [0, 1], "noise", 0, torch.device("cpu")))
    objective = StatMatchObjective(pool, cfg.match, stats)
    result = recover(objective, small_train, ipc=2, cfg=cfg, device=torch.device("cpu"))
    objective.close()
    after = measure(result.images)
    probe.close()
    assert result.images.shape == (20, 1, 28, 28)
    assert after[0] < before[0] and after[1] < before[1], (method, before, after)
    # pixels stay inside the valid range
    lo, hi = (0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530
    assert result.images.min() >= lo - 1e-3 and result.images.max() <= hi + 1e-3


def test_pool_sampling_and_ensemble_labels_have_the_right_shapes(pools, small_train):
    g = torch.Generator().manual_seed(0)
    picks = [SAMPLERS.get("subset")(8, 3, t, g) for t in range(20)]
    assert all(len(p) == 3 and len(set(p)) == 3 and p == sorted(p) and max(p) < 8 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # a different subset per step
    assert [SAMPLERS.get("round-robin")(3, 1, t, g) for t in range(4)] == [[0], [1], [2], [0]]
    assert all(0 <= SAMPLERS.get("one")(5, 1, t, g)[0] < 5 for t in range(10))

    _, teddy, _ = pools["teddy"]
    assert len(teddy) == 3 and [m.meta["epoch"] for m in teddy.members] == [1, 2, 3]  # one run, 3 checkpoints
    assert len(teddy.sample(0, g)) == 2
    _, gv, _ = pools["gvbsm"]
    assert [m.arch for m in gv.members] == ["convnet", "resnet-ap10"] and len(gv.sample(0, g)) == 1

    images = small_train.normalized(torch.arange(30))
    views = relabel(images, teddy.models, 10, RelabelConfig(views=3, seed=0))
    assert views.targets.shape == (30, 3, 10) and np.allclose(views.targets.sum(-1), 1, atol=1e-5)
    expected = teacher_probabilities(teddy.models, images, 1.0).numpy()  # view 0 = the plain image
    np.testing.assert_allclose(views.targets[:, 0], expected, atol=1e-5)


def test_post_pool_prunes_filters_of_one_teacher(small_train, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path))
    s = settings_for("teddy", **SMALL, pool="post", prune_amounts=[0.25, 0.5], recalibrate_images=64)
    pool = build_pool(PoolContext("fashion-mnist", "smoke", small_train, device="cpu", log=lambda _: None), s)
    assert len(pool) == 2 and pool.sampling == "subset"
    for member, amount in zip(pool.members, (0.25, 0.5), strict=True):
        w = member.model.body[4].weight  # second conv: 8 filters
        zero = (w.flatten(1).abs().sum(1) == 0).float().mean().item()
        assert zero == pytest.approx(amount, abs=0.13) and member.meta["source"] == "pruned"
        assert "test_accuracy" in member.meta


def test_herding_puts_the_most_typical_image_first():
    feats = torch.tensor([[[5.0, 5.0], [1.1, 0.9], [0.0, 3.0]]])  # one class, three images
    order = herding_order(feats, torch.tensor([[1.0, 1.0]]))
    assert order.tolist() == [[1, 2, 0]]  # closest first, then the one that pulls the mean back
    images = torch.arange(6.0).view(6, 1, 1, 1)  # IPC-major: 3 images x 2 classes
    out = apply_order(images, torch.tensor([[2, 0, 1], [0, 1, 2]]))
    assert out.flatten().tolist() == [4.0, 1.0, 0.0, 3.0, 2.0, 5.0]


def test_recover_resumes_to_the_same_images(pools, small_train, tmp_path):
    s, pool, stats = pools["sre2l"]
    cfg = dataclasses.replace(s.recover_config(seed=3), iterations=5, batch_images=10)  # one IPC index per chunk
    straight = recover(StatMatchObjective(pool, cfg.match, stats), small_train, 2, cfg, torch.device("cpu"))
    with pytest.raises(Interrupted, match="1 of 2 IPC indices"):
        recover(StatMatchObjective(pool, cfg.match, stats), small_train, 2, cfg, torch.device("cpu"),
                run_dir=tmp_path, stop_after=1)
    resumed = recover(StatMatchObjective(pool, cfg.match, stats), small_train, 2, cfg, torch.device("cpu"),
                      run_dir=tmp_path)
    torch.testing.assert_close(resumed.images, straight.images, rtol=0, atol=0)


def _one_view(targets: np.ndarray) -> formats.Views:
    """Views of one unmixed full-image view per record, with the given stored targets [N, 1, K]."""
    n = targets.shape[0]
    return formats.Views(crop=np.zeros((n, 1, 4), np.float32), flip=np.zeros((n, 1), bool),
                         mix_partner=-np.ones((n, 1), np.int32), mix_box=np.zeros((n, 1, 4), np.float32),
                         mix_lam=np.ones((n, 1), np.float32), targets=targets.astype(np.float32))


def test_mse_gt_student_loss():
    logits = torch.tensor([[2.0, 0.0, -2.0]])
    centred_teacher = logits - logits.mean()
    target = torch.cat([centred_teacher, torch.tensor([[1.0, 0, 0]])], 1)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    assert mse_gt(logits + 7.0, target, 0.1).item() == pytest.approx(0.1 * ce.item(), rel=1e-5)  # shift-invariant
    t = STUDENT_LOSSES.get("mse_gt").targets(_one_view(np.full((2, 1, 3), 1 / 3)), "probs", 1.0, torch.tensor([0, 2]),
                                             EvalBudget())
    assert t.shape == (2, 1, 6) and torch.allclose(t[:, 0, :3], torch.zeros(2, 3), atol=1e-6)
    assert t[1, 0, 3:].tolist() == [0.0, 0.0, 1.0]


def _gradient(loss: str, logits: torch.Tensor, targets: torch.Tensor, budget: EvalBudget) -> torch.Tensor:
    z = logits.clone().requires_grad_(True)
    STUDENT_LOSSES.get(loss).fn(z, targets, budget).backward()
    return z.grad


def test_kl_at_temperature_one_has_the_gradient_of_soft_ce():
    """KL(q || softmax(s)) = CE(q, s) - H(q): the same gradient, a loss lower by the teacher's entropy."""
    gen = torch.Generator().manual_seed(0)
    logits, q = torch.randn(8, 5, generator=gen), torch.softmax(2 * torch.randn(8, 5, generator=gen), -1)
    budget = EvalBudget(loss="kl", loss_temperature=1.0)
    torch.testing.assert_close(_gradient("kl", logits, q, budget), _gradient("soft_ce", logits, q, budget),
                               rtol=0, atol=1e-6)
    entropy = -(q * q.log()).sum(-1).mean()
    kl = STUDENT_LOSSES.get("kl").fn(logits, q, budget)
    assert kl.item() == pytest.approx(STUDENT_LOSSES.get("soft_ce").fn(logits, q, budget).item() - entropy.item(),
                                      abs=1e-5)


def test_kl_retempers_the_teacher_to_tau_and_scales_the_kl_by_tau_squared():
    p = np.array([0.7, 0.2, 0.1])
    budget = EvalBudget(loss="kl", loss_temperature=2.0)
    kl = STUDENT_LOSSES.get("kl")
    q = kl.targets(_one_view(p[None, None]), "probs", 1.0, None, budget)[0, 0].double()
    by_hand = np.sqrt(p) / np.sqrt(p).sum()  # softmax(log p / 2)
    np.testing.assert_allclose(q.numpy(), by_hand, rtol=1e-6)
    assert -(q * q.log()).sum().item() > -(p * np.log(p)).sum()  # flatter than the stored target
    s = np.array([-1.0, 0.0, 2.0])  # a student that disagrees: a KL well above float32 rounding
    log_r = s / 2 - np.log(np.exp(s / 2).sum())
    expected = 4.0 * (by_hand * (np.log(by_hand) - log_r)).sum()
    loss = kl.fn(torch.tensor(s[None], dtype=torch.float32), q[None].float(), budget)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the file's own temperature is undone: probabilities stored at T = tau come back as they are
    same = kl.targets(_one_view(p[None, None]), "probs", 2.0, None, budget)[0, 0]
    np.testing.assert_allclose(same.numpy(), p, rtol=1e-5)
    # stored logits z: softmax(z / tau), whatever the file's temperature
    z = np.array([2.0, 0.0, -2.0])
    from_logits = kl.targets(_one_view(z[None, None]), "logits", 5.0, None, budget)[0, 0]
    np.testing.assert_allclose(from_logits.numpy(), np.exp(z / 2) / np.exp(z / 2).sum(), rtol=1e-6)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_a_kl_temperature_must_be_positive(tau):
    with pytest.raises(ConfigError, match="loss_temperature must be > 0"):
        EvalBudget(loss="kl", loss_temperature=tau)


def test_eval_with_the_kl_loss_trains_and_records_its_temperature(tmp_path):
    path = tmp_path / "tiny.mdc"
    formats.write_mdc(path, make_data(num_classes=3, ipc_max=2, image_shape=(1, 8, 8)))
    out = tmp_path / "tiny.json"
    evaluated = CliRunner().invoke(app, ["eval", str(path), "--sizes", "1-2", "--labels", "soft", "--profile", "smoke",
                                         "--epochs", "1", "--seeds", "1", "--device", "cpu", "--no-control",
                                         "--dataset", "synthetic:3:1x8x8:8", "--loss", "kl",
                                         "--temperature", "2", "--json", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads(out.read_text())
    assert results["protocol"]["loss"] == "kl" and results["protocol"]["loss_temperature"] == 2.0
    assert sorted(results["sizes"]) == ["1", "2"]
    assert all(0.0 <= row["soft"]["mean"] <= 100.0 for row in results["sizes"].values())


def test_tiny_imagenet_shaped_build_loads(tmp_path):
    """200 classes of 3x64x64 (generated), teddy through the CLI: the large-input path end to end."""
    out = tmp_path / "tiny.mdc"
    args = ["build", "--dataset", "synthetic:200:3x64x64:3", "--method", "teddy", "--ipc", "2", "--profile", "smoke",
            "--views", "2", "--no-embed-trainer", "--device", "cpu", "--out", str(out),
            "--set", "method.teddy.recover.iterations=2", "--set", 'method.teddy.teacher_kwargs={"norm": "batch", '
            '"width": 8}', "--set", "method.teddy.teacher_epochs=2", "--set", "method.teddy.teacher_max_train=200",
            "--set", "method.teddy.herding_real=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with formats.open_mdc(out) as reader:
        assert reader.ipc_max == 2 and reader.num_classes == 200
        one, two = reader.read(1), reader.read(2)
        assert one.images.shape == (200, 3, 64, 64) and two.images.shape == (400, 3, 64, 64)
        assert two.views.targets.shape == (400, 2, 200)
        np.testing.assert_array_equal(one.images, two.images[:200])
        prov = reader.header["provenance"]
        assert prov["method"] == "teddy" and len(prov["teachers"]) == 2 and prov["herding_order"]


def test_joint_schedule_applies_the_multisize_subset_loss_and_evaluates_with_mse_gt(tmp_path):
    from condenser.build import BuildConfig, build

    settings = get_profile("smoke").updated({
        "method": {"name": "sre2l", "sre2l": {"schedule": "joint", **SMALL}}, "relabel.views": 2,
        "pack.embed_trainer": False, "condense": {"outer_loops": 4, "inner_loops": 1, "multisize": {"period": 2},
                                                  "batch_real": 4}})
    cfg = BuildConfig(dataset="synthetic:10:1x16x16:8", ipc=3, settings=settings, device="cpu")
    out = build(cfg, tmp_path / "joint.mdc", log=lambda _: None)
    with formats.open_mdc(out.path) as reader:
        prov = reader.header["provenance"]
        assert prov["schedule"] == "joint" and prov["mls_history"]
        assert reader.read(3).images.shape == (30, 1, 16, 16)
    # G-VBSM's student loss (logit MSE + gamma * CE) through `condenser eval`
    evaluated = CliRunner().invoke(app, ["eval", str(out.path), "--sizes", "1-2", "--labels", "soft", "--profile",
                                         "smoke", "--epochs", "1", "--seeds", "1", "--device", "cpu",
                                         "--loss", "mse_gt", "--gamma", "0.15", "--write", "--dataset", cfg.dataset])
    assert evaluated.exit_code == 0, evaluated.output
    with formats.open_mdc(out.path) as reader:
        assert reader.header["results_protocol"]["loss"] == "mse_gt"
        assert reader.header["results_protocol"]["loss_gamma"] == 0.15


def test_the_three_methods_are_presets_of_one_engine():
    sre2l = settings_for("sre2l")
    gvbsm_off = settings_for("gvbsm", pool="single", sampling="all", teacher_max_train=None,
                             recover={"lr": 0.1, "match": {"bn_weight": 1.0, "conv_weight": 0.0, "ema": 0.0,
                                                           "conv_drop": 0.0}})
    teddy_single = settings_for("teddy", pool="single", sampling="all", k=1, recover={"weight_decay": 0.0})
    assert sre2l == gvbsm_off == teddy_single
    # the loss and augmentation are the recover loop's own dataclasses, nested (not copied)
    assert isinstance(sre2l.recover.match, MatchConfig) and isinstance(sre2l.recover.aug, RecoverAugConfig)
    assert settings_for("gvbsm").recover.match.bn_weight == 0.01
    assert get_profile("cpu").method.gvbsm.recover.iterations == 500
    with pytest.raises(ConfigError, match="unknown setting 'method.sre2l.iterationz'"):
        settings_for("sre2l", iterationz=3)
    with pytest.raises(ConfigError, match="method.sre2l.recover.match.ema = 'high' .*: expected float"):
        settings_for("sre2l", recover={"match": {"ema": "high"}})


def test_sds_ema_reports_the_running_average_but_matches_plain_distances_at_first():
    torch.manual_seed(0)
    from condenser.statmatch import MatchConfig, PoolMember, TeacherPool

    model = build_model("convnet", (1, 28, 28), 10, width=8, norm="batch").eval()
    pool = TeacherPool([PoolMember(model, {"arch": "convnet"})])
    x, y, g = torch.randn(10, 1, 28, 28), torch.arange(10), torch.Generator()
    plain = StatMatchObjective(pool, MatchConfig(ema=0.0))
    sds = StatMatchObjective(pool, MatchConfig(ema=0.8))
    first_plain, _ = plain(x, y, 0, g)
    first_sds, _ = sds(x, y, 0, g)
    torch.testing.assert_close(first_sds, first_plain)  # the EMA starts at the current statistics
    x2 = x + 1.0
    second_plain, _ = plain(x2, y, 1, g)
    second_sds, _ = sds(x2, y, 1, g)
    assert not torch.allclose(second_sds, second_plain)  # value of the running average, not of this batch
    plain.close()
    sds.close()
