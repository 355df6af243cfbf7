from dataclasses import replace

import numpy as np
import pytest
import torch

from condenser.evaluate import evaluate_images, evaluate_views, random_real_subset
from condenser.profiles import get_profile
from condenser.relabel import RelabelConfig, relabel


@pytest.fixture(scope="module")
def budget():
    return replace(get_profile("smoke").evaluate, epochs=3, max_test=200)


def test_random_real_subset_is_nested_and_ipc_major(fmnist_train):
    x5, y5 = random_real_subset(fmnist_train, 5, seed=3)
    assert x5.shape == (50, 1, 28, 28) and x5.dtype == torch.float32
    assert torch.equal(y5, torch.arange(50) % 10)  # record r = i*C + c has class c


def test_evaluation_is_deterministic_for_a_seed(fmnist_train, fmnist_test, budget):
    x, y = random_real_subset(fmnist_train, 2, seed=0)
    a = evaluate_images(x, y, fmnist_test, budget, seeds=[0, 1], device="cpu")
    b = evaluate_images(x, y, fmnist_test, budget, seeds=[0, 1], device="cpu")
    assert a.accuracies == b.accuracies
    assert a.mean == pytest.approx(np.mean(a.accuracies))
    assert a.std == pytest.approx(np.std(a.accuracies))
    assert a.labels == "hard" and a.num_images == 20
    assert a.budget["epochs"] == 3  # the budget travels with the result
    assert all(0.0 <= acc <= 100.0 for acc in a.accuracies)


def test_soft_label_views_evaluate_and_learn(fmnist_train, fmnist_test, budget):
    from condenser.models import build_model

    x, y = random_real_subset(fmnist_train, 2, seed=0)
    torch.manual_seed(0)
    teacher = build_model("convnet", (1, 28, 28), 10, width=8)
    views = relabel(x, teacher, 10, RelabelConfig(views=3, seed=0))
    res = evaluate_views(x, views, fmnist_test, budget, seeds=[0], device="cpu")
    assert res.labels == "soft" and len(res.accuracies) == 1
    again = evaluate_views(x, views, fmnist_test, budget, seeds=[0], device="cpu")
    assert res.accuracies == again.accuracies
