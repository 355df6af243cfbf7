"""Multisize (MDC) pieces: MLS selection (Eq. 8-9), freeze rules (Eq. 10 vs code), masked updates,
prefix feature distances, and the subset loss."""

from __future__ import annotations

import pytest
import torch

import condenser.multisize as ms
from condenser.condense import CondenseConfig, condense
from condenser.data import synthetic
from condenser.methods import MaskedSGD, build_method
from condenser.methods.formation import decode, encode
from condenser.models import build_model
from condenser.multisize import (
    MLSSelector,
    Multisize,
    MultisizeConfig,
    MultisizeConfigError,
    freeze_code,
    freeze_paper,
    prefix_feature_distances,
    select_mls,
)

# --- MLS selection ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: one intra-op thread keeps these tests fast under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def test_first_selection_is_subset_one():
    assert select_mls(torch.tensor([[9.0, 5.0, 1.0]]), None) == [1]


def test_selection_is_largest_absolute_change():
    ref = torch.tensor([[5.0, 3.0, 2.0, 1.0]])
    # changes 0.5, 2.0, 0.1, 0.05 -> subset 2
    assert select_mls(torch.tensor([[4.5, 1.0, 1.9, 0.95]]), ref) == [2]
    # an increase counts as much as a decrease (Eq. 8 takes |.|): +3 at subset 3
    assert select_mls(torch.tensor([[5.0, 3.0, 5.0, 1.0]]), ref) == [3]
    # the largest distance itself is irrelevant (Table 4 row 2 would always pick 1)
    assert select_mls(torch.tensor([[5.0, 3.0, 2.0, 0.0]]), ref) == [4]


def test_selection_ties_go_to_smaller_subset():
    ref = torch.tensor([[4.0, 3.0, 2.0]])
    assert select_mls(torch.tensor([[3.0, 2.0, 1.0]]), ref) == [1]
    assert select_mls(torch.tensor([[4.0, 2.0, 1.0]]), ref) == [2]


def test_selector_follows_hand_made_history():
    """Shared mode averages classes; the period schedule measures t=1 and multiples of Δt."""
    sel = MLSSelector(ipc=4, num_classes=2, config=MultisizeConfig(period=3, freeze="none"))
    assert [t for t in range(1, 10) if sel.measuring(t)] == [1, 3, 6, 9]
    assert not sel.active and sel.subset_sizes() == [0, 0]
    hist = [
        (1, [[6.0, 4.0, 2.0], [6.0, 4.0, 2.0]]),  # reference; MLS 1
        (3, [[5.0, 1.0, 2.0], [5.0, 3.0, 2.0]]),  # mean change (1, 2, 0) -> 2
        (6, [[5.0, 1.0, 0.0], [5.0, 3.0, 0.0]]),  # change (0, 0, 2) -> 3
        (9, [[0.0, 1.0, 0.0], [2.0, 3.0, 0.0]]),  # change (4, 0, 0) -> 1
    ]
    picks = [sel.select(t, torch.tensor(d)).selected for t, d in hist]
    assert picks == [[1], [2], [3], [1]]
    assert sel.subset_sizes() == [1, 1]
    assert [r.outer_loop for r in sel.history] == [1, 3, 6, 9]
    assert sel.history[1].distances == [[5.0, 2.0, 2.0]]


def test_class_wise_selection_is_per_class():
    sel = MLSSelector(ipc=3, num_classes=2, config=MultisizeConfig(period=1, class_wise=True))
    sel.select(1, torch.tensor([[4.0, 2.0], [4.0, 2.0]]))
    rec = sel.select(2, torch.tensor([[1.0, 2.0], [4.0, 0.0]]))
    assert rec.selected == [1, 2] and sel.subset_sizes() == [1, 2]
    assert sel.frozen_sizes() == [0, 1]  # class 1 went 1 -> 2: its first image freezes


def test_selector_state_roundtrip():
    sel = MLSSelector(ipc=4, num_classes=1, config=MultisizeConfig(period=1, freeze="code"))
    for t, d in enumerate([[3.0, 2.0, 1.0], [1.0, 2.0, 1.0], [1.0, 0.0, 1.0]], start=1):
        sel.select(t, torch.tensor([d]))
    other = MLSSelector(ipc=4, num_classes=1, config=MultisizeConfig(period=1, freeze="code"))
    other.load_state_dict(sel.state_dict())
    assert other.state_dict()["history"] == sel.state_dict()["history"]
    assert (other.current, other.frozen, other.keep) == (sel.current, sel.frozen, sel.keep)


