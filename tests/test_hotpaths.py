"""Issue 14's faster hot paths give the results of the paths they replaced (no timings asserted here).

- gm's subset term on the MLS prefix alone equals the 0/1-masked term on the whole batch;
- gm measuring steps reuse the target's real features instead of a second real forward;
- a fixed-seed multisize gm condensation ends with the images of the old (masked, re-forwarding) path;
- the allocator settings reach glibc, stay off when the user set their own, and stop the page faults.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from condenser.condense import CondenseConfig, condense
from condenser.data import synthetic
from condenser.methods import MethodConfigError, build_method
from condenser.methods.formation import decode
from condenser.methods.gm import GradientMatching
from condenser.models import build_model
from condenser.multisize import Multisize, MultisizeConfig
from formats import alloc

K, IPC = 3, 4


def _batch(factor: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stored images [IPC, K, 1, 8, 8] (the leaf), their decoded class batch [K, M, ...], a real batch."""
    g = torch.Generator().manual_seed(seed)
    stored = torch.randn(IPC, K, 1, 8, 8, generator=g).requires_grad_(True)
    per = factor * factor
    syn = decode(stored, factor).transpose(0, 1).reshape(K, IPC * per, 1, 8, 8)
    return stored, syn, torch.randn(K, 6, 1, 8, 8, generator=g)


def _wrapper(mls: list[int], class_wise: bool, per_image: int = 1) -> Multisize:
    wrapper = Multisize(build_method("gm"), ipc=IPC, num_classes=K, per_image=per_image,
                        config=MultisizeConfig(weight=0.7, period=1, freeze="none", class_wise=class_wise))
    wrapper.selector.current = mls  # the state after a selection of these sizes
    return wrapper


def _masked_loss(wrapper: Multisize, model, syn, real, labels) -> torch.Tensor:
    """The replaced path: the subset term as the base loss of the whole batch with 0/1 prefix weights."""
    base = wrapper.base
    target = base.target(model, real, labels)
    weights = wrapper.subset_weights(labels, syn.shape[1])
    return base.match(model, syn, target, labels) + 0.7 * base.match(model, syn, target, labels, weights)


@pytest.mark.parametrize(("mls", "class_wise", "factor"), [
    ([2], False, 1), ([3], False, 2), ([1, 3, 2], True, 1), ([2, 2, 1], True, 2)])
def test_gm_prefix_subset_term_equals_masked_term(mls, class_wise, factor):
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), K, width=8, depth=2)
    stored, syn, real = _batch(factor)
    labels = torch.arange(K)
    wrapper = _wrapper(mls, class_wise, factor * factor)
    new = wrapper.loss(model, syn, real, labels)
    (g_new,) = torch.autograd.grad(new, stored, retain_graph=True)
    old = _masked_loss(wrapper, model, syn, real, labels)
    (g_old,) = torch.autograd.grad(old, stored)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_new, g_old, rtol=1e-6, atol=1e-6 * float(g_old.abs().max()))


def test_gm_ragged_prefix_groups_classes_in_any_label_order():
    """Class-wise sizes follow the labels of the batch (a shard holds classes 2 and 0, say)."""
    torch.manual_seed(1)
    model = build_model("convnet", (1, 8, 8), K, width=8, depth=2).double()
    g = torch.Generator().manual_seed(1)
    syn = torch.randn(2, IPC, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    real = torch.randn(2, 5, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 0])
    wrapper = _wrapper([1, 3, 2], class_wise=True)
    assert wrapper.batch_prefix_sizes(labels) == [2, 1]
    (g_new,) = torch.autograd.grad(wrapper.loss(model, syn, real, labels), syn)
    (g_old,) = torch.autograd.grad(_masked_loss(wrapper, model, syn, real, labels), syn)
    torch.testing.assert_close(g_new, g_old, rtol=1e-12, atol=1e-14)


def test_gm_keeps_masks_and_the_real_forward_under_batch_norm():
    """Batch statistics couple the samples: slicing would change the loss, and so would reusing features."""
    torch.manual_seed(3)
    model = build_model("convnet", (1, 8, 8), K, width=8, depth=2, norm="batch")
    _, syn, real = _batch(1, seed=3)
    labels = torch.arange(K)
    wrapper = _wrapper([1, 3, 2], class_wise=True)
    base = wrapper.base
    target = base.target(model, real, labels)
    assert target.feature_mean is None
    prefix = base.match_prefix(model, syn, target, labels, [1, 3, 2])
    assert torch.equal(prefix, base.match(model, syn, target, labels, wrapper.subset_weights(labels, IPC)))
    first = torch.tensor([0])
    alone = base.match(model, syn[:1, :1], target.classes(first), labels[:1])  # class 0's prefix as its own batch
    in_batch = base.match(model, syn[:1], target.classes(first), labels[:1], wrapper.subset_weights(labels[:1], IPC))
    assert not torch.allclose(alone, in_batch)  # why the masks stay


