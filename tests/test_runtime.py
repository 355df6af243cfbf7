"""Device runtime: torch-free import and training, backend parity, budgets, view replay, CLI."""

from __future__ import annotations

import gzip
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import formats
import runtime
from condenser.export import ExportSettings, export_trainer
from runtime.backends import ModelSpec
from runtime.backends.onnx_backend import OnnxTrainer
from runtime.backends.torch_backend import TorchTrainer
from runtime.budget import MB, Budget, FileFacts, choose_ipc
from runtime.calibrate import Calibration
from runtime.cli import main as cli_main
from runtime.cli import parse_budget
from runtime.config import TrainConfig, learning_rate
from runtime.dataset import decode_targets
from runtime.views import apply_views

ROOT = Path(__file__).resolve().parents[1]
C, IPC_MAX, V, K_SHAPE, B = 4, 4, 3, (1, 16, 16), 8
WIDTH = 8


def random_views(rng: np.random.Generator, n: int, num_classes: int, v: int, hw: tuple[int, int],
                 mix_p: float = 0.5) -> dict[str, np.ndarray]:
    """Whole-pixel crops, flips and CutMix partners from blocks <= the record's own block."""
    h, w = hw
    ch = rng.integers(1, h + 1, (n, v))
    cw = rng.integers(1, w + 1, (n, v))
    crop = np.stack([rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1), ch, cw], -1).astype(np.float32)
    pool = (np.arange(n) // num_classes + 1) * num_classes
    partner = np.floor(rng.random((n, v)) * pool[:, None]).astype(np.int32)
    partner = np.where(rng.random((n, v)) < mix_p, partner, -1).astype(np.int32)
    bh = rng.integers(0, h + 1, (n, v))
    bw = rng.integers(0, w + 1, (n, v))
    box = np.stack([rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1), bh, bw], -1).astype(np.float32)
    box = np.where(partner[..., None] >= 0, box, 0).astype(np.float32)
    lam = (1 - box[..., 2] * box[..., 3] / (h * w)).astype(np.float32)
    return {"crop": crop, "flip": rng.random((n, v)) < 0.5, "mix_partner": partner, "mix_box": box,
            "mix_lam": lam}


@pytest.fixture(scope="module")
def bundle() -> runtime.TrainerBundle:
    torch.set_num_threads(1)
    s = ExportSettings(arch="convnet", in_shape=K_SHAPE, num_classes=C, batch_size=B, seed=0,
                       model_kwargs={"width": WIDTH})
    return runtime.TrainerBundle.from_bytes(export_trainer(s).to_bytes())


def _write(path: Path, bundle_bytes: bytes | None, views: bool = True, label_kind: str = "probs") -> Path:
    rng = np.random.default_rng(0)
    n = IPC_MAX * C
    v = None
    if views:
        t = rng.random((n, V, C)).astype(np.float32)
        t = t / t.sum(-1, keepdims=True) if label_kind == "probs" else 3 * t
        v = formats.Views(targets=t, **random_views(rng, n, C, V, K_SHAPE[1:]))
    data = formats.MDCData(
        dataset="toy", class_names=[f"c{i}" for i in range(C)], image_shape=K_SHAPE,
        images=rng.standard_normal((n, *K_SHAPE)).astype(np.float32), labels=np.tile(np.arange(C), IPC_MAX),
        mean=(0.5,), std=(0.25,), pixel_encoding="float32", views=v, codec="dense-f32",
        label_kind=label_kind, temperature=2.0, trainer_bundle=bundle_bytes)
    formats.write_mdc(path, data)
    return path


@pytest.fixture(scope="module")
def mdc(tmp_path_factory, bundle) -> Path:
    return _write(tmp_path_factory.mktemp("rt") / "toy.mdc", bundle.to_bytes())


@pytest.fixture(scope="module")
def test_npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("rt") / "test.npz"
    np.savez(path, x=rng.integers(0, 256, (20, *K_SHAPE[1:]), dtype=np.uint8), y=rng.integers(0, C, 20))
    return path


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------------------------- torch-free


