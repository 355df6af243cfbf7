"""Trainer export: onnxruntime train steps match eager torch SGD; bundle blob round trip and errors."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import numpy as np
import onnxruntime as ort
import pytest
import torch

from condenser.export import ExportError, ExportSettings, decompositions, export_trainer, initial_model
from condenser.export.decompositions import convolution_backward
from condenser.export.train_step import _to_onnx, _trace
from runtime.bundle import BundleError, SGDConfig, TrainerBundle

B, K, SHAPE = 8, 10, (1, 28, 28)
SGD = SGDConfig(momentum=0.9, weight_decay=5e-4)
ARCHS = {"convnet": {"width": 16}, "resnet-ap10": {"width": 4}}


def _session(model_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=list(ARCHS))
def exported(request):
    torch.set_num_threads(1)
    settings = ExportSettings(arch=request.param, in_shape=SHAPE, num_classes=K, batch_size=B, seed=3,
                              optimizer=SGD, model_kwargs=ARCHS[request.param])
    bundle = TrainerBundle.from_bytes(export_trainer(settings).to_bytes())  # test what a device reads
    return settings, bundle, _session(bundle.train_step), _session(bundle.inference)


def _batches(n: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(batch, *SHAPE, generator=g)
        t = torch.softmax(2 * torch.randn(batch, K, generator=g), -1)
        yield x, t


def _ort_step(sess, bundle, lr, x, t, w, params, moms):
    feed = dict(zip(bundle.meta.train_inputs,
                    [np.array(lr, np.float32), x, t, w, *params, *moms], strict=True))
    out = sess.run(bundle.meta.train_outputs, feed)
    n = len(params)
    return float(out[0]), out[1:1 + n], out[1 + n:]


def _torch_model(settings, bundle):
    model = initial_model(settings)
    for p, init in zip(model.parameters(), bundle.params, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), init)  # seeded init is reproducible
    return model


def _soft_ce(logits, t):
    return -(t * torch.log_softmax(logits, -1)).sum(-1)


def test_ten_steps_match_torch_sgd(exported):
    settings, bundle, train, _ = exported
    model = _torch_model(settings, bundle)
    lrs = [0.05 * (1 - i / 10) for i in range(10)]  # a schedule: lr is a graph input
    opt = torch.optim.SGD(model.parameters(), lr=lrs[0], momentum=SGD.momentum, weight_decay=SGD.weight_decay)
    params, moms = bundle.initial_params(), bundle.initial_momenta()
    w = np.ones(B, np.float32)
    for lr, (x, t) in zip(lrs, _batches(10, B), strict=True):
        loss, params, moms = _ort_step(train, bundle, lr, x.numpy(), t.numpy(), w, params, moms)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        ref = _soft_ce(model(x), t).mean()
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) < 1e-5
    for name, p, q in zip(bundle.meta.param_names, params, model.parameters(), strict=True):
        np.testing.assert_allclose(p, q.detach().numpy(), atol=1e-5, rtol=0, err_msg=name)


def test_partial_batch_equals_smaller_batch(exported):
    settings, bundle, train, _ = exported
    model = _torch_model(settings, bundle)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=SGD.momentum, weight_decay=SGD.weight_decay)
    params, moms = bundle.initial_params(), bundle.initial_momenta()
    real = 5
    for x, t in _batches(3, B, seed=1):
        w = np.array([1.0] * real + [0.0] * (B - real), np.float32)
        x_pad = x.clone()
        x_pad[real:] = 100.0  # padding content must not matter
        loss, params, moms = _ort_step(train, bundle, 0.1, x_pad.numpy(), t.numpy(), w, params, moms)
        opt.zero_grad()
        ref = _soft_ce(model(x[:real]), t[:real]).mean()
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) < 1e-5
    for name, p, q in zip(bundle.meta.param_names, params, model.parameters(), strict=True):
        np.testing.assert_allclose(p, q.detach().numpy(), atol=1e-5, rtol=0, err_msg=name)


def test_sample_weights_weight_the_loss(exported):
    settings, bundle, train, _ = exported
    model = _torch_model(settings, bundle)
    x, t = next(_batches(1, B, seed=2))
    w = np.linspace(0.2, 2.0, B).astype(np.float32)
    loss, _, _ = _ort_step(train, bundle, 0.0, x.numpy(), t.numpy(), w, bundle.initial_params(),
                           bundle.initial_momenta())
    wt = torch.from_numpy(w)
    ref = (wt * _soft_ce(model(x), t)).sum() / wt.sum()
    assert abs(loss - ref.item()) < 1e-5


def test_inference_graph_matches_model(exported):
    settings, bundle, _, infer = exported
    model = _torch_model(settings, bundle)
    x, _ = next(_batches(1, B, seed=4))
    feed = dict(zip(bundle.meta.inference_inputs, [x.numpy(), *bundle.params], strict=True))
    (logits,) = infer.run(bundle.meta.inference_outputs, feed)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-5, rtol=1e-5)


def test_metadata(exported):
    settings, bundle, train, _ = exported
    meta = bundle.meta
    assert (meta.arch, meta.in_shape, meta.num_classes, meta.batch_size) == (settings.arch, SHAPE, K, B)
    assert meta.optimizer == SGD and meta.arch_kwargs == settings.model_kwargs
    assert [i.name for i in train.get_inputs()] == meta.train_inputs
    assert [o.name for o in train.get_outputs()] == meta.train_outputs
    assert [tuple(p.shape) for p in bundle.params] == meta.param_shapes
    assert len(meta.train_inputs) == 4 + 2 * len(meta.param_names)


def test_bundle_round_trip_and_file(tmp_path, exported):
    _, bundle, _, _ = exported
    path = tmp_path / "trainer.msgpack"
    bundle.save(path)
    again = TrainerBundle.load(path)
    assert again.meta == bundle.meta and again.train_step == bundle.train_step
    assert all(np.array_equal(a, b) for a, b in zip(again.params, bundle.params, strict=True))


def test_bundle_errors(exported):
    _, bundle, _, _ = exported
    blob = bundle.to_bytes()
    with pytest.raises(BundleError, match="msgpack"):
        TrainerBundle.from_bytes(blob[: len(blob) // 2])
    with pytest.raises(BundleError, match="multisize-trainer"):
        TrainerBundle.from_bytes(msgpack.packb({"format": "other"}))
    d = msgpack.unpackb(blob)
    d["version"] = 99
    with pytest.raises(BundleError, match="version 99"):
        TrainerBundle.from_bytes(msgpack.packb(d))
    d = msgpack.unpackb(blob)
    d["params"][0] = d["params"][0][:-4]
    with pytest.raises(BundleError, match=bundle.meta.param_names[0]):
        TrainerBundle.from_bytes(msgpack.packb(d))
    d = msgpack.unpackb(blob)
    del d["meta"]["batch_size"]
    with pytest.raises(BundleError, match="batch_size"):
        TrainerBundle.from_bytes(msgpack.packb(d))


@pytest.mark.parametrize("narrow,groups", [(True, 1), (False, 1), (False, 2), (False, 4)],
                         ids=["im2col", "per-offset", "grouped", "depthwise"])
@pytest.mark.parametrize("cfg", [dict(h=9, w=7, k=3, s=1, p=1, d=1), dict(h=8, w=8, k=1, s=2, p=0, d=1),
                                 dict(h=7, w=9, k=3, s=2, p=1, d=1), dict(h=10, w=10, k=3, s=1, p=2, d=2),
                                 dict(h=6, w=5, k=1, s=1, p=1, d=1)],
                         ids=["3x3", "1x1s2", "3x3s2-odd", "dilated", "1x1-padded"])
def test_convolution_backward_decomposition(cfg, narrow, groups, monkeypatch):
    monkeypatch.setattr(decompositions, "NARROW_COLUMNS", 64 if narrow else 0)
    g = torch.Generator().manual_seed(0)
    cin = 4
    x = torch.randn(3, cin, cfg["h"], cfg["w"], generator=g)
    wt = torch.randn(4, cin // groups, cfg["k"], cfg["k"], generator=g)
    args = ([cfg["s"]] * 2, [cfg["p"]] * 2, [cfg["d"]] * 2)
    go = torch.randn_like(torch.ops.aten.convolution(x, wt, None, *args, False, [0, 0], groups))
    for mask in ([True, True, True], [False, True, False]):
        ref = torch.ops.aten.convolution_backward(go, x, wt, [4], *args, False, [0, 0], groups, mask)
        got = convolution_backward(go, x, wt, [4], *args, False, [0, 0], groups, mask)
        for a, b in zip(got, ref, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _assert_onnx_matches_eager(fn, *args, atol=1e-5):
    """Trace fn like the train step, export it with the custom translations, compare onnxruntime to torch."""
    gm = _trace(fn, args)
    ref = gm(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    names_in, names_out = [f"in{i}" for i in range(len(args))], [f"out{i}" for i in range(len(ref))]
    got = _session(_to_onnx(gm, args, names_in, names_out)).run(
        names_out, {n: a.numpy() for n, a in zip(names_in, args, strict=True)})
    for name, a, b in zip(names_out, got, ref, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=atol, rtol=1e-5, err_msg=name)


aten = torch.ops.aten


@pytest.mark.parametrize("groups,affine,offset", [(6, True, 0.0), (6, False, 0.0), (3, True, 0.0), (1, False, 0.0),
                                                  (6, True, 20.0)])
def test_group_norm_translations(groups, affine, offset):
    g = torch.Generator().manual_seed(1)
    n, c, h, w = 3, 6, 5, 7
    x = torch.randn(n, c, h, w, generator=g) * 2 + offset
    dy = torch.randn(n, c, h, w, generator=g)
    gamma, beta = (torch.randn(c, generator=g), torch.randn(c, generator=g)) if affine else (None, None)

    def fwd_bwd(x, dy, *wb):
        wt, bs = wb if wb else (None, None)
        out, mean, rstd = aten.native_group_norm(x, wt, bs, n, c, h * w, groups, 1e-5)
        dx, dw, db = aten.native_group_norm_backward(dy, x, mean, rstd, wt, n, c, h * w, groups, [True] * 3)
        return (out, mean, rstd, dx, dw, db) if affine else (out, mean, rstd, dx)

    _assert_onnx_matches_eager(fwd_bwd, x, dy, *((gamma, beta) if affine else ()), atol=2e-5)


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_threshold_backward_translation(threshold):
    z = torch.relu(torch.randn(4, 5, 6))
    z[0, 0, :3] = torch.tensor([0.0, threshold, 1e-30])
    _assert_onnx_matches_eager(lambda g, z: aten.threshold_backward(g, z, threshold), torch.randn(4, 5, 6), z)


@pytest.mark.parametrize("size,kernel,stride,padding", [(8, 2, 2, 0), (7, 2, 2, 0), (9, 3, 3, 0), (8, 3, 2, 1)],
                         ids=["even", "odd-floor", "3x3", "overlapping-padded"])
def test_avg_pool2d_translations(size, kernel, stride, padding):
    x = torch.randn(2, 3, size, size)
    go = torch.randn_like(aten.avg_pool2d(x, [kernel] * 2, [stride] * 2, [padding] * 2))

    def fwd_bwd(x, go):
        out = aten.avg_pool2d(x, [kernel] * 2, [stride] * 2, [padding] * 2)
        if padding:  # overlapping/padded windows: AveragePool forward, no backward translation
            return out
        return out, aten.avg_pool2d_backward(go, x, [kernel] * 2, [stride] * 2, [0, 0], False, True, None)

    _assert_onnx_matches_eager(fwd_bwd, x, go)


def test_chained_slices_export_as_one_slice():
    import onnx

    x = torch.randn(2, 3, 9, 8)
    fn = lambda x: x[:, :, 1:8:2, 2:] * 2  # noqa: E731
    _assert_onnx_matches_eager(fn, x)
    gm = _trace(fn, (x,))
    ops = [n.op_type for n in onnx.load_from_string(_to_onnx(gm, (x,), ["x"], ["y"])).graph.node]
    assert ops.count("Slice") == 1


@pytest.mark.parametrize("bias,affine", [(True, True), (False, True), (True, False)])
def test_fused_first_layer_matches_conv_and_instance_norm(bias, affine):
    from condenser.export.fusions import narrow_conv_instance_norm, narrow_conv_instance_norm_backward

    g = torch.Generator().manual_seed(2)
    n, c, args = 3, 5, ([2, 1], [1, 0], [1, 1])
    x, w = torch.randn(n, 2, 9, 8, generator=g), torch.randn(c, 2, 3, 3, generator=g)
    b = torch.randn(c, generator=g) if bias else None
    gamma, beta = (torch.randn(c, generator=g), torch.randn(c, generator=g)) if affine else (None, None)
    y = aten.convolution(x, w, b, *args, False, [0, 0], 1)
    hw = y.shape[2] * y.shape[3]
    ref = aten.native_group_norm(y, gamma, beta, n, c, hw, c, 1e-5)
    for a, r in zip(narrow_conv_instance_norm(x, w, b, gamma, beta, *args, 1e-5), ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    dy = torch.randn(y.shape, generator=g)
    gnb = aten.native_group_norm_backward(dy, y, ref[1], ref[2], gamma, n, c, hw, c, [True] * 3)
    cb = aten.convolution_backward(gnb[0], x, w, [c], *args, False, [0, 0], 1, [False, True, bias])
    got = narrow_conv_instance_norm_backward(dy, x, w, b, ref[1], ref[2], gamma, *args)
    for a, r in zip(got, (cb[1], cb[2], gnb[1], gnb[2]), strict=True):
        if r is not None:
            torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pool", [(2, 2), (2, 1)])
def test_fused_first_block_matches_conv_norm_relu_pool(pool):
    from condenser.export.fusions import narrow_conv_block, narrow_conv_block_backward

    g = torch.Generator().manual_seed(3)
    n, c, args = 3, 5, ([1, 1], [1, 1], [1, 1])
    x, w, b = torch.randn(n, 1, 8, 6, generator=g), torch.randn(c, 1, 3, 3, generator=g), torch.randn(c, generator=g)
    gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
    y = aten.convolution(x, w, b, *args, False, [0, 0], 1)
    norm = aten.native_group_norm(y, gamma, beta, n, c, 48, c, 1e-5)
    z = torch.relu(norm[0])
    pooled = aten.avg_pool2d(z, list(pool), list(pool))
    got = narrow_conv_block(x, w, b, gamma, beta, *args, 1e-5, pool)
    for a, r in zip((got[0], got[2], got[3]), (pooled, norm[1], norm[2]), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    gp = torch.randn(pooled.shape, generator=g)
    dy = aten.threshold_backward(aten.avg_pool2d_backward(gp, z, list(pool), list(pool), [0, 0], False, True, None),
                                 z, 0)
    gnb = aten.native_group_norm_backward(dy, y, norm[1], norm[2], gamma, n, c, 48, c, [True] * 3)
    cb = aten.convolution_backward(gnb[0], x, w, [c], *args, False, [0, 0], 1, [False, True, True])
    got = narrow_conv_block_backward(gp, got[1], x, w, b, norm[1], norm[2], gamma, *args, pool)
    for a, r in zip(got, (cb[1], cb[2], gnb[1], gnb[2]), strict=True):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_first_layer_of_convnet_is_fused():
    from torch.fx.experimental.proxy_tensor import make_fx

    from condenser.export.decompositions import first_pass_table
    from condenser.export.fusions import fuse_narrow_conv_instance_norm, narrow_conv_block, narrow_conv_block_backward

    model = initial_model(ExportSettings(arch="convnet", in_shape=SHAPE, num_classes=K, model_kwargs={"width": 8}))
    table = first_pass_table()

    def step(x, *params):
        names = [n for n, _ in model.named_parameters()]
        out = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))
        return torch.autograd.grad(out.sum(), params)

    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    gm = make_fx(step, decomposition_table=table, tracing_mode="fake")(torch.zeros(2, *SHAPE), *params)
    assert fuse_narrow_conv_instance_norm(gm) == 1  # the first conv only: the others read 8 channels x 9 taps
    targets = [n.target for n in gm.graph.nodes]
    assert narrow_conv_block in targets and narrow_conv_block_backward in targets  # the whole first block
    assert targets.count(aten.convolution_backward.default) == 2  # layers 2 and 3 keep theirs


def test_batchnorm_without_running_statistics_is_refused():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.BatchNorm1d(4, momentum=None))
    with pytest.raises(ExportError, match=r"module '2' \(BatchNorm1d\): BatchNorm needs track_running_stats"):
        export_trainer(model, in_shape=(1, 8, 8), num_classes=4, batch_size=4)


def test_bundle_reader_does_not_import_torch():
    code = "import sys, runtime.bundle; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_writes_a_loadable_bundle(tmp_path):
    from typer.testing import CliRunner

    from condenser.cli import app

    out = tmp_path / "trainer.msgpack"
    result = CliRunner().invoke(app, ["export-trainer", "--arch", "convnet", "--dataset", "fashion-mnist",
                                      "--batch-size", "4", "--width", "4", "--depth", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = TrainerBundle.load(out).meta
    assert (meta.arch, meta.in_shape, meta.batch_size, meta.dataset) == ("convnet", (1, 28, 28), 4,
                                                                         "fashion-mnist")
    assert meta.arch_kwargs == {"width": 4, "depth": 2} and meta.mean is not None


def test_cli_reports_unknown_arch(tmp_path):
    from typer.testing import CliRunner

    from condenser.cli import app

    result = CliRunner().invoke(app, ["export-trainer", "--arch", "vgg", "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "unknown model 'vgg'" in result.output
