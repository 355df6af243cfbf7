"""runtime.Model save/load, resume after a kill (bit-identical, onnx and torch), export_onnx."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import formats
import runtime
from condenser.export import ExportSettings, export_trainer
from formats.testing import make_data
from runtime.checkpoint import CheckpointError
from runtime.inference_graph import bake_params
from runtime.onnx_check import check_model

ROOT = Path(__file__).resolve().parents[1]
C, IPC, SHAPE, B = 3, 4, (1, 8, 8), 4
EPOCHS = 4  # 12 records in batches of 4: 3 steps per epoch, 12 in all
RUN = dict(epochs=EPOCHS, lr=0.05, seed=1, init="bundle", threads=1)


class Killed(Exception):
    """Stands for the app being killed: raised from the progress hook after a given step."""


def killer(at_step: int):
    def progress(done: int, total: int) -> None:
        if done == at_step:
            raise Killed
    return progress


@pytest.fixture(scope="module")
def bundle() -> runtime.TrainerBundle:
    torch.set_num_threads(1)
    s = ExportSettings(arch="convnet", in_shape=SHAPE, num_classes=C, batch_size=B, seed=0,
                       model_kwargs={"width": 4, "depth": 2})
    return runtime.TrainerBundle.from_bytes(export_trainer(s).to_bytes())


@pytest.fixture(scope="module")
def mdc(tmp_path_factory, bundle) -> Path:
    path = tmp_path_factory.mktemp("io") / "toy.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=SHAPE, views=2,
                                      trainer_bundle=bundle.to_bytes()))
    return path


@pytest.fixture(scope="module")
def ds(mdc) -> runtime.Dataset:
    return runtime.load(mdc)


def _assert_same_run(a: runtime.Model, b: runtime.Model) -> None:
    assert a.steps == b.steps and a.losses == b.losses
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("every, kill_at, saved_at", [(2, 5, 4), (None, 5, 3)])
def test_killed_run_resumes_bit_identically(tmp_path, ds, backend, every, kill_at, saved_at):
    whole = runtime.train(ds, backend=backend, **RUN)
    path = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        runtime.train(ds, backend=backend, checkpoint=path, checkpoint_every=every, progress=killer(kill_at),
                      **RUN)
    half = runtime.Model.load(path)
    assert half.steps == saved_at and not half.finished and half.backend == backend
    rest = runtime.train(ds, resume=half)  # settings, backend and trainer come from the checkpoint
    _assert_same_run(whole, rest)
    again = runtime.train(ds, backend=backend, checkpoint=path, checkpoint_every=every, **RUN)
    _assert_same_run(whole, again)
    assert runtime.Model.load(path).finished


def test_finished_checkpoint_is_returned_without_training(tmp_path, ds):
    path = tmp_path / "run.ckpt"
    first = runtime.train(ds, checkpoint=path, **RUN)
    calls = []
    second = runtime.train(ds, checkpoint=path, progress=lambda d, t: calls.append((d, t)))
    _assert_same_run(first, second)
    assert calls == [(EPOCHS * 3, EPOCHS * 3)]


def test_resume_refuses_another_run(tmp_path, ds, mdc):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        runtime.train(ds, checkpoint=path, progress=killer(4), **RUN)
    with pytest.raises(CheckpointError, match=r"lr=0\.05, this call asks for lr=0\.1"):
        runtime.train(ds, checkpoint=path, lr=0.1)
    with pytest.raises(CheckpointError, match="backend 'onnx', this call asks for 'torch'"):
        runtime.train(ds, checkpoint=path, backend="torch")
    smaller = runtime.load(mdc, budget=2)
    with pytest.raises(CheckpointError, match="other data"):
        runtime.train(smaller, checkpoint=path)
    with pytest.raises(runtime.ConfigError, match="unknown training setting"):
        runtime.train(ds, checkpoint=path, nonsense=1)
    with pytest.raises(runtime.ConfigError, match="checkpoint_every"):
        runtime.train(ds, checkpoint=path, checkpoint_every=0)


# ------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, ds):
    model = runtime.train(ds, epochs=2, threads=1)
    path = tmp_path / "m.ckpt"
    model.save(path)
    loaded = runtime.Model.load(path)
    _assert_same_run(model, loaded)
    assert loaded.config == model.config and loaded.spec == model.spec
    assert (loaded.mean, loaded.std, loaded.ipc) == (model.mean, model.std, model.ipc)
    np.testing.assert_array_equal(loaded.logits(ds.images), model.logits(ds.images))
    before = model.state()
    for m, n in zip(before.slots[0], loaded.state().slots[0], strict=True):
        np.testing.assert_array_equal(m, n)
    assert any(np.abs(m).sum() > 0 for m in before.slots[0])  # the optimizer state is really kept
    as_torch = runtime.Model.load(path, backend="torch")
    np.testing.assert_allclose(as_torch.logits(ds.images), model.logits(ds.images), atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def _corrupt(path: Path, edit) -> Path:
    d = msgpack.unpackb(path.read_bytes())
    edit(d)
    out = path.with_name("bad.ckpt")
    out.write_bytes(msgpack.packb(d, use_bin_type=True))
    return out


def test_malformed_checkpoints_name_the_problem(tmp_path, ds):
    path = tmp_path / "m.ckpt"
    runtime.train(ds, epochs=1, threads=1).save(path)
    blob = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt: checkpoint: not a valid msgpack"):
        runtime.Model.load(tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        runtime.Model.load(tmp_path / "missing.ckpt")
    cases = [
        (lambda d: d.update(format="other"), "not a 'multisize-model' file"),
        (lambda d: d.update(version=9), "unsupported version 9"),
        (lambda d: d["params"].__setitem__(0, d["params"][0][:-4]), r"params\[0\] does not hold"),
        (lambda d: d["optimizer_state"]["momentum"].__setitem__(
            1, np.full(len(d["optimizer_state"]["momentum"][1]) // 4, np.nan, "<f4").tobytes()),
         r"optimizer_state.momentum\[1\] holds NaN"),
        (lambda d: d["loop"]["rng"].update(bit_generator="MT19937"), "loop.rng must be a PCG64"),
        (lambda d: d["loop"].update(order=np.array([0, 0], "<i8").tobytes()), "loop.order must be a permutation"),
        (lambda d: d["loop"].update(step=-1), "loop.step must be an integer >= 0"),
        (lambda d: d["config"].update(lr=-1.0), "config: lr must be a positive"),
        (lambda d: d["spec"].update(in_shape=[1, 8]), "spec.in_shape must be 3 integers"),
    ]
    for edit, message in cases:
        with pytest.raises(CheckpointError, match=message):
            runtime.Model.load(_corrupt(path, edit))


# ---------------------------------------------------------------------------------------- export


def _run_exported(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"] and [o.name for o in sess.get_outputs()] == ["logits"]
    return sess.run(["logits"], {"x": x})[0]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_export_onnx_bakes_the_trained_parameters(tmp_path, ds, backend):
    model = runtime.train(ds, backend=backend, epochs=2, threads=1)
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    graph = path.read_bytes()
    check_model(graph, "exported")  # the device's own allow-list accepts it
    proto = onnx.load_from_string(graph)
    onnx.checker.check_model(proto, full_check=True)
    assert sorted(i.name for i in proto.graph.initializer) == sorted(f"param:{n}" for n in model.params)
    x = np.ascontiguousarray(ds.images[:B])
    np.testing.assert_allclose(_run_exported(path, x), model.logits(x), atol=1e-5, rtol=1e-5)


def test_export_onnx_needs_a_bundle(tmp_path):
    path = tmp_path / "plain.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=SHAPE, views=0))
    model = runtime.train(runtime.load(path), backend="torch", epochs=1, threads=1, arch_kwargs={"width": 4})
    with pytest.raises(runtime.TrainerError, match="export_onnx"):
        model.export_onnx(tmp_path / "m.onnx")


def test_bake_params_errors(bundle):
    names = bundle.meta.inference_inputs[1:]
    with pytest.raises(runtime.BundleError, match="no graph input named 'param:nope'"):
        bake_params(bundle.inference, ["param:nope"], [np.zeros(1, np.float32)])
    with pytest.raises(runtime.BundleError, match="parameter names"):
        bake_params(bundle.inference, names, [])


def test_checkpoint_and_export_leave_torch_out(tmp_path, mdc):
    code = textwrap.dedent(f"""
        import sys, runtime
        ds = runtime.load({str(mdc)!r})
        p = {str(tmp_path / "a.ckpt")!r}
        m = runtime.train(ds, epochs=2, threads=1, checkpoint=p, checkpoint_every=2)
        runtime.Model.load(p).export_onnx({str(tmp_path / "a.onnx")!r})
        assert "torch" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_version_1_checkpoint_still_loads(tmp_path, ds):
    """A checkpoint written before optimizer slots and buffers (SGD "momenta", spec momentum/weight_decay)."""
    path = tmp_path / "v2.ckpt"
    model = runtime.train(ds, epochs=1, threads=1)
    model.save(path)
    d = msgpack.unpackb(path.read_bytes())
    d["version"], d["momenta"] = 1, d.pop("optimizer_state")["momentum"]
    for key in ("buffers", "buffer_shapes"):
        del d[key]
    opt = d["spec"].pop("optimizer")
    d["spec"].update(momentum=opt["momentum"], weight_decay=opt["weight_decay"])
    for key in ("loss", "buffer_names", "dropout"):
        del d["spec"][key]
    old = tmp_path / "v1.ckpt"
    old.write_bytes(msgpack.packb(d, use_bin_type=True))
    loaded = runtime.Model.load(old)
    assert loaded.spec == model.spec and loaded.steps == model.steps
    for a, b in zip(loaded.state().slots[0], model.state().slots[0], strict=True):
        np.testing.assert_array_equal(a, b)
