"""condenser.resume: the one checkpoint/resume mechanism of teacher, condense and recover.

The loops' own interrupted-equals-straight tests are tests/test_teacher.py, tests/test_condense.py and
tests/test_decoupled.py (recover); these test the mechanism they share.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from condenser.checkpoint import atomic_torch_save
from condenser.distributed import DistContext
from condenser.errors import CheckpointError, CondenserError
from condenser.resume import (
    FORMAT,
    Checkpoint,
    Interrupted,
    StopAfter,
    agreed_state,
    restore_rng_state,
    rng_state,
    run_identity,
)


def _checkpoint(tmp_path: Path, identity: str = "abc", keep_previous: bool = False) -> Checkpoint:
    return Checkpoint(tmp_path / "run.pt", identity, "test run", keep_previous)


def test_a_saved_state_loads_back_and_nothing_else_is_left(tmp_path):
    ckpt = _checkpoint(tmp_path)
    assert ckpt.load() is None
    old = os.umask(0o022)
    try:
        ckpt.save({"step": 3, "x": torch.arange(4)})
    finally:
        os.umask(old)
    state = ckpt.load()
    assert state["step"] == 3 and torch.equal(state["x"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temp file beside it
    assert ckpt.path.stat().st_mode & 0o777 == 0o644
    ckpt.remove()
    assert not ckpt.path.exists() and ckpt.load() is None


def test_another_runs_checkpoint_is_refused_naming_the_file(tmp_path):
    _checkpoint(tmp_path, identity="one").save({"step": 1})
    with pytest.raises(CheckpointError, match=r"run\.pt belongs to a different test run .*identity one"):
        _checkpoint(tmp_path, identity="two").load()


@pytest.mark.parametrize("content", [{"config_hash": "an older layout"}, [1, 2], {"format": FORMAT - 1,
                                                                                  "identity": "abc", "state": {}}])
def test_an_older_or_foreign_layout_is_refused(tmp_path, content):
    atomic_torch_save(content, tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="different test run"):
        _checkpoint(tmp_path).load()


def test_a_corrupt_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "run.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        _checkpoint(tmp_path).load()


def test_keep_previous_keeps_the_save_before_the_latest(tmp_path):
    ckpt = _checkpoint(tmp_path, keep_previous=True)
    for step in (1, 2, 3):
        ckpt.save({"step": step})
    assert ckpt.previous.name == "run.prev.pt"
    assert [s["step"] for s in ckpt.saved_states()] == [3, 2]
    assert agreed_state(ckpt, DistContext(), "step")["step"] == 3  # one process: its latest
    ckpt.remove()
    assert list(tmp_path.iterdir()) == []


def test_without_a_run_directory_nothing_is_saved_or_resumed(tmp_path):
    assert Checkpoint.in_run_dir(None, "x.pt", "abc", "test run", DistContext()) is None
    assert agreed_state(None, DistContext(), "step") is None
    ckpt = Checkpoint.in_run_dir(tmp_path, "x.pt", "abc", "test run", DistContext(rank=1, world_size=2))
    assert ckpt.path == tmp_path / "world-2" / "rank-1" / "x.pt"


def test_identity_covers_config_data_and_shard():
    base = run_identity({"lr": 1}, "data-a")
    assert base == run_identity({"lr": 1}, "data-a", DistContext())
    others = {run_identity({"lr": 2}, "data-a"), run_identity({"lr": 1}, "data-b"),
              run_identity({"lr": 1}, "data-a", DistContext(rank=0, world_size=2)),
              run_identity({"lr": 1}, "data-a", DistContext(rank=1, world_size=2))}
    assert base not in others and len(others) == 4


def test_restored_generators_draw_what_they_would_have_drawn():
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    saved = rng_state(g)
    expected = torch.rand(3, generator=g), torch.rand(3)
    torch.rand(5, generator=g), torch.rand(5)  # a run that went on, then died
    restore_rng_state(saved, g)
    assert torch.equal(torch.rand(3, generator=g), expected[0]) and torch.equal(torch.rand(3), expected[1])
    with pytest.raises(ValueError):  # one state per generator, in order
        restore_rng_state(saved, g, torch.Generator())


def test_stop_after_counts_units_of_this_call_and_never_stops_a_finished_run():
    assert [StopAfter(None).count(done, 3) for done in (1, 2, 3)] == [False] * 3
    stop = StopAfter(2)
    assert [stop.count(done, 5) for done in (3, 4)] == [False, True]  # resumed at 2: two more units
    last = StopAfter(1)
    assert last.count(3, 3) is False  # nothing left to resume: finish instead


def test_interrupted_is_one_condenser_error_that_says_how_far_it_got():
    exc = Interrupted("condense dm ipc3", "outer loops", 2, 4)
    assert isinstance(exc, CondenserError) and (exc.done, exc.total) == (2, 4)
    assert str(exc) == ("condense dm ipc3: stopped on request with 2 of 4 outer loops done; rerun the same "
                        "command to resume")
