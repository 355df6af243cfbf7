"""Sharded builds over torch.distributed (gloo, 2 CPU processes): same results as one process, clear failures.

Every multi-process test launches real processes (torchrun, or ranks started by hand with torchrun's
environment variables), so each costs a few interpreter start-ups; the configurations are tiny.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import formats
from condenser.build import BuildConfig, build, run_dir_for
from condenser.distributed import DistContext, rank_dir, shard_range
from condenser.models import build_model
from condenser.profiles import get_profile

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 420  # seconds; a loaded 2-core machine starts 2-3 interpreters slowly

# The build of the torchrun test: gm (its network trains on real batches of all classes) with class-wise MLS.
CONDENSE = {"condense.width": 8, "condense.outer_loops": 2, "condense.inner_loops": 1, "condense.multisize.period": 1,
            "method.gm.n_data": 32, "condense.batch_real": 8}
SETTINGS = get_profile("smoke").updated({**CONDENSE, "method.name": "gm", "condense.multisize.class_wise": True,
                                         "relabel.views": 2, "pack.pixels": "float32", "pack.embed_trainer": False,
                                         "condense.precision": "fp32"})
BUILD = dict(dataset="synthetic", ipc=2, settings=SETTINGS, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MULTISIZE_QUIET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def _ranks(args: list[str], world: int, timeout: float = LAUNCH_TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Start `world` ranks by hand with torchrun's variables (no agent that would stop the survivors)."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                                  LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                                                  MASTER_PORT=port))
             for r in range(world)]
    done = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def _tiny_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("convnet", (1, 28, 28), 10, width=8, depth=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "teacher.safetensors"))
    meta = {"arch": "convnet", "dataset": "synthetic", "in_shape": [1, 28, 28], "num_classes": 10,
            "model_kwargs": {"width": 8, "depth": 2}, "test_accuracy": 0.0, "config": {}}
    (path / "teacher.json").write_text(json.dumps(meta))
    return path / "teacher.safetensors"


def test_shards_cover_every_item_once_and_are_balanced():
    for n in (1, 5, 10, 1000):
        for world in range(1, min(n, 7) + 1):
            shards = [shard_range(n, r, world) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_torchrun_build_equals_a_single_process_build(tmp_path, monkeypatch):
    """`torchrun --nproc_per_node 2 -m condenser build` writes the same arrays as `build()` in one process."""
    teacher = _tiny_teacher(tmp_path)
    cache2 = tmp_path / "cache-2"
    args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "-m", "condenser", "build", "--dataset", "synthetic", "--ipc", "2", "--profile", "smoke",
            "--method", "gm", "--class-wise", "--views", "2", "--pixels", "float32", "--no-embed-trainer",
            "--device", "cpu", "--precision", "fp32", "--teacher", str(teacher), "--out", str(tmp_path / "two.mdc")]
    for key, value in CONDENSE.items():
        args += ["--set", f"{key}={value}"]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT, env=_env(MULTISIZE_CACHE=str(cache2)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes" in proc.stdout

    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache-1"))
    one = build(BuildConfig(**BUILD, teacher_path=str(teacher)), tmp_path / "one.mdc", log=lambda _: None)
    with formats.open_mdc(one.path) as a, formats.open_mdc(tmp_path / "two.mdc") as b:
        pa, pb = a.read(2), b.read(2)
        np.testing.assert_array_equal(pa.images, pb.images)
        np.testing.assert_array_equal(pa.labels, pb.labels)
        for name in ("crop", "flip", "mix_partner", "mix_box", "mix_lam", "targets"):
            np.testing.assert_array_equal(getattr(pa.views, name), getattr(pb.views, name))
        assert a.header["provenance"]["mls_history"] == b.header["provenance"]["mls_history"]
        assert b.header["provenance"]["distributed"]["world_size"] == 2
        assert b.header["provenance"]["distributed"]["backend"] == "gloo"
    # one checkpoint directory per rank, keyed by the world size
    ccfg = BuildConfig(**BUILD).condense_config()
    monkeypatch.setenv("MULTISIZE_CACHE", str(cache2))
    run = run_dir_for(ccfg, "synthetic")
    assert sorted(p.name for p in (run / "world-2").iterdir()) == ["rank-0", "rank-1"]


def test_sharded_condense_resume_recover_and_relabel_equal_one_process(tmp_path):
    """dm with a shared MLS (all-reduced distances), resumes (also from ranks one save apart), recover chunks
    and relabel batches sharded over 2 ranks: every rank ends with exactly the single-process arrays."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from _distributed_worker import reference
    finally:
        sys.path.pop(0)
    results = _ranks([str(REPO / "tests" / "_distributed_worker.py"), str(tmp_path)], world=2)
    for r in results:
        assert r.returncode == 0, r.stdout + r.stderr
    ref = reference()
    for k in range(2):
        got = torch.load(tmp_path / f"rank-{k}.pt", weights_only=False)
        assert got["stopped"] == (2, 4)
        assert got["resumed_loops"] == 2 and got["again_loops"] == 1
        assert torch.equal(got["images"], ref["images"]) and torch.equal(got["again"], ref["images"])
        assert got["history"] == ref["history"]
        assert torch.equal(got["recovered"], ref["recovered"])
        np.testing.assert_array_equal(got["targets"], ref["targets"])
        np.testing.assert_array_equal(got["mix_partner"], ref["mix_partner"])
        assert got["recover_checkpoint"]
    assert {"run/world-2/rank-0/condense.pt", "run/world-2/rank-1/condense.pt",
            "run/world-2/rank-0/condense.prev.pt"} <= set(got["checkpoints"])