def test_config_errors_are_typed():
    with pytest.raises(MultisizeConfigError):
        MultisizeConfig(freeze="sometimes")
    with pytest.raises(MultisizeConfigError):
        MultisizeConfig(period=0)
    with pytest.raises(MultisizeConfigError, match="subset rule"):
        MultisizeConfig(subsets="some")


# --- freeze rules (MDC paper §3.3.2, Eq. 10) --------------------------------------------------------


def _frozen_paper(sequence: list[int]) -> list[int]:
    prev, frozen, out = None, 0, []
    for n in sequence:
        frozen = freeze_paper(prev, n, frozen)
        prev = n
        out.append(frozen)
    return out


def _frozen_code(sequence: list[int]) -> list[int]:
    prev, keep, out = None, frozenset(), []
    for n in sequence:
        frozen, keep = freeze_code(prev, n, keep)
        prev = n
        out.append(frozen)
    return out


@pytest.mark.parametrize(
    ("sequence", "paper", "code"),
    [
        ([1, 2], [0, 1], [0, 1]),  # the rules agree on short sequences
        ([2, 1], [0, 0], [0, 0]),
        ([1, 2, 1, 3], [0, 1, 0, 1], [0, 1, 0, 2]),  # code freezes S_[2], the paper S_[1]
        ([1, 3, 2], [0, 1, 0], [0, 1, 1]),  # code keeps S_[1] frozen, the paper unfreezes
        ([1, 2, 2, 2], [0, 1, 1, 1], [0, 1, 1, 1]),  # equal sizes keep the freeze
    ],
)
def test_freeze_rules(sequence, paper, code):
    assert _frozen_paper(sequence) == paper
    assert _frozen_code(sequence) == code


@pytest.mark.parametrize("rule", ["paper", "code", "none"])
def test_selector_applies_freeze_rule(rule):
    """Distance histories engineered to select 1 -> 2 -> 1 -> 3."""
    sel = MLSSelector(ipc=4, num_classes=1, config=MultisizeConfig(period=1, freeze=rule))
    frozen = []
    for d in ([5.0, 5.0, 5.0], [5.0, 3.0, 5.0], [1.0, 3.0, 5.0], [1.0, 3.0, 0.0]):
        frozen.append(sel.select(len(frozen) + 1, torch.tensor([d])).frozen[0])
    assert [r.selected[0] for r in sel.history] == [1, 2, 1, 3]
    assert frozen == {"paper": [0, 1, 0, 1], "code": [0, 1, 0, 2], "none": [0, 0, 0, 0]}[rule]


# --- masked updates ---------------------------------------------------------------------------------


def test_masked_sgd_frozen_entries_do_not_move_and_keep_no_momentum():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, 1, 5, 5, generator=g).requires_grad_(True)
    opt = MaskedSGD(p, lr=0.1, momentum=0.5)
    free = torch.ones(4, 3, 1, 1, 1, dtype=torch.bool)
    for _ in range(3):  # build up momentum everywhere
        p.grad = torch.randn(p.shape, generator=g)
        opt.step(free)
    trainable = torch.arange(4).view(4, 1, 1, 1, 1) >= 2  # freeze images 0, 1 of every class
    before = p.detach().clone()
    for _ in range(5):
        p.grad = torch.randn(p.shape, generator=g)
        p.grad[0, 0, 0, 0, 0] = float("nan")  # even a bad gradient on a frozen image must not leak
        opt.step(trainable)
        assert torch.equal(p.detach()[:2], before[:2])
        assert torch.equal(opt.buffer[:2], torch.zeros_like(opt.buffer[:2]))
    assert not torch.equal(p.detach()[2:], before[2:])
    # unfreezing starts from zero momentum: the first step is exactly -lr * grad
    after = p.detach().clone()
    grad = torch.randn(p.shape, generator=g)
    p.grad = grad.clone()
    opt.step(free)
    assert torch.equal(p.detach()[:2], after[:2] - 0.1 * grad[:2])


