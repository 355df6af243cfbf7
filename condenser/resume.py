"""One checkpoint/resume mechanism for the long loops: teacher epochs, condense outer loops, recover chunks.

A run's checkpoint is one torch file (read with `weights_only=True`) at a path the run owns: the teacher's
cache entry, or `run_dir/<name>` (under torchrun `run_dir/world-W/rank-k/<name>`, condenser.distributed).
It records the run's identity, a hash of everything that changes the result (the config, the training
data's fingerprint and, sharded, the shard), so a checkpoint of another run is refused with a
CheckpointError naming the file, never resumed. Saving goes through formats/atomic.py (via
condenser.checkpoint): the file is the old checkpoint or the complete new one. A checkpoint holds the state
of every random generator the run draws from, so a resumed run ends bit-identical to an uninterrupted one.

`stop_after=k` stops a run once k units (epochs, outer loops, chunks) ran in this call, with its checkpoint
saved, by raising `Interrupted`: the one exception every loop raises when it stops on purpose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from condenser.checkpoint import atomic_torch_save, config_hash, safe_torch_load
from condenser.distributed import DistContext, rank_dir
from condenser.errors import CheckpointError, CondenserError

FORMAT = 3  # 3: one layout for every loop ({"format", "identity", "state"}); 2 was condense's own


class Interrupted(CondenserError):
    """A run stopped on purpose (`stop_after`) after saving its checkpoint; rerunning the same call resumes it."""

    def __init__(self, what: str, units: str, done: int, total: int) -> None:
        super().__init__(f"{what}: stopped on request with {done} of {total} {units} done; rerun the same "
                         "command to resume")
        self.what, self.units, self.done, self.total = what, units, done, total


def run_identity(config: Any, data: str, dist: DistContext | None = None) -> str:
    """Hash of what makes a run's result: its config, its training data's fingerprint, its shard (if sharded)."""
    identity: dict[str, Any] = {"config": config, "data": data}
    if dist is not None and dist.sharded:
        identity["shard"] = [dist.world_size, dist.rank]
    return config_hash(identity)


@dataclass(frozen=True)
class Checkpoint:
    """Where one run's checkpoint lives and whose it is; saves atomically and loads only its own run's state.

    `keep_previous` keeps the checkpoint before the latest as `<stem>.prev<suffix>`, so ranks that stopped
    one save apart can agree on the older one (`agreed_state`).
    """

    path: Path
    identity: str
    what: str  # "teacher configuration", "condensation run", ...: how the refusal names the run
    keep_previous: bool = False

    @classmethod
    def in_run_dir(cls, run_dir: str | Path | None, name: str, identity: str, what: str, dist: DistContext,
                   keep_previous: bool = False) -> Checkpoint | None:
        """The checkpoint `name` of this rank in `run_dir`; None without a run directory (nothing saved)."""
        if run_dir is None:
            return None
        return cls(rank_dir(run_dir, dist) / name, identity, what, keep_previous)

    @property
    def previous(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.prev{self.path.suffix}")

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` atomically (the previous checkpoint moved aside first when kept)."""
        if self.keep_previous and self.path.exists():
            os.replace(self.path, self.previous)
        atomic_torch_save({"format": FORMAT, "identity": self.identity, "state": state}, self.path)

    def load(self) -> dict[str, Any] | None:
        """The latest saved state of this run; None when nothing was saved."""
        return self._read(self.path) if self.path.exists() else None

    def saved_states(self) -> list[dict[str, Any]]:
        """The latest and (when kept) the previous state, each verified to be this run's."""
        paths = (self.path, self.previous) if self.keep_previous else (self.path,)
        return [self._read(p) for p in paths if p.exists()]

    def remove(self) -> None:
        """Delete the checkpoint(s) once the run's result is stored elsewhere."""
        self.path.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)

    def _read(self, path: Path) -> dict[str, Any]:
        saved = safe_torch_load(path)
        found = (saved.get("format"), saved.get("identity")) if isinstance(saved, dict) else (None, None)
        if found != (FORMAT, self.identity):
            raise CheckpointError(
                f"{path} belongs to a different {self.what} (checkpoint format {found[0]}, identity {found[1]}; "
                f"this run: format {FORMAT}, identity {self.identity}); delete it to start over, or use another "
                "run directory")
        return saved["state"]


def agreed_state(checkpoint: Checkpoint | None, dist: DistContext, key: str) -> dict[str, Any] | None:
    """The state every rank can resume from: the latest `key` (a progress count) all ranks saved.

    Each rank keeps its latest and previous checkpoint; ranks that stopped one save apart agree on the
    older one. None: start afresh (no run directory, or some rank has nothing saved).
    """
    if checkpoint is None:
        return None
    states = {int(s[key]): s for s in checkpoint.saved_states()}
    latest = max(states, default=0)
    target = min(r[0] for r in dist.all_gather_ints([latest], f"agreeing on the {key} to resume from"))
    if target == 0:
        return None
    if target not in states:
        raise CheckpointError(f"rank {dist.rank}: checkpoints in {checkpoint.path.parent} hold {key} "
                              f"{sorted(states)}, but the ranks can only all resume from {target}; delete "
                              f"{checkpoint.path.parent.parent} to restart")
    return states[target]


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """The global torch RNG and every given generator, for a checkpoint."""
    return {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}


def restore_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Put back what `rng_state` saved, in the same generator order."""
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)


@dataclass
class StopAfter:
    """`stop_after=k`: stop once k units ran in this call, unless the run has no unit left anyway."""

    limit: int | None
    ran: int = 0

    def count(self, done: int, total: int) -> bool:
        """Count one finished unit (`done` of `total` now finished); True: stop here."""
        self.ran += 1
        return self.limit is not None and self.ran >= self.limit and done < total
