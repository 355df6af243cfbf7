"""The opt-in compiled evaluation training (condenser/compiled.py, issue 14 item 4): off unless asked for, the
same training as eager within float tolerance when on, and its kernels cached under the multisize cache."""

from __future__ import annotations

import os

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from condenser.compiled import (
    COMPILE_ENV,
    CompileSettingError,
    compile_requested,
    inductor_cache_dir,
    use_multisize_cache,
)
from condenser.data import synthetic
from condenser.evaluate.protocol import hard_label_source, train_student
from condenser.profiles import EvalBudget

BUDGET = EvalBudget(epochs=4, batch_size=12, width=8, seeds=1)  # 12 images: one batch shape, one compile


@pytest.mark.parametrize(("value", "wanted"), [(None, False), ("", False), ("0", False), ("off", False),
                                               ("1", True), ("TRUE", True), (" yes ", True)])
def test_compile_is_off_unless_the_environment_says_yes(monkeypatch, value, wanted):
    if value is None:
        monkeypatch.delenv(COMPILE_ENV, raising=False)
    else:
        monkeypatch.setenv(COMPILE_ENV, value)
    assert compile_requested() is wanted
    assert compile_requested(True) is True and compile_requested(False) is False  # the argument wins


def test_an_unclear_compile_setting_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "maybe")
    with pytest.raises(CompileSettingError, match=rf"^{COMPILE_ENV} must be 1/true/yes/on or 0/false/no/off, "
                                                  r"got 'maybe'$"):
        compile_requested()


def _train(use_compile: bool | None) -> torch.nn.Module:
    data = synthetic(num_classes=3, image_shape=(1, 8, 8), per_class=4)
    source = hard_label_source(data.normalized(torch.arange(len(data))), data.labels, 3, BUDGET, True)
    return train_student(source, data.spec, BUDGET, seed=1, model_kwargs={"depth": 2}, device="cpu",
                         use_compile=use_compile)


def test_compiled_training_matches_eager_and_caches_its_kernels(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo sets
    eager = _train(False)
    fast = _train(True)
    assert type(fast) is type(eager)  # the caller gets the network itself, not the compiled wrapper
    for (name, a), (_, b) in zip(eager.state_dict().items(), fast.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor_cache_dir())
    assert any(inductor_cache_dir().rglob("*.py")), "no compiled kernel was written to the multisize cache"


@pytest.mark.parametrize("before", [None, "", "torch's default"])
def test_the_multisize_cache_replaces_torchs_default_cache_dir(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir() if before else before)
    use_multisize_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor_cache_dir())


def test_a_cache_dir_the_user_chose_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    use_multisize_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)


def test_eager_stays_the_default_and_bit_identical_between_runs(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    a, b = _train(None), _train(False)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