def test_condense_keeps_frozen_images_bit_identical(monkeypatch):
    """End to end: a scripted MLS sequence 1 -> 2 -> 3 freezes S_[1], then S_[2]; they never move."""
    script = iter([[1], [2], [3], [3], [3], [3]])
    monkeypatch.setattr(ms, "select_mls", lambda cur, ref: next(script))
    ds = synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=12)
    cfg = CondenseConfig(method="dm", ipc=4, outer_loops=5, inner_loops=2, multisize=MultisizeConfig(period=1),
                         batch_real=4, width=8, depth=2, device="cpu", lr_img=5.0)
    snaps: list[tuple[torch.Tensor, list[int]]] = []
    condense(cfg, ds, progress=False,
             on_outer_loop=lambda t, info: snaps.append((info["images"].clone(), info["frozen"])))
    assert [f for _, f in snaps] == [[0] * 3, [1] * 3, [2] * 3, [2] * 3, [2] * 3]
    for (prev, frozen), (cur, _) in zip(snaps, snaps[1:], strict=False):
        n = frozen[0]
        assert torch.equal(cur[:n], prev[:n])  # frozen prefix: bit-identical
        assert not torch.equal(cur[n:], prev[n:])  # the rest moves


# --- feature distances --------------------------------------------------------------------------


@pytest.mark.parametrize("per_image", [1, 4])
def test_prefix_distances_match_naive(per_image):
    g = torch.Generator().manual_seed(1)
    ipc, k = 5, 3
    fs = torch.randn(k, ipc * per_image, 8, 2, 2, generator=g)
    fr = torch.randn(k, 7, 8, 2, 2, generator=g)
    fast = prefix_feature_distances(fs, fr, ipc, per_image)
    naive = torch.stack([
        torch.stack([((fs[c, : n * per_image].mean(0) - fr[c].mean(0)) ** 2).sum() for n in range(1, ipc)])
        for c in range(k)
    ])
    assert fast.shape == (k, ipc - 1)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


def test_observe_averages_over_steps_and_classes():
    model = build_model("convnet", (1, 8, 8), 3, width=8, depth=2)
    wrapper = Multisize(build_method("dm"), ipc=3, num_classes=3, config=MultisizeConfig(period=1))
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(3)
    per_step = []
    for _ in range(2):
        syn, real = torch.randn(3, 3, 1, 8, 8, generator=g), torch.randn(3, 5, 1, 8, 8, generator=g)
        wrapper.observe(model, syn, real, labels)
        with torch.no_grad():
            fs = model.features(syn.flatten(0, 1)).view(3, 3, -1)
            fr = model.features(real.flatten(0, 1)).view(3, 5, -1)
        per_step.append(prefix_feature_distances(fs, fr, 3))
    rec = wrapper.end_outer_loop(1)
    expected = ((per_step[0] + per_step[1]) / 2).mean(0)
    torch.testing.assert_close(torch.tensor(rec.distances[0]), expected)
    assert rec.selected == [1] and wrapper.selector.active


# --- the subset loss ---------------------------------------------------------------------------------


def _wrapped(method: str, factor: int, config: MultisizeConfig):
    """A small network, the base method, its IPC-4 two-class wrapper and a seeded generator for the batches."""
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 2, width=8, depth=2)
    base = build_method(method)
    wrapper = Multisize(base, ipc=4, num_classes=2, per_image=factor * factor, config=config)
    return model, base, wrapper, torch.Generator().manual_seed(3)


@pytest.mark.parametrize("method", ["dm", "gm"])
@pytest.mark.parametrize("factor", [1, 2])
def test_subset_loss_is_base_loss_on_the_mls_prefix(method, factor):
    """loss = base(S) + w * base(S_[n*]) with the same real batch; the subset term reaches only S_[n*]."""
    model, base, wrapper, g = _wrapped(method, factor, MultisizeConfig(weight=0.7, period=1, freeze="none"))
    per = factor * factor
    stored = torch.randn(4, 2, 1, 8, 8, generator=g).requires_grad_(True)
    syn = decode(stored, factor).transpose(0, 1).reshape(2, 4 * per, 1, 8, 8)
    real = torch.randn(2, 6, 1, 8, 8, generator=g)
    labels = torch.arange(2)
    wrapper.selector.select(1, torch.tensor([[3.0, 2.0, 1.0]] * 2))
    wrapper.selector.select(2, torch.tensor([[3.0, 0.0, 1.0]] * 2))  # MLS = 2
    assert wrapper.selector.subset_sizes() == [2, 2]

    total = wrapper.loss(model, syn, real, labels)
    target = base.target(model, real, labels)
    full = base.match(model, syn, target, labels)
    sub = base.match(model, syn[:, : 2 * per], target, labels)  # a separate pass on the prefix alone
    torch.testing.assert_close(total, full + 0.7 * sub, rtol=1e-5, atol=1e-6)

    (g_sub,) = torch.autograd.grad(wrapper.loss(model, syn, real, labels) - full, stored, retain_graph=True)
    assert g_sub[:2].abs().sum() > 0 and torch.equal(g_sub[2:], torch.zeros_like(g_sub[2:]))