def test_import_runtime_leaves_torch_out():
    r = _run("import sys, runtime, runtime.views, runtime.cli\n"
             "assert 'torch' not in sys.modules\nprint('ok')")
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_onnx_training_and_cli_leave_torch_out(mdc, test_npz):
    r = _run(f"""
        import sys, numpy as np, runtime
        from runtime.cli import main
        ds = runtime.load({str(mdc)!r}, budget=2)
        model = runtime.train(ds, backend="onnx", epochs=2, threads=1)
        acc = runtime.evaluate(model, np.zeros((5, 1, 16, 16), np.float32), np.zeros(5, int))
        assert 0.0 <= acc <= 1.0
        assert main(["train", {str(mdc)!r}, "--budget", "2", "--backend", "onnx", "--epochs", "1",
                     "--test-data", {str(test_npz)!r}, "--threads", "1"]) == 0
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert "accuracy:" in r.stdout and r.stdout.strip().endswith("ok")


# ---------------------------------------------------------------------------------------- parity


def test_onnx_and_torch_backends_agree_after_10_steps(mdc, bundle):
    ds = runtime.load(mdc, budget=3)  # 12 records, batch 8: every second batch is partial (padding)
    onnx_tr = OnnxTrainer(bundle, params=bundle.initial_params(), threads=1)
    torch_tr = TorchTrainer(ModelSpec.from_bundle(bundle), params=bundle.initial_params(), threads=1)
    cfg = TrainConfig(epochs=5, lr=0.05, schedule="cosine")
    rng = np.random.default_rng(0)
    batches = [b for _ in range(5) for b in ds.batches(B, labels="soft", rng=rng)][:10]
    assert any(b.count < B for b in batches)
    for step, b in enumerate(batches):
        lr = learning_rate(cfg, step, 2)
        l1 = onnx_tr.step(lr, b.x, b.targets, b.weights)
        l2 = torch_tr.step(lr, b.x, b.targets, b.weights)
        assert abs(l1 - l2) < 1e-5
    for p, q in zip(onnx_tr.get_params(), torch_tr.get_params(), strict=True):
        np.testing.assert_allclose(p, q, atol=1e-5, rtol=0)
    x = ds.images[:5]
    np.testing.assert_allclose(onnx_tr.logits(x), torch_tr.logits(x), atol=1e-4)


def test_train_api_same_start_same_result_on_both_backends(mdc):
    ds = runtime.load(mdc, budget=2)
    kw = dict(epochs=3, lr=0.02, schedule="multistep", seed=5, init="bundle", threads=1)
    a = runtime.train(ds, backend="onnx", **kw)
    b = runtime.train(ds, backend="torch", **kw)
    assert a.steps == b.steps == 3 * math.ceil(len(ds) / B)
    for name in a.params:
        np.testing.assert_allclose(a.params[name], b.params[name], atol=1e-5, rtol=0)
    assert runtime.evaluate(a, ds.images, ds.labels) == runtime.evaluate(b, ds.images, ds.labels)


def test_seeded_init_differs_per_seed_and_learns(mdc):
    ds = runtime.load(mdc, budget=IPC_MAX)
    m0 = runtime.train(ds, epochs=1, seed=0, threads=1)
    m1 = runtime.train(ds, epochs=1, seed=1, threads=1)
    w0, w1 = m0.params["body.0.weight"], m1.params["body.0.weight"]
    assert not np.allclose(w0, w1)
    m = runtime.train(ds, epochs=40, lr=0.05, labels="hard", schedule="constant", seed=0, threads=1)
    assert m.losses[-1] < m.losses[0]
    assert runtime.evaluate(m, ds.images, ds.labels) >= 0.75  # memorises 16 training images


# --------------------------------------------------------------------------------------- budgets


def test_int_budget_reads_that_prefix(mdc):
    ds = runtime.load(mdc, budget=2)
    with formats.open_mdc(mdc) as r:
        ref = r.read(2)
    assert (ds.ipc, len(ds), ds.num_classes, ds.class_names) == (2, 2 * C, C, [f"c{i}" for i in range(C)])
    np.testing.assert_array_equal(ds.images, ref.images)
    np.testing.assert_array_equal(ds.labels, np.tile(np.arange(C), 2))
    assert ds.soft_labels.shape == (2 * C, V, C)
    np.testing.assert_allclose(ds.soft_labels.sum(-1), 1.0, atol=1e-6)
    assert runtime.load(mdc).ipc == IPC_MAX


def _expected_seconds_ipc(seconds: float, step_s: float, epochs: int) -> int:
    best = 0
    for k in range(1, IPC_MAX + 1):
        if epochs * math.ceil(k * C / B) * step_s <= seconds:
            best = k
    return best


@pytest.mark.parametrize("seconds", [1.0, 1.5, 2.0, 100.0])
def test_seconds_budget_picks_documented_prefix(mdc, seconds):
    # steps per size with B=8, C=4: IPC-1,2 -> 1 step/epoch, IPC-3,4 -> 2; 10 epochs x 0.1 s per step
    ds = runtime.load(mdc, budget=Budget(seconds=seconds, step_seconds=0.1), epochs=10)
    assert ds.ipc == _expected_seconds_ipc(seconds, 0.1, 10) == {1.0: 2, 1.5: 2, 2.0: 4, 100.0: 4}[seconds]
    assert ds.budget["step_seconds"] == 0.1


def test_seconds_budget_uses_the_calibration(mdc, monkeypatch):
    calls = []

    def fake(make_trainer, batch, shape, k, views, steps=3, seed=0):
        calls.append((batch, shape, k, views))
        tr = make_trainer()  # the trainer training will use is built (onnx session from the bundle)
        assert tr.backend == "onnx"
        return Calibration(step_seconds=0.25, trainer_bytes=0)

    monkeypatch.setattr("runtime.loader.calibrate", fake)
    ds = runtime.load(mdc, budget=Budget(seconds=4.0), epochs=10)
    assert calls == [(B, K_SHAPE, C, True)]
    assert ds.ipc == _expected_seconds_ipc(4.0, 0.25, 10) == 2


def test_real_calibration_runs(mdc):
    ds = runtime.load(mdc, budget=Budget(seconds=1e6, memory_mb=1e6), epochs=1, threads=1,
                      calibration_steps=1)
    assert ds.ipc == IPC_MAX
    assert ds.budget["step_seconds"] > 0 and ds.budget["trainer_bytes"] >= 0


def test_memory_budget_picks_documented_prefix(mdc):
    with formats.open_mdc(mdc) as r:
        facts = FileFacts(IPC_MAX, IPC_MAX, C, K_SHAPE, V, r.spec.block_stride)
        for k in range(1, IPC_MAX + 1):  # record_bytes agrees with the reader's decoded size
            assert k * C * facts.record_bytes == r.decoded_nbytes(k)
    trainer_mb = 1.0
    need = [facts.prefix_bytes(k) + trainer_mb * MB for k in range(1, IPC_MAX + 1)]
    for k in range(1, IPC_MAX + 1):
        limit = need[k - 1] / MB
        assert runtime.load(mdc, budget=Budget(memory_mb=limit, trainer_mb=trainer_mb)).ipc == k
        if k > 1:
            limit = (need[k - 1] - 1) / MB
            assert runtime.load(mdc, budget=Budget(memory_mb=limit, trainer_mb=trainer_mb)).ipc == k - 1


def test_both_limits_take_the_smaller_prefix():
    facts = FileFacts(IPC_MAX, IPC_MAX, C, K_SHAPE, V, 4096)
    k, report = choose_ipc(Budget(seconds=100, memory_mb=(facts.prefix_bytes(1) + 10) / MB, step_seconds=0.01,
                                  trainer_mb=0), facts, epochs=1, batch_size=B)
    assert k == 1 and report["per_ipc"][0]["bytes"] == facts.prefix_bytes(1)


@pytest.mark.parametrize("bad", ["3", 3.0, True, [3]])
def test_bad_budget_types_raise(mdc, bad):
    with pytest.raises(runtime.BudgetError) as exc:
        runtime.load(mdc, budget=bad)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("kwargs", [dict(seconds=-1), dict(seconds=0), dict(memory_mb=float("nan")),
                                    dict(seconds=float("inf")), dict(seconds=1, step_seconds=0),
                                    dict(memory_mb=1, trainer_mb=-1), dict(seconds="10")])
def test_bad_budget_values_raise(kwargs):
    with pytest.raises(runtime.BudgetError, match="seconds=... or memory_mb"):
        Budget()
    with pytest.raises(runtime.BudgetError):
        Budget(**kwargs)


@pytest.mark.parametrize("k", [0, -1, IPC_MAX + 1])
def test_out_of_range_int_budget_is_the_formats_budget_error(mdc, k):
    with pytest.raises(formats.BudgetError) as exc:
        runtime.load(mdc, budget=k)
    assert isinstance(exc.value, ValueError) and str(k) in str(exc.value)


def test_budget_that_fits_nothing_raises(mdc):
    with pytest.raises(runtime.BudgetError, match="IPC-1 needs"):
        runtime.load(mdc, budget=Budget(seconds=0.5, step_seconds=0.1), epochs=10)
    with pytest.raises(runtime.BudgetError, match="MiB"):
        runtime.load(mdc, budget=Budget(memory_mb=0.01, trainer_mb=0))


def test_cut_file_budgets(mdc, tmp_path):
    with formats.open_mdc(mdc) as r:
        cut_at = r.prefix_nbytes(2)
    cut = tmp_path / "cut.mdc"
    cut.write_bytes(mdc.read_bytes()[:cut_at])
    assert runtime.load(cut).ipc == 2
    assert runtime.load(cut, budget=Budget(seconds=1e6, step_seconds=1e-3)).ipc == 2
    with pytest.raises(formats.TruncatedError):
        runtime.load(cut, budget=3)


def test_parse_cli_budget():
    assert parse_budget("3") == 3
    assert parse_budget("90s") == Budget(seconds=90.0)
    assert parse_budget("2m") == Budget(seconds=120.0)
    assert parse_budget("256MB") == Budget(memory_mb=256.0)
    assert parse_budget("1gb") == Budget(memory_mb=1024.0)
    for bad in ("", "3x", "-1s", "0s"):
        with pytest.raises(runtime.BudgetError):
            parse_budget(bad)


# ----------------------------------------------------------------------------------------- views


def test_views_numpy_matches_torch_twin():
    from runtime.torch_views import apply_views as torch_apply

    rng = np.random.default_rng(0)
    n, hw = 12, (13, 17)
    images = rng.standard_normal((n, 3, *hw)).astype(np.float32)
    p = {k: a.reshape(n * 8, *a.shape[2:]) for k, a in random_views(rng, n, 3, 8, hw, mix_p=0.5).items()}
    records = np.repeat(np.arange(n), 8)
    a = apply_views(images, records, p["crop"], p["flip"], p["mix_partner"], p["mix_box"])
    b = torch_apply(torch.from_numpy(images), records, p["crop"], p["flip"], p["mix_partner"], p["mix_box"])
    assert (p["mix_partner"] >= 0).any() and p["flip"].any()
    np.testing.assert_allclose(a, b.numpy(), atol=1e-5, rtol=0)


def test_view_semantics():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    full = np.array([[0, 0, 6, 6]], np.float32)
    none = np.zeros((1, 4), np.float32)
    same = apply_views(img, [0], full, [False], [-1], none)
    np.testing.assert_array_equal(same[0], img[0])  # identity crop is exact
    flipped = apply_views(img, [0], full, [True], [-1], none)
    np.testing.assert_array_equal(flipped[0], img[0, :, :, ::-1])
    mixed = apply_views(img, [0], full, [True], [1], np.array([[1, 2, 3, 2]], np.float32))
    expect = img[0, :, :, ::-1].copy()
    expect[:, 1:4, 2:4] = img[1, :, :, ::-1][:, 1:4, 2:4]  # partner under the same flip
    np.testing.assert_array_equal(mixed[0], expect)
    one = apply_views(img, [0], np.array([[2, 3, 1, 1]], np.float32), [False], [-1], none)
    np.testing.assert_array_equal(one[0], np.full((1, 6, 6), img[0, 0, 2, 3]))  # 1x1 crop -> constant


@pytest.mark.parametrize("crop", [[0.5, 0, 4, 4], [0, 0, 7, 6], [-1, 0, 3, 3], [0, 0, 0, 6]])
def test_bad_view_boxes_raise(crop):
    img = np.zeros((1, 1, 6, 6), np.float32)
    with pytest.raises(runtime.ViewError):
        apply_views(img, [0], np.array([crop], np.float32), [False], [-1], np.zeros((1, 4)))


def test_bad_partner_raises():
    img = np.zeros((2, 1, 6, 6), np.float32)
    with pytest.raises(runtime.ViewError):
        apply_views(img, [0], np.array([[0, 0, 6, 6]], np.float32), [False], [2], np.zeros((1, 4)))


# --------------------------------------------------------------------------------- dataset/batches


def test_batches_replay_views_and_pad(mdc):
    ds = runtime.load(mdc, budget=3)
    batches = list(ds.batches(B, labels="soft", rng=0))
    assert [b.count for b in batches] == [8, 4]
    last = batches[-1]
    np.testing.assert_array_equal(last.weights, [1] * 4 + [0] * 4)
    np.testing.assert_array_equal(last.x[4:], 0)
    first = batches[0]
    v, r, j = ds.views, first.records, first.view_index
    expect = apply_views(ds.images, r, v.crop[r, j], v.flip[r, j], v.mix_partner[r, j], v.mix_box[r, j])
    np.testing.assert_array_equal(first.x, expect)
    np.testing.assert_allclose(first.targets, ds.soft_labels[first.records, first.view_index])
    hard = next(ds.batches(B, labels="hard", rng=0))
    np.testing.assert_array_equal(hard.targets.argmax(1), ds.labels[hard.records])
    np.testing.assert_array_equal(hard.targets.sum(1), 1)
    seen = np.concatenate([b.records[b.weights > 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(ds)))


def test_logit_targets_are_softmaxed_at_the_stored_temperature(tmp_path, bundle):
    path = _write(tmp_path / "logits.mdc", None, label_kind="logits")
    ds = runtime.load(path, budget=1)
    with formats.open_mdc(path) as r:
        raw = r.read(1).views.targets
    z = raw / 2.0
    expect = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(ds.soft_labels, expect / expect.sum(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(decode_targets(np.array([[0.2, 0.0, 0.2]]), "probs", 1.0), [[0.5, 0, 0.5]])


def test_to_torch(mdc):
    ds = runtime.load(mdc, budget=1)
    td = ds.to_torch()
    x, y = td[0]
    assert len(td) == C and x.shape == K_SHAPE and int(y) == 0


# ------------------------------------------------------------------------------ errors and data


def test_training_errors(tmp_path, mdc, bundle):
    plain = runtime.load(_write(tmp_path / "plain.mdc", None, views=False))
    with pytest.raises(runtime.TrainerError, match="export-trainer"):
        runtime.train(plain, backend="onnx", epochs=1)
    with pytest.raises(runtime.ConfigError, match="soft"):
        runtime.train(plain, backend="torch", labels="soft", epochs=1)
    m = runtime.train(plain, backend="onnx", trainer=bundle, epochs=1, threads=1)  # explicit trainer
    assert plain.resolve_labels("auto") == "hard" and m.steps == 2
    ds = runtime.load(mdc, budget=1)
    with pytest.raises(runtime.ConfigError, match="batch"):
        runtime.train(ds, backend="onnx", batch_size=B + 1, epochs=1)
    with pytest.raises(runtime.ConfigError, match="momentum"):
        runtime.train(ds, backend="onnx", momentum=0.5, epochs=1)
    with pytest.raises(runtime.TrainerError):
        runtime.train(ds, arch="resnet-ap10", backend="onnx", epochs=1)
    with pytest.raises(runtime.ConfigError, match="unknown training setting"):
        runtime.train(ds, epoch=1)
    with pytest.raises(runtime.ConfigError):
        runtime.train(ds, epochs=0)
    with pytest.raises(runtime.BackendError):
        runtime.train(ds, backend="tflite", epochs=1)
    with pytest.raises(runtime.TrainerError):
        runtime.train(ds, trainer=b"not a bundle", epochs=1)


def test_lr_schedules():
    cfg = TrainConfig(epochs=6, lr=1.0)
    assert [learning_rate(cfg, s, 1) for s in range(6)] == pytest.approx([1, 1, 1, 1, 0.2, 0.04])
    cos = TrainConfig(epochs=2, lr=1.0, schedule="cosine")
    assert learning_rate(cos, 0, 2) == 1.0 and learning_rate(cos, 2, 2) == pytest.approx(0.5)
    assert learning_rate(TrainConfig(schedule="constant", lr=0.3), 99, 1) == 0.3


def _write_idx(path: Path, a: np.ndarray) -> None:
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + a.astype(np.uint8).tobytes())


def test_test_data_from_idx_dir_and_npz(tmp_path, test_npz):
    x = np.arange(2 * 16 * 16, dtype=np.uint8).reshape(2, 16, 16)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 1]))
    xi, yi = runtime.load_test_data(tmp_path)
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, [3, 1])
    xn, yn = runtime.load_test_data(test_npz)
    assert xn.dtype == np.uint8 and yn.dtype == np.int64
    with pytest.raises(runtime.DataError):
        runtime.load_test_data(tmp_path / "missing-dataset-name")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(runtime.DataError):
        runtime.load_test_data(tmp_path)


def test_evaluate_normalises_uint8(mdc):
    ds = runtime.load(mdc, budget=1)
    m = runtime.train(ds, backend="onnx", epochs=1, threads=1)
    x8 = np.random.default_rng(0).integers(0, 256, (10, 16, 16), dtype=np.uint8)
    xf = ((x8.astype(np.float32) / 255 - 0.5) / 0.25)[:, None]
    np.testing.assert_allclose(m.logits(x8), m.logits(xf), atol=1e-5)
    with pytest.raises(runtime.DataError):
        m.logits(np.zeros((2, 3, 16, 16), np.float32))


def test_cli_reports_errors(mdc, capsys):
    assert cli_main(["train", str(mdc), "--budget", "99", "--epochs", "1"]) == 2
    assert "outside 1..4" in capsys.readouterr().err
    assert cli_main(["info", str(mdc)]) == 0
    assert "IPC-4" in capsys.readouterr().out