def test_gm_match_prefix_rejects_a_size_per_class_mismatch():
    model = build_model("convnet", (1, 8, 8), K, width=8, depth=2)
    _, syn, real = _batch(1)
    base = build_method("gm")
    target = base.target(model, real, torch.arange(K))
    with pytest.raises(MethodConfigError, match="2 prefix sizes for a batch of 3 classes"):
        base.match_prefix(model, syn, target, torch.arange(K), [1, 2])


def test_gm_measuring_reuses_the_real_features_of_the_target():
    """Same distances as a separate real forward, and no forward of the whole real batch is run again."""
    torch.manual_seed(2)
    model = build_model("convnet", (1, 8, 8), K, width=8, depth=2)
    _, syn, real = _batch(1, seed=2)
    labels = torch.arange(K)
    rows: list[int] = []
    features = model.features
    model.features = lambda x: rows.append(x.shape[0]) or features(x)  # records every forward's batch
    a, b = _wrapper([2], False), _wrapper([2], False)
    a.loss(model, syn.detach(), real, labels, measure=True)
    assert K * real.shape[1] not in rows and rows.count(real.shape[1]) == K  # the target's class forwards
    b.observe(model, syn.detach(), real, labels)  # the replaced path: observe runs the real forward itself
    assert K * real.shape[1] in rows
    torch.testing.assert_close(a.meter.mean(), b.meter.mean(), rtol=1e-6, atol=1e-7)


def test_gm_vmap_target_leaves_the_real_features_to_observe():
    model = build_model("convnet", (1, 8, 8), K, width=8, depth=2)
    _, _, real = _batch(1)
    target = build_method("gm", class_batched=True).target(model, real, torch.arange(K))
    assert target.feature_mean is None and len(target.grads) == 2


def test_fixed_seed_gm_condensation_ends_with_the_old_paths_images(monkeypatch):
    """Multisize gm over measuring and subset loops: the same images and MLS history as before."""
    data = synthetic(num_classes=K, image_shape=(1, 8, 8), per_class=16)
    cfg = CondenseConfig(method="gm", ipc=IPC, outer_loops=4, inner_loops=2, multisize=MultisizeConfig(period=2),
                         batch_real=4, method_settings={"n_data": 16}, width=8, depth=2, device="cpu")
    new = condense(cfg, data, progress=False)
    monkeypatch.delattr(GradientMatching, "match_prefix")  # the masked subset term ...
    monkeypatch.delattr(GradientMatching, "real_feature_mean")  # ... and observe's own real forward
    old = condense(cfg, data, progress=False)
    assert [r["selected"] for r in new.mls_history] == [r["selected"] for r in old.mls_history]
    assert len(new.mls_history) == 3  # loops 1, 2 and 4 measured; loops 2-4 had a subset term
    torch.testing.assert_close(new.images, old.images, rtol=1e-6, atol=1e-6)


# --- the allocator ---------------------------------------------------------------------------------


def test_allocator_settings_reach_mallopt():
    calls: list[tuple[int, int]] = []
    ok = alloc.configure_allocator({}, lambda p, v: calls.append((p, v)) or 1)
    assert ok and calls == [(alloc.M_MMAP_MAX, 0), (alloc.M_TRIM_THRESHOLD, -1)]


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}])
def test_allocator_leaves_a_users_settings_alone(env):
    calls: list[tuple[int, int]] = []
    assert not alloc.configure_allocator(env, lambda p, v: calls.append((p, v)) or 1)
    assert calls == []


def test_allocator_reports_a_refused_setting():
    assert not alloc.configure_allocator({}, lambda p, v: 0)


def test_allocator_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(alloc.sys, "platform", "darwin")
    assert alloc._glibc_mallopt() is None


_FAULTS = textwrap.dedent("""
    import ctypes, resource, sys
    from formats.alloc import configure_allocator
    if sys.argv[1] == "tuned":
        assert configure_allocator()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB)
    def temporary():  # what a step's activation does: allocate, write every page, free
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    temporary()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        temporary()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or alloc._glibc_mallopt() is None, reason="glibc only")
def test_allocator_stops_refaulting_freed_large_blocks():
    """A 64 MiB temporary allocated again faults its 16384 pages in again by default, not once tuned."""
    run = lambda mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,  # noqa: E731
                                          text=True, check=True, env={"PATH": ""}).stdout)
    assert run("default") > 10000
    assert run("tuned") < 1000
