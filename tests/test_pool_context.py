"""The decoupled methods' teacher pools train with the command's resolved settings tree (PoolContext.settings)."""

from __future__ import annotations

import typing

from condenser.config.tree import Config
from condenser.profiles import get_profile, resolve
from condenser.statmatch.settings import preset
from condenser.statmatch.teachers import PoolContext, teacher_config


def test_pool_teachers_take_their_budget_and_provenance_from_the_resolved_tree(fmnist_train):
    tree = resolve("smoke", items=["teacher.epochs=3"])
    ctx = PoolContext("fashion-mnist", tree, fmnist_train, device="cpu", log=lambda _: None)
    cfg = teacher_config(ctx, preset("sre2l"), "convnet", {"norm": "batch"})
    assert cfg.budget.epochs == 3 and cfg.profile == "smoke"
    assert cfg.settings == tree.as_dict() and cfg.model_kwargs == {"norm": "batch"}


def test_a_profile_name_stands_for_its_unchanged_tree(fmnist_train):
    ctx = PoolContext("fashion-mnist", "smoke", fmnist_train, device="cpu", log=lambda _: None)
    cfg = teacher_config(ctx, preset("sre2l"), "convnet", {})
    assert cfg.budget == get_profile("smoke").teacher.budget() and cfg.settings is None


def test_the_field_is_annotated_as_what_it_receives():
    hints = typing.get_type_hints(PoolContext)
    assert "profile" not in hints and hints["settings"] == Config | str
