"""Users' own models as device trainers (issue 18): BatchNorm state, residual GELU/LayerNorm with dropout,
each optimizer and loss against torch, unsupported layers named, BN resume and export."""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import formats
import runtime
from condenser.export import (
    AdamWConfig,
    ExportError,
    ExportSettings,
    LossConfig,
    SGDConfig,
    UnsupportedOpError,
    export_trainer,
    initial_model,
)
from condenser.export.train_step import adamw_update, sgd_update
from formats.testing import make_data
from runtime.backends.onnx_backend import OnnxTrainer
from runtime.user_models import FactoryError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the factories below import as examples.user_models
    sys.path.insert(0, str(ROOT))

C, IPC, SHAPE, B = 3, 3, (1, 8, 8), 4  # 9 records in batches of 4: the third batch has 1 real row
BN_CNN = "examples.user_models:bn_cnn"
RUN = dict(epochs=2, lr=0.05, seed=1, init="bundle", threads=1)


def _settings(arch: str, **kw) -> ExportSettings:
    kwargs = kw.pop("model_kwargs", {"width": 4, "depth": 2})
    return ExportSettings(arch=arch, in_shape=SHAPE, num_classes=C, batch_size=B, seed=2, model_kwargs=kwargs, **kw)


@pytest.fixture(scope="module")
def bn_bundle() -> runtime.TrainerBundle:
    torch.set_num_threads(1)
    return runtime.TrainerBundle.from_bytes(export_trainer(_settings(BN_CNN)).to_bytes())


@pytest.fixture(scope="module")
def ds(tmp_path_factory, bn_bundle) -> runtime.Dataset:
    path = tmp_path_factory.mktemp("user") / "toy.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=SHAPE, views=2,
                                      trainer_bundle=bn_bundle.to_bytes()))
    return runtime.load(path)