@pytest.mark.parametrize("method", ["dm", "gm"])
@pytest.mark.parametrize("factor", [1, 2])
def test_all_prefix_loss_is_the_mean_of_every_prefix_loss(method, factor):
    """subsets = all: base(S) + w * mean_n base(S_[n]), n = 1..N-1, from the first loop on and with no measuring."""
    model, base, wrapper, g = _wrapped(method, factor, MultisizeConfig(weight=0.7, subsets="all"))
    per = factor * factor
    syn = torch.randn(2, 4 * per, 1, 8, 8, generator=g)
    real, labels = torch.randn(2, 6, 1, 8, 8, generator=g), torch.arange(2)
    assert not wrapper.selector.measuring(1) and not wrapper.selector.measuring(100)

    target = base.target(model, real, labels)
    prefixes = [base.match(model, syn[:, : n * per], target, labels) for n in (1, 2, 3)]
    expected = base.match(model, syn, target, labels) + 0.7 * torch.stack(prefixes).mean()
    torch.testing.assert_close(wrapper.loss(model, syn, real, labels), expected, rtol=1e-5, atol=1e-6)


def test_no_subset_loss_before_first_selection():
    model = build_model("convnet", (1, 8, 8), 2, width=8, depth=2)
    base = build_method("dm")
    wrapper = Multisize(base, ipc=3, num_classes=2)
    syn, real, labels = torch.randn(2, 3, 1, 8, 8), torch.randn(2, 4, 1, 8, 8), torch.arange(2)
    assert torch.equal(wrapper.loss(model, syn, real, labels), base.loss(model, syn, real, labels))


def test_formation_nesting_unit_is_the_stored_image():
    """Decoded prefix n*f*f depends only on stored images 0..n-1; encode inverts decode on patches."""
    stored = torch.randn(3, 2, 1, 8, 8, requires_grad=True)
    dec = decode(stored, 2).transpose(0, 1).reshape(2, 12, 1, 8, 8)
    (g,) = torch.autograd.grad(dec[:, :4].sum(), stored)
    assert g[0].abs().sum() > 0 and torch.equal(g[1:], torch.zeros_like(g[1:]))
    real = torch.randn(4, 1, 8, 8)  # the f*f real images of one stored image
    enc = encode(real, 2)  # patch k (row-major) is real image k, area-downsampled
    for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        torch.testing.assert_close(enc[:, r:r + 4, c:c + 4], torch.nn.functional.avg_pool2d(real[k], 2))
    flat = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8)  # constant images 0, 1, 2, 3
    torch.testing.assert_close(decode(encode(flat, 2), 2), flat)


def test_measuring_through_the_loss_reuses_dm_real_features():
    """dm's target is the real mean feature; measuring inside `loss` gives the same distances."""
    model = build_model("convnet", (1, 8, 8), 2, width=8, depth=2)
    g = torch.Generator().manual_seed(4)
    syn, real, labels = torch.randn(2, 3, 1, 8, 8, generator=g), torch.randn(2, 5, 1, 8, 8, generator=g), \
        torch.arange(2)
    a = Multisize(build_method("dm"), ipc=3, num_classes=2, config=MultisizeConfig(period=1))
    b = Multisize(build_method("dm"), ipc=3, num_classes=2, config=MultisizeConfig(period=1))
    a.loss(model, syn, real, labels, measure=True)
    b.observe(model, syn, real, labels)
    torch.testing.assert_close(a.meter.mean(), b.meter.mean())
