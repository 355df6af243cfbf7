"""The condensation loop: result layout, resume equality, typed errors, and that gm/dm actually match."""

from __future__ import annotations

import pytest
import torch

from condenser.condense import CondenseConfig, CondenseConfigError, CondenseResult, condense
from condenser.data import synthetic
from condenser.errors import CheckpointError
from condenser.methods import MethodConfigError, build_method, init_synthetic
from condenser.models import build_model
from condenser.multisize import MultisizeConfig
from condenser.resume import Interrupted

TINY = dict(ipc=3, outer_loops=4, inner_loops=2, multisize=MultisizeConfig(period=2), batch_real=4, width=8,
            depth=2, device="cpu")
GM_SETTINGS = {"gm": {"n_data": 16}, "dm": {}}  # gm trains its network on 16 real images per inner step


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: one intra-op thread keeps these tests fast under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="module")
def tiny_set():
    return synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=16)


@pytest.fixture(scope="module")
def fmnist_small():
    """20 Fashion-MNIST training images per class (the real data the product targets)."""
    from condenser.data import load_dataset

    full = load_dataset("fashion-mnist", "train")
    idx = torch.cat([full.first_of_class(c, 20) for c in range(full.spec.num_classes)])
    return full.subset(idx)


def test_result_layout_is_ipc_major(tiny_set):
    res = condense(CondenseConfig(method="dm", **TINY), tiny_set, progress=False)
    assert isinstance(res, CondenseResult) and res.outer_loops_done == 4
    assert res.images.shape == (9, 1, 8, 8) and res.images.dtype == torch.float32
    assert res.labels.tolist() == [0, 1, 2] * 3  # record r = i*C + c
    images, labels = res.prefix(2)
    assert images.shape[0] == 6 and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert [r["outer_loop"] for r in res.mls_history] == [1, 2, 4]
    assert res.provenance()["nesting_unit"] == "stored image"
    # pixels stay in the image of [0, 1] under the dataset's normalisation
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert res.images.min() >= lo - 1e-6 and res.images.max() <= hi + 1e-6


def test_initialisation_takes_first_images_in_dataset_order(tiny_set):
    syn = init_synthetic(tiny_set, ipc=2)
    for c in range(3):
        assert syn.init_indices[c].tolist() == tiny_set.first_of_class(c, 2).tolist()
        torch.testing.assert_close(syn.data[:, c].detach(), tiny_set.normalized(tiny_set.first_of_class(c, 2)))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r1 = init_synthetic(tiny_set, ipc=2, mode="random", generator=g1)
    r2 = init_synthetic(tiny_set, ipc=2, mode="random", generator=g2)
    assert torch.equal(r1.init_indices, r2.init_indices)


def test_factor_two_decodes_four_samples_per_stored_image(tiny_set):
    res = condense(CondenseConfig(method="dm", factor=2, **TINY), tiny_set, progress=False)
    images, labels = res.decoded(1)
    assert images.shape == (3 * 4, 1, 8, 8) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("method", ["gm", "dm"])
@pytest.mark.parametrize("how", ["stop_after", "exception"])
def test_resume_equals_uninterrupted(tmp_path, tiny_set, method, how):
    cfg = CondenseConfig(method=method, checkpoint_every=1, method_settings=GM_SETTINGS[method], **TINY)
    whole = condense(cfg, tiny_set, progress=False)

    run = tmp_path / "run"
    if how == "stop_after":
        with pytest.raises(Interrupted, match="2 of 4 outer loops") as stopped:
            condense(cfg, tiny_set, run, progress=False, stop_after=2)
        assert (stopped.value.done, stopped.value.total) == (2, 4)
    else:
        class Killed(Exception):
            pass

        def kill(t: int, info: dict) -> None:
            if t == 3:
                raise Killed

        with pytest.raises(Killed):
            condense(cfg, tiny_set, run, progress=False, on_outer_loop=kill)
    resumed = condense(cfg, tiny_set, run, progress=False)
    assert resumed.outer_loops_done == 4
    assert resumed.timings["outer_loops_this_run"] == (2 if how == "stop_after" else 1)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.mls_history == whole.mls_history
    again = condense(cfg, tiny_set, run, progress=False)  # a finished run just returns its result
    assert again.timings["outer_loops_this_run"] == 0 and torch.equal(again.images, whole.images)


def test_resume_refuses_another_config(tmp_path, tiny_set):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        condense(CondenseConfig(method="dm", **TINY), tiny_set, run, progress=False, stop_after=2)
    with pytest.raises(CheckpointError, match="different condensation run"):
        condense(CondenseConfig(method="dm", seed=1, **TINY), tiny_set, run, progress=False)


def test_config_errors_are_typed(tiny_set):
    with pytest.raises(CondenseConfigError):
        CondenseConfig(method="nope")
    with pytest.raises(CondenseConfigError):
        CondenseConfig(ipc=0)
    with pytest.raises(CondenseConfigError, match="checkpoint_every must be >= 1"):
        CondenseConfig(checkpoint_every=0)
    with pytest.raises(MethodConfigError):
        condense(CondenseConfig(method="dm", method_settings={"bogus": 1}, **TINY), tiny_set, progress=False)
    with pytest.raises(MethodConfigError):  # 16 images per class cannot initialise 5 * 2 * 2
        condense(CondenseConfig(method="dm", **{**TINY, "ipc": 5, "factor": 2}), tiny_set, progress=False)