def _assert_close_runs(a: runtime.Model, b: runtime.Model, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    for name in a.params:
        np.testing.assert_allclose(a.params[name], b.params[name], atol=atol, rtol=0, err_msg=name)
    for name in a.buffers:
        np.testing.assert_allclose(a.buffers[name], b.buffers[name], atol=atol, rtol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------------- BatchNorm


def test_bundle_records_the_model_spec_and_state_tensors(bn_bundle):
    m = bn_bundle.meta
    assert (m.arch, m.arch_kwargs, m.in_shape, m.num_classes) == (BN_CNN, {"width": 4, "depth": 2}, SHAPE, C)
    assert m.buffer_names == ["1.running_mean", "1.running_var", "5.running_mean", "5.running_var"]
    assert m.buffer_shapes == [(4,)] * 4 and not set(m.buffer_names) & set(m.param_names)
    assert m.train_outputs[-4:] == [f"new_buffer:{b}" for b in m.buffer_names]
    assert m.inference_inputs[-4:] == [f"buffer:{b}" for b in m.buffer_names]
    assert [b.tolist() for b in bn_bundle.buffers] == [[0.0] * 4, [1.0] * 4] * 2


def test_batchnorm_model_trains_alike_with_onnx_and_torch(ds):
    a, b = runtime.train(ds, backend="onnx", **RUN), runtime.train(ds, backend="torch", **RUN)
    _assert_close_runs(a, b)
    moved = a.buffers["1.running_mean"]
    assert np.abs(moved).max() > 1e-3  # the running statistics really are trainer state


def test_batchnorm_statistics_ignore_padding_rows(bn_bundle):
    """One real row and three padding rows give the step of that row alone, whatever the padding holds."""
    model = initial_model(_settings(BN_CNN)).train()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(B, *SHAPE, generator=g), torch.softmax(torch.randn(B, C, generator=g), -1)
    w = np.array([1, 1, 0, 0], np.float32)
    x_pad = x.clone()
    x_pad[2:] = 50.0
    tr = OnnxTrainer(bn_bundle, threads=1)
    loss = tr.step(0.1, x_pad.numpy(), t.numpy(), w)
    ref = -(t[:2] * torch.log_softmax(model(x[:2]), -1)).sum(-1).mean()
    assert abs(loss - ref.item()) < 1e-5
    np.testing.assert_allclose(tr.get_buffers()[0], model[1].running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(tr.get_buffers()[1], model[1].running_var.numpy(), atol=1e-5)


# ------------------------------------------------------------------------ residual, dropout


def test_residual_gelu_layernorm_dropout_model_trains_alike(tmp_path):
    s = _settings("examples.user_models:residual_mlp", model_kwargs={"width": 8, "dropout": 0.5})
    bundle = export_trainer(s)
    assert [(d.module, d.p, d.shape) for d in bundle.meta.dropout] == [("2.body.3", 0.5, (8,)), ("3.body.3", 0.5, (8,))]
    path = tmp_path / "res.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=SHAPE, views=2,
                                      trainer_bundle=bundle.to_bytes()))
    data = runtime.load(path)
    a, b = runtime.train(data, backend="onnx", **RUN), runtime.train(data, backend="torch", **RUN)
    _assert_close_runs(a, b)
    other = runtime.train(data, backend="onnx", **{**RUN, "seed": 2})
    assert other.losses != a.losses  # the dropout noise follows the seed


# ------------------------------------------------------------------------ optimizers, losses

RESIDUAL = ("examples.user_models:residual_mlp", {"width": 8, "dropout": 0.0})
# AdamW runs on the residual net: a conv or linear bias right before BatchNorm has a zero gradient, which
# AdamW's g / sqrt(v) turns into rounding noise of size lr, different on every backend.
OPTIMIZERS = {
    "sgd-momentum": ((BN_CNN, None), SGDConfig(momentum=0.9, weight_decay=5e-4), LossConfig()),
    "sgd-nesterov": ((BN_CNN, None), SGDConfig(momentum=0.8, weight_decay=1e-3, nesterov=True),
                     LossConfig("hard_cross_entropy")),
    "adamw": (RESIDUAL, AdamWConfig(weight_decay=0.05, betas=(0.8, 0.99), eps=1e-3),
              LossConfig("kl_divergence", temperature=4.0)),
}


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def optimized(request, bn_bundle):
    (arch, kwargs), opt, loss = OPTIMIZERS[request.param]
    s = _settings(arch, optimizer=opt, loss=loss, **({"model_kwargs": kwargs} if kwargs else {}))
    bundle = bn_bundle if request.param == "sgd-momentum" else export_trainer(s)
    return s, bundle


def _torch_optimizer(opt, params):
    if isinstance(opt, AdamWConfig):
        return torch.optim.AdamW(params, lr=0.01, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    return torch.optim.SGD(params, lr=0.01, momentum=opt.momentum, weight_decay=opt.weight_decay,
                           nesterov=opt.nesterov)


def _torch_loss(loss: LossConfig, logits, t, w):
    """Each loss in its textbook torch form (not runtime/torch_step.py)."""
    if loss.name == "kl_divergence":
        T = loss.temperature
        per = F.kl_div(F.log_softmax(logits / T, -1), t, reduction="none").sum(-1) * T * T
    elif loss.name == "hard_cross_entropy":
        per = F.cross_entropy(logits, t if t.dtype == torch.int64 else t.argmax(-1), reduction="none")
    else:
        per = -(t * F.log_softmax(logits, -1)).sum(-1)
    return (per * w).sum() / w.sum()


def test_each_optimizer_matches_torch_optim_for_three_steps(optimized):
    s, bundle = optimized
    model = initial_model(s).train()
    opt = _torch_optimizer(s.optimizer, model.parameters())
    tr = OnnxTrainer(bundle, threads=1)
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    for step, lr in enumerate([0.05, 0.03, 0.02]):
        x, t = torch.randn(B, *SHAPE, generator=g), torch.softmax(3 * torch.randn(B, C, generator=g), -1)
        loss = tr.step(lr, x.numpy(), t.numpy(), w.numpy(), step=step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        ref = _torch_loss(s.loss, model(x), t, w)
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) < 1e-5, step
    for name, p, q in zip(bundle.meta.param_names, tr.get_params(), model.parameters(), strict=True):
        np.testing.assert_allclose(p, q.detach().numpy(), atol=1e-5, rtol=0, err_msg=name)
    buffers = dict(model.named_buffers())
    for name, b in zip(bundle.meta.buffer_names, tr.get_buffers(), strict=True):
        np.testing.assert_allclose(b, buffers[name].numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("opt", [cfg for _, cfg, _ in OPTIMIZERS.values()], ids=list(OPTIMIZERS))
def test_the_graphs_update_rules_are_torch_optims_in_float64(opt):
    """The traced update (condenser/export/train_step.py) against torch.optim on the same gradients, in float64,
    with gradients spanning six orders of magnitude: equal to rounding."""
    g = torch.Generator().manual_seed(5)
    p = torch.randn(20, dtype=torch.float64, generator=g)
    ref = p.clone().requires_grad_()
    torch_opt = _torch_optimizer(opt, [ref])
    slots = [[torch.zeros_like(p)] for _ in opt.slots]
    for step, lr in enumerate([0.05, 0.03, 0.02]):
        grad = torch.randn(20, dtype=torch.float64, generator=g) * 10.0 ** (-3 * step)
        lr_t = torch.tensor(lr, dtype=torch.float64)
        if isinstance(opt, AdamWConfig):
            step_t = torch.tensor(step + 1.0, dtype=torch.float64)
            (p,), m, v = adamw_update(opt, [p], [grad], slots[0], slots[1], lr_t, step_t)
            slots = [m, v]
        else:
            (p,), bufs = sgd_update(opt, [p], [grad], slots[0], lr_t)
            slots = [bufs]
        for group in torch_opt.param_groups:
            group["lr"] = lr
        ref.grad = grad.clone()
        torch_opt.step()
        torch.testing.assert_close(p, ref.detach(), atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("loss", [LossConfig(), LossConfig("kl_divergence", temperature=2.5),
                                  LossConfig("hard_cross_entropy"), LossConfig("hard_cross_entropy", targets="index")],
                         ids=["soft", "kl", "hard-probs", "hard-index"])
def test_each_loss_is_its_torch_formula(loss):
    s = _settings("examples.user_models:bn_mlp", model_kwargs={"width": 6}, loss=loss)
    bundle = export_trainer(s)
    model = initial_model(s).train()
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(B, *SHAPE, generator=g), torch.softmax(2 * torch.randn(B, C, generator=g), -1)
    w = torch.tensor([0.5, 1.0, 1.5, 2.0])
    feeds = dict(zip(bundle.meta.io.params, bundle.params, strict=True))
    feeds.update(zip(bundle.meta.io.slots[0], bundle.initial_momenta(), strict=True))
    feeds.update(zip(bundle.meta.io.buffers, bundle.buffers, strict=True))
    target = t.argmax(-1) if loss.targets == "index" else t
    feeds.update(lr=np.array(0.0, np.float32), x=x.numpy(), targets=target.numpy(), weights=w.numpy())
    sess = ort.InferenceSession(bundle.train_step, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["loss"], feeds)
    assert abs(float(got) - _torch_loss(loss, model(x), target, w).item()) < 1e-5


# ------------------------------------------------------------------------------ refusals


class _Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


@pytest.mark.parametrize("model, error, message", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 3), _Cumsum()), UnsupportedOpError,
     r"op aten\.cumsum\.default in module '2' \(_Cumsum\) is not supported"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.PReLU(), nn.Linear(8, 3)), ExportError,
     r"module '2' \(PReLU\) is not supported"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout2d(0.5), nn.Flatten(), nn.Linear(72, 3)), ExportError,
     r"module '1' \(Dropout2d\) is not supported by the train-step export; use nn.Dropout"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(128, 3)),
     ExportError, r"module '0' \(Conv2d\): padding_mode='reflect' is not supported"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), ExportError, r"to \(5,\) per sample, not 3 logits"),
], ids=["op", "module", "dropout2d", "padding-mode", "num-classes"])
def test_unsupported_layers_and_ops_are_named(model, error, message):
    with pytest.raises(error, match=message) as info:
        export_trainer(model, in_shape=SHAPE, num_classes=C, batch_size=B)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------- resume, export