def test_a_failing_rank_ends_the_job_with_a_clear_error(tmp_path, monkeypatch):
    """Rank 1 cannot read its checkpoint and exits; rank 0, waiting in the next collective, must end with a
    DistributedError (no torchrun agent here to stop it) well within the timeout instead of hanging."""
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path / "cache"))
    ccfg = BuildConfig(**BUILD).condense_config()
    bad = rank_dir(run_dir_for(ccfg, "synthetic"), DistContext(rank=1, world_size=2)) / "condense.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    args = ["-m", "condenser", "build", "--dataset", "synthetic", "--ipc", "2", "--profile", "smoke", "--method", "gm",
            "--class-wise", "--soft-labels", "none", "--no-embed-trainer", "--device", "cpu", "--precision", "fp32",
            "--dist-timeout", "120", "--out", str(tmp_path / "never.mdc")]
    for key, value in CONDENSE.items():
        args += ["--set", f"{key}={value}"]
    t0 = time.monotonic()
    rank0, rank1 = _ranks(args, world=2)
    assert rank0.returncode != 0 and rank1.returncode != 0
    assert "cannot read checkpoint" in rank1.stderr
    assert "rank 0 of 2" in rank0.stderr and "rank 1 closed its connection" in rank0.stderr, rank0.stderr[-3000:]
    assert "within 120s" not in rank0.stderr  # it did not wait for the timeout: it says what happened
    assert time.monotonic() - t0 < LAUNCH_TIMEOUT
    assert not (tmp_path / "never.mdc").exists()


def test_a_stuck_rank_ends_the_job_after_the_timeout():
    """A rank that is alive but never joins the collective: the waiting rank fails after --dist-timeout."""
    rank0, rank1 = _ranks([str(REPO / "tests" / "_distributed_worker.py"), "stuck", "4"], world=2)
    assert rank1.returncode == 0
    assert rank0.returncode != 0
    assert "DistributedError" in rank0.stderr and "the stuck test's all-reduce failed" in rank0.stderr, rank0.stderr
    waited = float(rank0.stdout.split("waited ")[1].split("s")[0])
    assert 3 <= waited < 30
