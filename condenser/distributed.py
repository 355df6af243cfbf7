"""Several processes, one build: torch.distributed under torchrun, with timeouts and clear errors.

`torchrun --nproc_per_node N -m condenser build ...` starts N copies of the command; `session()` joins
them into one process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT): NCCL when the build runs on CUDA, gloo on CPU. Work is split in contiguous shards
(`shard_range`): classes in the condense loop, chunks of IPC indices in the decoupled recover, batches of
views in the relabelling. Every collective goes through `DistContext`, so a rank that failed or hangs
ends the others with a `DistributedError` that names the collective, how long it ran and what happened
(a peer that closed its connection, or the timeout) instead of a silent hang (torchrun's agent also stops
the surviving ranks as soon as one exits with an error).

Without a process group (plain `python -m condenser build`, the tests) `current()` is the single-process
context, whose helpers are identities, so callers need no special case.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from condenser.errors import CondenserError

ENV_TIMEOUT = "MULTISIZE_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
ENV_WAIT_TIMEOUT = "MULTISIZE_DIST_WAIT_TIMEOUT"  # seconds ranks wait while one rank per node trains a teacher
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_WAIT_TIMEOUT_S = 6 * 3600.0

T = TypeVar("T")


class DistributedError(CondenserError, RuntimeError):
    """A multi-process run cannot continue: a rank failed, timed out, or the group could not be joined."""


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous share of items 0..n-1 of `rank`: sizes differ by at most one, earlier ranks larger."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


# How the backends word "the process at the other end is gone" (gloo pairs, NCCL, the TCP store).
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote process exited",
              "remote worker crashing", "got 0 bytes")
_TIMED_OUT = ("timed out", "timeout")


def failure_message(what: str, rank: int, world_size: int, elapsed_s: float, timeout_s: float,
                    exc: BaseException) -> str:
    """What happened to a collective, as a rank saw it: a peer that exited, a timeout, or another failure.

    A peer that exits makes the others fail at once on a closed connection; only a rank that is alive but
    never arrives makes them wait for the timeout, so the two get different advice.
    """
    detail = f"{type(exc).__name__}: {exc}"
    text = str(exc).lower()
    head = f"rank {rank} of {world_size}: {what} failed after {elapsed_s:.1f}s"
    if any(m in text for m in _PEER_GONE):
        peer = f"rank {1 - rank}" if world_size == 2 else "another rank"
        return (f"{head}: {peer} closed its connection (it exited or crashed; its own output says why), "
                f"{detail}")
    if any(m in text for m in _TIMED_OUT) or elapsed_s >= 0.95 * timeout_s:
        return (f"{head}: another rank did not reach it within the {timeout_s:.0f}s timeout (it is stuck or "
                f"slower; set ${ENV_TIMEOUT} or --dist-timeout to wait longer), {detail}")
    return f"{head} (timeout {timeout_s:.0f}s), {detail}"


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"${name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise DistributedError(f"${name} must be > 0 seconds, got {raw!r}")
    return value


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job, and the job's collectives (identities for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group
    timeout_s: float = DEFAULT_TIMEOUT_S
    wait_group: Any = field(default=None, compare=False, repr=False)  # gloo group for long waits

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        return shard_range(n, self.rank, self.world_size)

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend, "timeout_s": self.timeout_s}

    # --- collectives -------------------------------------------------------------------------------
    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            return fn()
        except DistributedError:
            raise
        except Exception as exc:  # torch raises DistBackendError/RuntimeError/DistStoreError, by backend
            raise DistributedError(failure_message(what, self.rank, self.world_size, time.monotonic() - started,
                                                   self.timeout_s, exc)) from exc

    def all_reduce_sum(self, x: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        """The elementwise sum over ranks (a new tensor on x's device)."""
        if not self.sharded:
            return x
        buf = x.detach().to(self._comm_device(), copy=True)
        self._run(what, lambda: dist.all_reduce(buf, op=dist.ReduceOp.SUM))
        return buf.to(x.device)

    def all_gather_ints(self, values: list[int], what: str = "all_gather") -> list[list[int]]:
        """Every rank's list of ints (same length everywhere), in rank order."""
        if not self.sharded:
            return [list(values)]
        mine = torch.tensor(values, dtype=torch.int64, device=self._comm_device())
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._run(what, lambda: dist.all_gather(out, mine))
        return [t.tolist() for t in out]

    def all_gather_rows(self, x: torch.Tensor, what: str = "all_gather") -> torch.Tensor:
        """Concatenate every rank's x along dim 0 (row counts may differ; other dims must agree)."""
        if not self.sharded:
            return x
        counts = [c[0] for c in self.all_gather_ints([int(x.shape[0])], f"{what} (sizes)")]
        rows = max(counts)
        buf = torch.zeros(rows, *x.shape[1:], dtype=x.dtype, device=self._comm_device())
        buf[: x.shape[0]] = x.detach().to(buf.device)
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        self._run(what, lambda: dist.all_gather(out, buf))
        return torch.cat([o[:n] for o, n in zip(out, counts, strict=True)]).to(x.device)

    def broadcast(self, x: torch.Tensor, src: int = 0, what: str = "broadcast") -> torch.Tensor:
        """Rank `src`'s x on every rank (x gives the shape and dtype everywhere)."""
        if not self.sharded:
            return x
        buf = x.detach().to(self._comm_device(), copy=True)
        self._run(what, lambda: dist.broadcast(buf, src))
        return buf.to(x.device)

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module, src: int = 0, what: str = "broadcast of model weights") -> None:
        """Copy rank `src`'s parameters and buffers into `module` on every rank (in place)."""
        if not self.sharded:
            return
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            t.copy_(self.broadcast(t, src, f"{what} ({name})"))

    def all_gather_objects(self, obj: Any, what: str = "all_gather") -> list[Any]:
        """Every rank's picklable `obj`, in rank order (small metadata: losses, flags)."""
        if not self.sharded:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._run(what, lambda: dist.all_gather_object(out, obj, group=self.wait_group))
        return out

    def barrier(self, what: str = "barrier") -> None:
        """Wait for every rank; uses the long-wait group (a rank may be training a teacher meanwhile)."""
        if not self.sharded:
            return
        self._run(what, lambda: dist.barrier(group=self.wait_group))

    @contextmanager
    def local_first(self, what: str) -> Iterator[None]:
        """Run the block on each node's local rank 0 first, then on the others (which then hit its cache).

        For cached, expensive steps (teacher training, statistics): N ranks must not train N copies into one
        cache directory. Local ranks 0 run the block and enter the barrier; the others wait there, then run it.
        """
        first = self.local_rank == 0
        if self.sharded and not first:
            self.barrier(f"waiting for local rank 0: {what}")
        yield
        if self.sharded and first:
            self.barrier(f"waiting for local rank 0: {what}")