class Killed(Exception):
    """Stands for the app being killed after a given step."""


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_batchnorm_run_resumes_bit_identically(tmp_path, ds, backend):
    run = dict(RUN, epochs=3)
    whole = runtime.train(ds, backend=backend, **run)
    path = tmp_path / "bn.ckpt"

    def kill(done, total):
        if done == 5:
            raise Killed

    with pytest.raises(Killed):
        runtime.train(ds, backend=backend, checkpoint=path, checkpoint_every=2, progress=kill, **run)
    saved = msgpack.unpackb(path.read_bytes())
    assert saved["spec"]["buffer_names"] == list(whole.buffers) and len(saved["buffers"]) == 4
    rest = runtime.train(ds, resume=runtime.Model.load(path))
    assert rest.losses == whole.losses
    for name in whole.params:
        np.testing.assert_array_equal(rest.params[name], whole.params[name], err_msg=name)
    for name in whole.buffers:
        np.testing.assert_array_equal(rest.buffers[name], whole.buffers[name], err_msg=name)


def test_export_onnx_of_a_batchnorm_model_equals_the_torch_module_in_eval_mode(tmp_path, ds):
    trained = runtime.train(ds, backend="onnx", **RUN)
    path = tmp_path / "bn.onnx"
    trained.export_onnx(path)
    module = initial_model(_settings(BN_CNN))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in {**trained.params, **trained.buffers}.items()},
                           strict=False)
    module.eval()
    x = np.ascontiguousarray(ds.images[:B], dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"x": x})
    with torch.no_grad():
        np.testing.assert_allclose(logits, module(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-5)
    assert np.abs(trained.buffers["1.running_var"] - 1).max() > 1e-3  # eval used the trained statistics


# ------------------------------------------------------------------ the torch backend's factory


def test_torch_backend_names_a_factory_it_cannot_import(ds, bn_bundle):
    blob = msgpack.unpackb(bn_bundle.to_bytes())
    blob["meta"]["arch"] = "not_installed_pkg.nets:bn_cnn"
    other = runtime.TrainerBundle.from_bytes(msgpack.packb(blob, use_bin_type=True))
    with pytest.raises(FactoryError, match=r"cannot import model factory 'not_installed_pkg.nets:bn_cnn'"):
        runtime.train(ds, backend="torch", trainer=other, **RUN)


def test_a_module_instance_trains_with_onnx_and_torch_says_why_not(ds):
    bundle = export_trainer(initial_model(_settings(BN_CNN)), in_shape=SHAPE, num_classes=C, batch_size=B)
    assert bundle.meta.arch == "Sequential"
    assert np.isfinite(runtime.train(ds, backend="onnx", trainer=bundle, **RUN).losses).all()
    with pytest.raises(runtime.TrainerError, match="exported from a module instance"):
        runtime.train(ds, backend="torch", trainer=bundle, **RUN)


def test_cli_exports_a_factory_with_optimizer_and_loss(tmp_path):
    from typer.testing import CliRunner

    from condenser.cli import app

    out = tmp_path / "t.msgpack"
    r = CliRunner().invoke(app, ["export-trainer", "--model", BN_CNN, "--model-kwarg", "width=4", "--model-kwarg",
                                 "depth=2", "--batch-size", "4", "--optimizer", "adamw", "--loss", "kl_divergence",
                                 "--temperature", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = runtime.TrainerBundle.load(out).meta
    assert (m.arch, m.arch_kwargs, m.in_shape, m.num_classes) == (BN_CNN, {"width": 4, "depth": 2}, (1, 28, 28), 10)
    assert m.optimizer == AdamWConfig(weight_decay=0.01) and m.loss == LossConfig("kl_divergence", temperature=2.0)
    assert "4 state buffers, adamw + kl_divergence" in r.output
