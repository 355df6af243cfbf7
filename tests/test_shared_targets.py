"""One target decoding for server and device: condenser evaluation trains on the targets runtime.train feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import formats
import runtime
from condenser.config.tree import EvalBudget
from condenser.evaluate.losses import PROB_FLOOR, STUDENT_LOSSES, teacher_logits, view_probabilities
from formats.testing import make_data
from runtime.dataset import decode_targets
from runtime.errors import ConfigError

C, IPC, V = 4, 3, 3
CASES = [("topk-u8", 2, "probs", 1.0), ("topk-u8", 2, "logits", 2.0), ("dense-f16", None, "probs", 1.0),
         ("dense-f16", None, "logits", 4.0), ("topk-f16", 3, "logits", 1.0)]


def _file(tmp_path: Path, codec: str, topk: int | None, kind: str, temperature: float) -> Path:
    path = tmp_path / f"{codec}-{kind}.mdc"
    formats.write_mdc(path, make_data(num_classes=C, ipc_max=IPC, image_shape=(1, 6, 6), views=V, codec=codec,
                                      topk=topk, label_kind=kind, temperature=temperature, seed=3))
    return path


def _views(path: Path) -> formats.Views:
    with formats.open_mdc(path) as r:
        return r.read(IPC).views


@pytest.mark.parametrize(("codec", "topk", "kind", "temperature"), CASES)
def test_server_targets_are_the_device_batch_targets_bit_for_bit(tmp_path, codec, topk, kind, temperature):
    path = _file(tmp_path, codec, topk, kind, temperature)
    server = STUDENT_LOSSES.get("soft_ce").targets(_views(path), kind, temperature, None, EvalBudget())
    ds = runtime.load(path)
    records = np.repeat(np.arange(len(ds)), V)
    views = np.tile(np.arange(V), len(ds))
    device = ds.batch(records, views=views).targets
    assert server.dtype == torch.float32 and server.shape == (len(ds), V, C)
    np.testing.assert_array_equal(server.numpy().reshape(-1, C), device)


def test_logits_decode_to_softmax_at_the_stored_temperature():
    z = np.array([[[2.0, 0.0, -2.0]]], np.float32)
    views = formats.Views(crop=np.zeros((1, 1, 4), np.float32), flip=np.zeros((1, 1), bool),
                          mix_partner=np.full((1, 1), -1, np.int32), mix_box=np.zeros((1, 1, 4), np.float32),
                          mix_lam=np.ones((1, 1), np.float32), targets=z)
    p = view_probabilities(views, "logits", 2.0).numpy()
    e = np.exp(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(p[0, 0], e / e.sum(), rtol=1e-6)
    np.testing.assert_array_equal(p, decode_targets(z, "logits", 2.0))


def test_probabilities_are_renormalised_and_an_empty_row_is_uniform():
    """Top-k codecs lose a little mass; a row with none left trains towards no class in particular."""
    t = np.array([[0.2, 0.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    p = decode_targets(t, "probs", 1.0)
    np.testing.assert_array_equal(p, [[0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])


def test_teacher_logits_of_probabilities_use_the_shared_decoding(tmp_path):
    views = _views(_file(tmp_path, "topk-u8", 2, "probs", 1.0))
    z = teacher_logits(views, "probs", 3.0)
    expected = 3.0 * torch.from_numpy(decode_targets(views.targets, "probs", 1.0)).clamp_min(PROB_FLOOR).log()
    assert torch.equal(z, expected - expected.mean(-1, keepdim=True))
    assert float(z.mean(-1).abs().max()) < 1e-5


def test_an_unknown_label_kind_is_an_error_on_both_sides(tmp_path):
    views = _views(_file(tmp_path, "dense-f16", None, "probs", 1.0))
    with pytest.raises(ConfigError, match="unknown label kind 'scores'"):
        view_probabilities(views, "scores", 1.0)
    with pytest.raises(ConfigError, match="unknown label kind 'scores'"):
        decode_targets(views.targets, "scores", 1.0)
