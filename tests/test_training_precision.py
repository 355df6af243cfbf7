"""bf16 autocast of the training step (`evaluate.precision`, `teacher.precision`; condenser/training.py): fp32
stays the default and is unchanged, bf16 trains the same network within bfloat16's tolerance with float32
parameters, a bf16 teacher is its own cache entry, and a setting outside fp32/bf16 is a config error naming the
key."""

from __future__ import annotations

import pytest
import torch

from condenser.config.schema import ConfigError
from condenser.data import synthetic
from condenser.evaluate.protocol import hard_label_source, train_student
from condenser.profiles import EvalBudget, TeacherBudget, get_profile
from condenser.teacher import TeacherConfig, train_teacher
from condenser.training import autocast


def _train(precision: str) -> torch.nn.Module:
    budget = EvalBudget(epochs=3, batch_size=12, width=8, seeds=1, precision=precision)
    data = synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=4)
    source = hard_label_source(data.normalized(torch.arange(len(data))), data.labels, 3, budget, True)
    return train_student(source, data.spec, budget, seed=1, model_kwargs={"depth": 2}, device="cpu",
                         use_compile=False)


def test_fp32_is_the_default_and_runs_no_autocast():
    assert EvalBudget().precision == "fp32"
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16


def test_bf16_training_keeps_float32_parameters_close_to_fp32():
    ref, low = _train("fp32"), _train("bf16")
    changed = False
    for (name, a), (_, b) in zip(ref.state_dict().items(), low.state_dict().items(), strict=True):
        assert b.dtype == torch.float32, name
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.02, msg=name)
        changed |= not torch.equal(a, b)
    assert changed, "bf16 trained bit for bit like fp32: autocast never ran"


def test_an_unknown_precision_is_a_config_error():
    for section in (EvalBudget, TeacherBudget):
        with pytest.raises(ConfigError, match=r"^precision must be one of fp32, bf16, auto, got 'fp16'$"):
            section(precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        get_profile("smoke").updated({"teacher.precision": "half"})


def test_a_bf16_teacher_trains_in_its_own_cache_entry(tmp_path):
    configs = [TeacherConfig(profile="smoke", model_kwargs={"width": 8},
                             budget=TeacherBudget(epochs=2, batch_size=32, max_train=100, max_test=50, precision=p))
               for p in ("fp32", "bf16")]
    assert configs[0].name != configs[1].name
    # teachers cached before the field existed keep their names: fp32 stays out of the identity
    assert "precision" not in configs[0].as_dict()["budget"] and "compile" not in configs[0].as_dict()["budget"]
    assert configs[1].as_dict()["budget"]["precision"] == "bf16"
    fp32, bf16 = (train_teacher(c, root=tmp_path, device="cpu", log=lambda _: None) for c in configs)
    assert bf16.meta["config"]["budget"]["precision"] == "bf16"
    for (name, a), (_, b) in zip(fp32.model.state_dict().items(), bf16.model.state_dict().items(), strict=True):
        assert b.dtype == a.dtype, name
    assert any(not torch.equal(a, b) for a, b in zip(fp32.model.state_dict().values(),
                                                      bf16.model.state_dict().values(), strict=True))


@pytest.mark.parametrize(("flags", "expected"), [({"avx512f", "amx_bf16"}, "bf16"), ({"avx512_bf16"}, "bf16"),
                                                 ({"avx512f", "avx2"}, "fp32"), (set(), "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, flags, expected):
    import condenser.device as device

    monkeypatch.setattr(device, "_cpu_flags", lambda: frozenset(flags))
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) == expected
    assert device.resolve_precision("fp32", cpu) == "fp32" and device.resolve_precision("bf16", cpu) == "bf16"
    assert EvalBudget(precision="auto").precision == "auto"  # resolved where it runs, not in the tree


def _condense(precision: str, run_dir=None):
    from condenser.condense import CondenseConfig, condense
    from condenser.multisize import MultisizeConfig

    cfg = CondenseConfig(method="dm", ipc=2, outer_loops=2, inner_loops=2, multisize=MultisizeConfig(period=1),
                         batch_real=4, width=8, depth=2, device="cpu", precision=precision)
    data = synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=8)
    return cfg, condense(cfg, data, run_dir, progress=False)


def test_condensation_records_and_hashes_the_arithmetic_that_ran(monkeypatch):
    import condenser.device as device
    from condenser.condense import CondenseConfig, CondenseConfigError

    with pytest.raises(CondenseConfigError, match=r"^precision must be one of fp32, bf16, auto, got 'fp16'$"):
        CondenseConfig(precision="fp16")
    for flags, ran in (({"amx_bf16"}, "bf16"), (set(), "fp32")):
        monkeypatch.setattr(device, "_cpu_flags", lambda f=flags: frozenset(f))
        auto = CondenseConfig(device="cpu")  # the tree's default: auto
        assert auto.result_hash() == CondenseConfig(device="cpu", precision=ran).result_hash()
        assert auto.result_hash() != CondenseConfig(device="cpu", precision={"bf16": "fp32"}.get(ran, "bf16")
                                                    ).result_hash()
    _, result = _condense("auto")
    assert result.config["precision"] == "fp32"  # the flags patched last: a CPU without bf16 multiply


def test_bf16_condensation_is_deterministic_and_close_to_fp32():
    _, low = _condense("bf16")
    _, again = _condense("bf16")
    _, ref = _condense("fp32")
    assert low.config["precision"] == "bf16" and low.images.dtype == torch.float32
    assert torch.equal(low.images, again.images)
    assert not torch.equal(low.images, ref.images), "bf16 condensed bit for bit like fp32: autocast never ran"
    gap = (low.images - ref.images).abs()  # bf16 steps drift a few percent of the images' spread, no more
    assert gap.mean() < 0.03 * ref.images.std() and gap.max() < 0.3 * ref.images.std()
