"""A small device trainer: parameters built at load time by rules, no per-row constants in the graphs."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch

import formats
import runtime
from condenser.export import ExportError, ExportSettings, export_trainer, initial_model
from formats.testing import make_data
from runtime.bundle import MAX_GENERATED_ELEMENTS, TrainerBundle, uniform_params

SHAPE, K, B = (1, 16, 16), 4, 8
SMALL = {"width": 8, "depth": 2}


@pytest.fixture(scope="module")
def seeded() -> tuple[ExportSettings, TrainerBundle]:
    torch.set_num_threads(1)
    s = ExportSettings(arch="convnet", in_shape=SHAPE, num_classes=K, batch_size=B, seed=5, model_kwargs=SMALL,
                       params="seeded")
    return s, TrainerBundle.from_bytes(export_trainer(s).to_bytes())


def test_seeded_bundle_stores_rules_not_arrays(seeded):
    settings, bundle = seeded
    blob = msgpack.unpackb(bundle.to_bytes())
    model = initial_model(settings)
    for (name, p), entry in zip(model.named_parameters(), blob["params"], strict=True):
        module = model.get_submodule(name.rpartition(".")[0])
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert entry == {"uniform": pytest.approx(1 / math.sqrt(module.weight[0].numel()))}, name
        else:  # instance-norm affine parameters: ones and zeros
            assert entry == {"fill": float(p.detach().reshape(-1)[0])}, name
    assert len(bundle.to_bytes()) < len(bundle.train_step) + len(bundle.inference) + 2048


def test_seeded_parameters_are_drawn_from_the_seed(seeded):
    _, bundle = seeded
    again = TrainerBundle.from_bytes(bundle.to_bytes())
    assert again.param_rules == bundle.param_rules
    for name, p, q, rule in zip(bundle.meta.param_names, bundle.params, again.params, bundle.param_rules,
                                strict=True):
        np.testing.assert_array_equal(p, q, err_msg=name)  # every reader builds the same arrays
        if "uniform" in rule:
            assert np.abs(p).max() <= rule["uniform"], name
            assert p.size < 500 or np.abs(p).max() > 0.95 * rule["uniform"], name  # fills the whole range
    other = TrainerBundle.from_bytes(msgpack.packb({**msgpack.unpackb(bundle.to_bytes()),
                                                    "meta": {**bundle.meta.to_dict(), "seed": 6}}))
    assert not np.array_equal(other.params[0], bundle.params[0])


def test_uniform_params_is_one_portable_stream():
    a = uniform_params(3, [(2, 3), (4,)], [0.5, 2.0])
    whole = uniform_params(3, [(10,)], [1.0])[0]
    np.testing.assert_allclose(a[0].reshape(-1), 0.5 * whole[:6], rtol=1e-6)
    np.testing.assert_allclose(a[1], 2.0 * whole[6:], rtol=1e-6)
    words = np.random.PCG64(3).random_raw(1)  # the stream is PCG64's raw words, top 53 bits
    assert whole[0] == np.float32(2 * (int(words[0]) >> 11) / 2**53 - 1)
    big = uniform_params(0, [(200_000,)], [1.0])[0]
    assert abs(big.mean()) < 0.01 and abs(big.var() - 1 / 3) < 0.01


def test_seeded_bundle_trains_both_backends_alike(tmp_path, seeded):
    _, bundle = seeded
    path = tmp_path / "toy.mdc"
    formats.write_mdc(path, make_data(num_classes=K, ipc_max=2, image_shape=SHAPE, views=2,
                                      trainer_bundle=bundle.to_bytes()))
    ds = runtime.load(path)
    kw = dict(epochs=2, lr=0.05, seed=1, init="bundle", threads=1)
    a, b = runtime.train(ds, backend="onnx", **kw), runtime.train(ds, backend="torch", **kw)
    for name in a.params:
        np.testing.assert_allclose(a.params[name], b.params[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["params"].__setitem__(0, {"gauss": 1.0}), "has rule {'gauss': 1.0}; known rules"),
    (lambda d: d["params"].__setitem__(0, {"uniform": -1.0}), "uniform must be a positive finite bound"),
    (lambda d: d["params"].__setitem__(0, {"fill": float("nan")}), "fill must be a finite value"),
    (lambda d: d["meta"].update(seed=None), "'uniform' rule, but meta.seed is nil"),
    (lambda d: (d["meta"]["param_shapes"].__setitem__(0, [1 << 14, 1 << 14]),
                d["params"].__setitem__(0, {"fill": 0.0})), f"more than {MAX_GENERATED_ELEMENTS} elements"),
])
def test_hostile_rules_are_bundle_errors(seeded, edit, message):
    d = msgpack.unpackb(seeded[1].to_bytes())
    edit(d)
    with pytest.raises(runtime.BundleError, match=message.replace("[", r"\[").replace("{", r"\{")):
        TrainerBundle.from_bytes(msgpack.packb(d))


def test_export_param_modes():
    with pytest.raises(ExportError, match="unknown params mode 'raw'"):
        export_trainer(ExportSettings(params="raw"))
    model = initial_model(ExportSettings(in_shape=SHAPE, num_classes=K, model_kwargs=SMALL))
    with pytest.raises(ExportError, match="params='stored'"):
        export_trainer(model, ExportSettings(in_shape=SHAPE, num_classes=K, model_kwargs=SMALL, params="seeded"))


def test_convnet_d3_trainer_is_under_256_kb():
    """The default device trainer (ConvNet-D3, width 128, batch 64, Fashion-MNIST shape) with seeded
    parameters: its graphs hold no per-row constants, its parameters are rules (before: 1.7 MiB)."""
    torch.set_num_threads(1)
    bundle = export_trainer(ExportSettings(params="seeded"))
    size = len(bundle.to_bytes())
    assert size <= 256 * 1024, size
    assert sum(p.size for p in bundle.params) == 308_746
