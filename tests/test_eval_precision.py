"""The evaluation's bf16 autocast (`evaluate.precision`, condenser/training.py): fp32 stays the default and is
unchanged, bf16 trains the same network within bfloat16's tolerance with float32 parameters, and a setting
outside fp32/bf16 is a config error naming the key."""

from __future__ import annotations

import pytest
import torch

from condenser.config.schema import ConfigError
from condenser.data import synthetic
from condenser.evaluate.protocol import hard_label_source, train_student
from condenser.profiles import EvalBudget
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
    with pytest.raises(ConfigError, match=r"^precision must be one of fp32, bf16, got 'fp16'$"):
        EvalBudget(precision="fp16")
