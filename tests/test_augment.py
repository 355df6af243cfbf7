"""condenser.augment: DSA ops (shapes, gradients, siamese draws, determinism) and CutMix."""

from __future__ import annotations

import pytest
import torch

from condenser.augment import DSA, OPS, DSAConfig, apply_cutmix, cutmix, draw_cutmix
from condenser.errors import UnknownNameError

FULL = "color_crop_cutout_flip_scale_rotate"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 6, shape: tuple[int, int, int] = (3, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=gen(seed))


@pytest.mark.parametrize("strategy", [*OPS, FULL, "color_crop_cutout", "none"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 12, 20)])
def test_shapes(strategy, shape):
    x = batch(4, shape)
    dsa = DSA(DSAConfig(strategy=strategy))
    assert dsa(x, generator=gen(0)).shape == x.shape
    ya, yb = dsa.siamese(x, x[:2], generator=gen(0))
    assert ya.shape == x.shape and yb.shape == x[:2].shape


@pytest.mark.parametrize("strategy", [*OPS, FULL])
def test_gradient_flows_through_every_op(strategy):
    dsa = DSA(DSAConfig(strategy=strategy))
    weights = torch.randn(6, 3, 16, 16, generator=gen(9))
    for siamese in (False, True):
        x = batch().requires_grad_(True)
        y = dsa.siamese(x, generator=gen(1))[0] if siamese else dsa(x, generator=gen(1))
        (y * weights).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("strategy", [*OPS, FULL])
def test_siamese_same_draw_for_all_batches(strategy):
    dsa = DSA(DSAConfig(strategy=strategy))
    a, b = batch(6, seed=1), batch(3, seed=2)
    a1, a2 = dsa.siamese(a, a.clone(), generator=gen(5))
    assert torch.equal(a1, a2)
    pa, pb = dsa.siamese(a, b, generator=gen(7))
    assert torch.equal(pa, dsa.siamese(a, generator=gen(7))[0])
    assert torch.equal(pb, dsa.siamese(b, generator=gen(7))[0])
    # one draw for every image: identical images stay identical
    same = batch(1, seed=3).expand(5, -1, -1, -1)
    out = dsa.siamese(same, generator=gen(8))[0]
    assert torch.equal(out, out[:1].expand_as(out))


def test_per_sample_draws_differ():
    same = batch(1, seed=3).expand(16, -1, -1, -1)
    out = DSA(DSAConfig(strategy=FULL))(same, generator=gen(0))
    assert not torch.allclose(out[0], out[1]) and len({float(o.sum()) for o in out}) > 8


def test_deterministic_with_generator():
    dsa, x = DSA(), batch(8)
    assert torch.equal(dsa(x, generator=gen(3)), dsa(x, generator=gen(3)))
    assert not torch.equal(dsa(x, generator=gen(3)), dsa(x, generator=gen(4)))
    assert torch.equal(dsa.siamese(x, generator=gen(3))[0], dsa.siamese(x, generator=gen(3))[0])


def test_no_flip_for_digits():
    x = batch(32)
    assert torch.equal(DSA(DSAConfig(strategy="flip"), allow_flip=False)(x, generator=gen(0)), x)
    flipped = DSA(DSAConfig(strategy="flip"))(x, generator=gen(0))
    is_flip = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x, strict=True)]
    is_same = [torch.equal(f, o) for f, o in zip(flipped, x, strict=True)]
    assert all(a or b for a, b in zip(is_flip, is_same, strict=True)) and any(is_flip) and any(is_same)
    dsa = DSA(DSAConfig(strategy=FULL), allow_flip=False)
    assert dsa.draw(4, (16, 16), gen(0)).flip is None


def test_crop_is_an_integer_shift_with_zero_fill():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(8, 1, 1, 1) + 1
    dsa = DSA(DSAConfig(strategy="crop"))
    params = dsa.draw(8, (16, 16), gen(2))
    y = dsa.apply(x, params)
    shifts = (params.theta[:, :, 2] * 8).round().long()  # (dx, dy) in pixels
    assert (shifts.abs() <= 2).all() and (shifts != 0).any()
    for img, (dx, dy) in zip(y, shifts.tolist(), strict=True):
        expected = torch.zeros(16, 16)
        src = x[0, 0]
        ys, xs = slice(max(0, -dy), min(16, 16 - dy)), slice(max(0, -dx), min(16, 16 - dx))
        expected[ys, xs] = src[ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
        assert torch.allclose(img[0], expected, atol=1e-3)


def test_cutout_square_and_one_geometric_op_each():
    dsa = DSA(DSAConfig(strategy="cutout"))
    x = torch.ones(64, 1, 16, 16)
    y = dsa(x, generator=gen(0))
    zeros = (y == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 64 and (zeros > 0).all()  # 8x8 square, partly outside at the borders
    params = DSA(DSAConfig(strategy=FULL)).draw(300, (16, 16), gen(0))
    assert set(params.geometric.tolist()) == {0, 1, 2}
    assert params.saturation.min() >= 0 and params.saturation.max() < 2
    assert params.contrast.min() >= 0.5 and params.contrast.max() < 1.5
    assert params.brightness.abs().max() <= 0.5


def test_unknown_op():
    with pytest.raises(UnknownNameError, match="blur"):
        DSA(DSAConfig(strategy="color_blur"))


# --- CutMix -----------------------------------------------------------------------------------


def constant_batch(b: int = 8, hw: int = 16) -> torch.Tensor:
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, hw, hw).clone()


def test_cutmix_targets_and_area():
    x, targets = constant_batch(), torch.eye(8)
    mixed_any = False
    for seed in range(20):
        mx, mt = cutmix(x, targets, beta=1.0, p=1.0, generator=gen(seed))
        assert torch.allclose(mt.sum(dim=1), torch.ones(8))
        draw = draw_cutmix(8, (16, 16), beta=1.0, p=1.0, generator=gen(seed))
        top, left, h, w = draw.box
        assert abs(draw.lam - (1 - h * w / 256)) < 1e-9
        for i in range(8):
            j = int(draw.perm[i])
            changed = float((mx[i] != i).float().mean())
            if j != i:
                assert changed == pytest.approx(1 - draw.lam)  # pasted area = 1 - lam
                assert mt[i, j] == pytest.approx(1 - draw.lam) and mt[i, i] == pytest.approx(draw.lam)
                assert (mx[i, :, top : top + h, left : left + w] == j).all()
                mixed_any = mixed_any or h * w > 0
    assert mixed_any


def test_cutmix_probability_and_gradients():
    x, targets = constant_batch(), torch.eye(8)
    mx, mt = cutmix(x, targets, p=0.0, generator=gen(0))
    assert mx is x and mt is targets
    outcomes = [draw_cutmix(8, (16, 16), p=0.5, generator=gen(s)) is None for s in range(200)]
    assert 60 < sum(outcomes) < 140
    xg = x.clone().requires_grad_(True)
    draw = draw_cutmix(8, (16, 16), p=1.0, generator=gen(3))
    mx, _ = apply_cutmix(xg, targets, draw)
    mx.sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.allclose(
        xg.grad.sum(), torch.tensor(float(x[0].numel() * 8))
    )
    a = cutmix(x, targets, p=1.0, generator=gen(4))
    b = cutmix(x, targets, p=1.0, generator=gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="B, K"):
        cutmix(x, torch.arange(8), p=1.0)