@pytest.mark.parametrize("method", ["gm", "dm"])
def test_method_lowers_its_matching_loss(fmnist_small, method):
    """Plain SGD on the images against a fixed network and real batch lowers the matching loss."""
    torch.manual_seed(0)
    model = build_model("convnet", (1, 28, 28), 10, width=16)
    m = build_method(method)
    syn = init_synthetic(fmnist_small, ipc=2)
    real = fmnist_small.normalized(torch.cat([fmnist_small.first_of_class(c, 16, offset=4) for c in range(10)]))
    real = real.view(10, 16, 1, 28, 28)
    labels = torch.arange(10)
    lr = 0.05 if method == "gm" else 1.0
    opt = torch.optim.SGD([syn.data], lr=lr, momentum=0.5)
    losses = []
    for _ in range(15):
        loss = m.loss(model, syn.decoded(), real, labels)
        opt.zero_grad()
        loss.backward(inputs=[syn.data])
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_gm_class_batched_equals_class_loop():
    """The vmap path (GPU) and the per-class loop (CPU) compute the same loss and image gradient."""
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 3, width=8, depth=2).double()
    g = torch.Generator().manual_seed(0)
    syn = torch.randn(3, 4, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    real = torch.randn(3, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    w = (torch.arange(4) < 2).double().expand(3, 4)
    out = []
    for batched in (True, False):
        m = build_method("gm", class_batched=batched)
        loss = m.match(model, syn, m.target(model, real, torch.arange(3)), torch.arange(3), w)
        out.append((loss, torch.autograd.grad(loss, syn)[0]))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


def test_single_class_loss_signature():
    model = build_model("convnet", (1, 8, 8), 3, width=8, depth=2)
    m = build_method("dm")
    syn, real = torch.randn(2, 1, 8, 8), torch.randn(5, 1, 8, 8)
    one = m.loss(model, syn, real, 1)
    batch = m.loss(model, syn.unsqueeze(0), real.unsqueeze(0), torch.tensor([1]))
    torch.testing.assert_close(one, batch)


def test_baselines_sizes_and_nesting(tmp_path, tiny_set):
    from condenser.baselines import build_sized_sets

    cfg = CondenseConfig(method="dm", **{**TINY, "outer_loops": 2})
    a = build_sized_sets("A", cfg, tiny_set, tmp_path, progress=False)
    assert not a.nested and sorted(a.sets) == [1, 2, 3] and a.images_per_class_stored == 6
    assert [r.ipc for r in a.runs] == [1, 2, 3] and a.get(2)[0].shape == (6, 1, 8, 8)

    b = build_sized_sets("B", cfg, tiny_set, tmp_path, progress=False)
    assert b.nested and len(b.runs) == 3
    assert [r.init_indices[:, 0].tolist() for r in b.runs] == [
        [int(tiny_set.first_of_class(c, 1, offset=k)[0]) for c in range(3)] for k in range(3)]
    assert torch.equal(b.get(2)[0], torch.cat([b.runs[0].images, b.runs[1].images]))
    assert torch.equal(b.get(1)[0], a.get(1)[0])  # for n = 1, A and B are the same process

    c = build_sized_sets("C", cfg, tiny_set, tmp_path, progress=False)
    m = build_sized_sets("mdc", cfg, tiny_set, tmp_path, progress=False)
    assert c.runs[0].mls_history == [] and m.runs[0].mls_history
    assert torch.equal(c.get(2)[0], c.get(3)[0][:6])
    assert c.get(3)[1].tolist() == [0, 1, 2] * 3


def test_class_wise_mls_with_code_freezing_runs(tiny_set):
    multisize = MultisizeConfig(period=1, class_wise=True, freeze="code")
    cfg = CondenseConfig(method="dm", **{**TINY, "multisize": multisize})
    res = condense(cfg, tiny_set, progress=False)
    assert len(res.mls_history) == 4
    assert all(len(h["selected"]) == 3 and len(h["distances"]) == 3 for h in res.mls_history)


def test_siamese_per_class_is_one_draw_per_class():
    """The batched apply equals applying class k's draw to [real_k; syn_k] alone."""
    from dataclasses import fields

    from condenser.augment import DSA, DSAConfig, DSAParams
    from condenser.methods.base import siamese_per_class

    dsa = DSA(DSAConfig("color_crop_cutout_flip_scale_rotate"))
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(3, 5, 1, 8, 8, generator=g), torch.randn(3, 2, 1, 8, 8, generator=g)
    r_aug, s_aug = siamese_per_class(dsa, real, syn, torch.Generator().manual_seed(7))
    params = dsa.draw(3, (8, 8), torch.Generator().manual_seed(7))
    for k in range(3):
        one = DSAParams(**{f.name: None if getattr(params, f.name) is None else getattr(params, f.name)[k:k + 1]
                           for f in fields(DSAParams)})
        expected = dsa.apply(torch.cat([real[k], syn[k]]), one)
        torch.testing.assert_close(torch.cat([r_aug[k], s_aug[k]]), expected)
