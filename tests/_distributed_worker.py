"""One rank of the sharded runs in tests/test_distributed.py (RANK, WORLD_SIZE, MASTER_* come from the env).

`python tests/_distributed_worker.py OUT_DIR` runs the sharded pieces through their public functions and
saves what rank k got to OUT_DIR/rank-k.pt; `reference()` computes the same in one process for comparison.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from condenser.condense import CondenseConfig, condense
from condenser.data import synthetic
from condenser.distributed import rank_dir, session
from condenser.models import build_model
from condenser.multisize import MultisizeConfig
from condenser.relabel import RelabelConfig, relabel
from condenser.resume import Interrupted
from condenser.statmatch.objective import MatchConfig, StatMatchObjective
from condenser.statmatch.pool import PoolMember, TeacherPool
from condenser.statmatch.recover import CHECKPOINT_NAME as RECOVER_CHECKPOINT
from condenser.statmatch.recover import RecoverConfig, recover

# dm with a shared (not class-wise) MLS: the selection needs the all-reduced distances of every class.
CONDENSE = CondenseConfig(method="dm", ipc=3, outer_loops=4, inner_loops=2, multisize=MultisizeConfig(period=2),
                          batch_real=4, width=8, depth=2, device="cpu", checkpoint_every=1)
RECOVER = RecoverConfig(iterations=3, batch_images=5, match=MatchConfig(first_multiplier=1.0))  # 1 IPC index/chunk


def dataset():
    return synthetic(num_classes=5, image_shape=(1, 8, 8), per_class=16)


def teacher(seed: int, norm: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("convnet", (1, 8, 8), 5, width=8, depth=2, norm=norm).eval()


def recovered(run_dir: Path | None = None) -> torch.Tensor:
    pool = TeacherPool([PoolMember(teacher(1, "batch"), {"arch": "convnet"})])
    objective = StatMatchObjective(pool, RECOVER.match)
    try:
        return recover(objective, dataset(), 3, RECOVER, torch.device("cpu"), run_dir=run_dir).images
    finally:
        objective.close()


def labelled(images: torch.Tensor):
    return relabel(images, teacher(2, "instance"), 5, RelabelConfig(views=3, batch_size=4, seed=3))


def reference() -> dict:
    whole = condense(CONDENSE, dataset(), progress=False)
    rec = recovered()
    views = labelled(whole.images)
    return {"images": whole.images, "history": whole.mls_history, "recovered": rec, "targets": views.targets,
            "mix_partner": views.mix_partner}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with session("cpu") as dist:
        run = out / "run"
        try:
            condense(CONDENSE, dataset(), run, progress=False, stop_after=2)
            stopped = None
        except Interrupted as exc:  # every rank stops after the same outer loop
            stopped = (exc.done, exc.total)
        whole = condense(CONDENSE, dataset(), run, progress=False)  # resumes at loop 3
        # Rank 1 dies one save behind rank 0: its latest checkpoint is lost, its previous one survives.
        mine = rank_dir(run, dist)
        if dist.rank == 1:
            os.replace(mine / "condense.prev.pt", mine / "condense.pt")
        again = condense(CONDENSE, dataset(), run, progress=False)  # all ranks agree on loop 3
        rec = recovered(out / "recover")
        views = labelled(whole.images)
        torch.save({
            "stopped": stopped,
            "resumed_loops": whole.timings["outer_loops_this_run"],
            "again_loops": again.timings["outer_loops_this_run"],
            "images": whole.images, "again": again.images, "history": whole.mls_history, "recovered": rec,
            "targets": views.targets, "mix_partner": views.mix_partner,
            "checkpoints": sorted(str(p.relative_to(out)) for p in out.rglob("*.pt")),
            "recover_checkpoint": (rank_dir(out / "recover", dist) / RECOVER_CHECKPOINT).exists(),
        }, out / f"rank-{dist.rank}.pt")


def stuck(seconds: float) -> None:
    """Rank 1 hangs (alive, outside any collective) while rank 0 waits for it in an all-reduce."""
    with session("cpu", timeout_s=seconds) as dist:
        if dist.rank == 1:
            time.sleep(2 * seconds)
            return
        t0 = time.monotonic()
        try:
            dist.all_reduce_sum(torch.ones(1), "the stuck test's all-reduce")
        finally:
            print(f"waited {time.monotonic() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "stuck":
        stuck(float(sys.argv[2]))
    else:
        main(Path(sys.argv[1]))
