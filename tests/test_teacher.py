from dataclasses import replace

import pytest
import torch

from condenser.profiles import get_profile
from condenser.resume import Interrupted
from condenser.teacher import TeacherConfig, load_teacher, teacher_paths, train_teacher


def _config() -> TeacherConfig:
    budget = replace(get_profile("smoke").teacher, epochs=3, max_train=200, max_test=100, batch_size=32)
    return TeacherConfig(dataset="fashion-mnist", arch="convnet", profile="smoke", budget=budget,
                         model_kwargs={"width": 8})


def test_interrupted_teacher_resumes_to_the_same_weights(tmp_path):
    config = _config()
    straight = train_teacher(config, root=tmp_path / "a", device="cpu", log=lambda _: None)

    with pytest.raises(Interrupted, match="1 of 3 epochs"):
        train_teacher(config, root=tmp_path / "b", device="cpu", stop_after=1, log=lambda _: None)
    weights, meta, ckpt = teacher_paths(config, tmp_path / "b")
    assert ckpt.exists() and not weights.exists()
    resumed = train_teacher(config, root=tmp_path / "b", device="cpu", log=lambda _: None)
    assert weights.exists() and meta.exists() and not ckpt.exists()

    pairs = zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True)
    for (k, a), (_, b) in pairs:
        assert torch.equal(a, b), k
    assert resumed.test_accuracy == straight.test_accuracy
    assert [h["epoch"] for h in resumed.meta["history"]] == [1, 2, 3]


def test_cached_teacher_is_reused_and_loads_safely(tmp_path):
    config = _config()
    first = train_teacher(config, root=tmp_path, device="cpu", log=lambda _: None)
    weights, _, _ = teacher_paths(config, tmp_path)
    mtime = weights.stat().st_mtime_ns
    again = train_teacher(config, root=tmp_path, device="cpu", log=lambda _: None)
    assert weights.stat().st_mtime_ns == mtime  # not retrained
    loaded = load_teacher(weights, device="cpu")
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(loaded.model(x), first.model.cpu()(x))
    assert again.test_accuracy == first.test_accuracy


def test_a_checkpoint_from_another_config_is_refused(tmp_path):
    from condenser.errors import CheckpointError

    config = _config()
    with pytest.raises(Interrupted):
        train_teacher(config, root=tmp_path, device="cpu", stop_after=1, log=lambda _: None)
    other = replace(config, seed=1)
    _, _, ckpt_other = teacher_paths(other, tmp_path)
    ckpt_other.parent.mkdir(parents=True, exist_ok=True)
    ckpt_other.write_bytes(teacher_paths(config, tmp_path)[2].read_bytes())
    with pytest.raises(CheckpointError, match="different teacher configuration"):
        train_teacher(other, root=tmp_path, device="cpu", log=lambda _: None)
