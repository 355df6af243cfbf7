"""A pool of frozen teachers and the rule that picks which of them a recover step matches.

SRe2L is a pool of one used every step; G-VBSM samples one backbone per step (uniformly; its code uses
round-robin); Teddy draws a random subset of K weak teachers. The soft labels use the whole pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from condenser.registry import Registry

Sampler = Callable[[int, int, int, torch.Generator], list[int]]
SAMPLERS: Registry[Sampler] = Registry("teacher sampling rule")
SAMPLERS.add("all", lambda n, k, step, g: list(range(n)))
SAMPLERS.add("one", lambda n, k, step, g: [int(torch.randint(n, (1,), generator=g))])
SAMPLERS.add("round-robin", lambda n, k, step, g: [step % n])
SAMPLERS.add("subset", lambda n, k, step, g: sorted(torch.randperm(n, generator=g)[:max(1, min(k, n))].tolist()))


@dataclass
class PoolMember:
    model: nn.Module
    meta: dict = field(default_factory=dict)  # arch, source, epoch / prune amount, test_accuracy, ...
    path: str | None = None  # teacher.safetensors (loadable with condenser.teacher.load_teacher)

    @property
    def arch(self) -> str:
        return str(self.meta.get("arch", type(self.model).__name__))


@dataclass
class TeacherPool:
    members: list[PoolMember]
    sampling: str = "all"
    k: int = 1

    def __post_init__(self) -> None:
        SAMPLERS.get(self.sampling)  # fail early on an unknown rule
        for m in self.members:
            m.model.eval().requires_grad_(False)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def models(self) -> list[nn.Module]:
        return [m.model for m in self.members]

    def to(self, device: torch.device | str) -> TeacherPool:
        for m in self.members:
            m.model.to(device)
        return self

    def sample(self, step: int, generator: torch.Generator) -> list[int]:
        """Indices of the teachers matched at `step` (drawn from `generator`, so runs are reproducible)."""
        return SAMPLERS.get(self.sampling)(len(self.members), self.k, step, generator)

    def describe(self) -> list[dict]:
        """Provenance: one row per member (no weights)."""
        return [{"path": m.path, **{k: v for k, v in m.meta.items() if k not in ("history", "config")}}
                for m in self.members]