def rank_dir(run_dir: str | Path, ctx: DistContext) -> Path:
    """Where a process checkpoints: run_dir alone; run_dir/world-W/rank-k as rank k of W (same W resumes)."""
    run_dir = Path(run_dir)
    return run_dir / f"world-{ctx.world_size}" / f"rank-{ctx.rank}" if ctx.sharded else run_dir


_CURRENT: DistContext | None = None


def current() -> DistContext:
    """This process's context: the `session()` one, one derived from an existing default group, or single."""
    if _CURRENT is not None:
        return _CURRENT
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=dist.get_backend())
    return DistContext()


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise DistributedError(f"WORLD_SIZE > 1 but ${name} is not set; launch with torchrun "
                               "(torchrun --nproc_per_node N -m condenser build ...)")
    return int(raw)


@contextmanager
def session(device: str = "auto", timeout_s: float | None = None) -> Iterator[DistContext]:
    """Join torchrun's process group for the duration of the block (a no-op without torchrun).

    `device` is the build's device: on CUDA each rank takes GPU LOCAL_RANK and NCCL is used; else gloo.
    `timeout_s` (default $MULTISIZE_DIST_TIMEOUT or 30 min) bounds every collective and the rendezvous.
    """
    global _CURRENT
    world = launched_world_size()
    if world <= 1 or _CURRENT is not None:
        yield current()
        return
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    timeout = timeout_s if timeout_s is not None else _env_seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)
    wait = max(timeout, _env_seconds(ENV_WAIT_TIMEOUT, DEFAULT_WAIT_TIMEOUT_S))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = os.environ.get("MULTISIZE_DIST_BACKEND") or ("nccl" if use_cuda else "gloo")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        if torch.cuda.device_count() <= local_rank:
            raise DistributedError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                                   "CUDA devices; use --nproc_per_node <= the GPUs of a node")
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    started = time.monotonic()
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout), **kwargs)
        wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait))
    except Exception as exc:
        raise DistributedError(failure_message(f"joining the {backend} process group at {where}", rank, world,
                                               time.monotonic() - started, timeout, exc)) from exc
    _CURRENT = DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, timeout_s=timeout,
                           wait_group=wait_group)
    if rank != 0:  # one set of progress bars (rank 0's), not N fighting over the terminal
        os.environ["MULTISIZE_QUIET"] = "1"
    ok = False
    try:
        yield _CURRENT
        ok = True
    finally:
        _CURRENT = None
        # gloo: closing the sockets makes peers still waiting on this rank fail at once; NCCL: tearing down
        # a communicator that peers still use may block, so a failing rank leaves that to process exit.
        if ok or backend != "nccl":
            dist.destroy_process_group()
