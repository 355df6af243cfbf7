"""Server evaluation and the device runtime follow one learning-rate schedule (runtime/config.py)."""

from __future__ import annotations

import pytest
import torch

from condenser.evaluate.protocol import multistep_scheduler
from condenser.profiles import EvalBudget
from runtime.config import TrainConfig, learning_rate, multistep_milestones


def _server_lrs(epochs: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    scheduler = multistep_scheduler(optimizer, EvalBudget(epochs=epochs))
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _device_lrs(epochs: int, steps_per_epoch: int = 3) -> list[float]:
    cfg = TrainConfig(epochs=epochs, lr=0.01)
    return [learning_rate(cfg, e * steps_per_epoch + steps_per_epoch - 1, steps_per_epoch) for e in range(epochs)]


def test_server_and_device_decay_at_the_same_epochs_for_every_budget_up_to_1000():
    for epochs in range(1, 1001):
        assert _device_lrs(epochs) == pytest.approx(_server_lrs(epochs), rel=1e-12), epochs


def test_milestones_round_and_never_decay_before_the_first_epoch():
    assert multistep_milestones(100) == (67, 83)
    assert multistep_milestones(4) == (3,)
    assert multistep_milestones(1) == (1,)
    assert _device_lrs(4) == pytest.approx([0.01, 0.01, 0.01, 0.002])
