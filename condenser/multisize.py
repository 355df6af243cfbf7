"""Multisize condensation (MDC, He et al. ICLR 2024) around any base method: subset loss, MLS, freezing.

loss = base(S, B) + weight * base(S_[n*], B), where S_[n*] is the Most Learnable Subset: the
prefix whose feature distance to the real batch changed the most since the previous selection
(Eq. 8-9). The subset term reuses the real batch, the real-side statistics and the augmented
tensors of the base term (MDC paper Eq. 4), and runs on the MLS prefix alone where the base method can
(`match_prefix`). Distances are squared L2 between batch-mean features of
the last feature layer (`model.features`), for every prefix 1..N-1 from ONE forward pass of the
synthetic batch (prefix means by cumulative sums). Following the official code (docs/multisize.md),
they are measured during the outer loops t == 1 and t % period == 0 only, averaged over that loop's
inner steps and over classes (or per class, class-wise). Selection happens at the end of those
loops: after loop 1 the MLS is 1 and loop 1's distances become the reference, so loop 1 runs
without a subset term; later, n* = argmax |F_t - F_ref| (ties towards smaller n).

Freezing keeps earlier MLS images from being damaged by larger subsets (MDC paper §3.3.2):
- `paper` (Eq. 10, default): n_new > n_prev freezes S_[n_prev]; n_new < n_prev unfreezes; equal keeps.
- `code` (reg_ipcx.py): a size that ended a period without being re-selected is marked keep-freeze;
  the frozen prefix is the largest keep-freeze size below the current MLS.
- `none`.
Frozen images still feed every forward pass; only their update is masked (MaskedSGD), so they
are bit-identical across steps and momentum cannot leak into them.

`subsets = "all"` (ours, not the paper's) replaces the MLS term by the mean base loss over every prefix
1..N-1: each size a device may load gets a term of its own, as in Baseline A's separate runs, and nothing
is measured, selected or frozen. With dm all prefixes come from the one forward of the synthetic batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from condenser.errors import CondenserError
from condenser.methods.base import BaseMethod

FREEZE_RULES = ("paper", "code", "none")
SUBSET_RULES = ("mls", "all")


class MultisizeConfigError(CondenserError, ValueError):
    """Invalid multisize settings (unknown freeze rule, non-positive period, ...)."""


@dataclass(frozen=True)
class MultisizeConfig:
    """The `condense.multisize` section: the subset loss, MLS selection and freezing (MDC paper §3.3)."""

    enabled: bool = True  # False: the base method alone (Baseline C)
    weight: float = 1.0  # coefficient of the subset loss (Eq. 4 uses 1)
    period: int = 100  # Δt, in outer loops
    freeze: str = "paper"  # paper | code | none
    class_wise: bool = False  # one MLS per class instead of one shared
    subsets: str = "mls"  # mls: the paper's one selected prefix; all: the mean over every prefix 1..N-1

    def __post_init__(self) -> None:
        if self.subsets not in SUBSET_RULES:
            raise MultisizeConfigError(
                f"unknown subset rule {self.subsets!r}; known: {', '.join(SUBSET_RULES)}")
        if self.freeze not in FREEZE_RULES:
            raise MultisizeConfigError(
                f"unknown freeze rule {self.freeze!r}; known: {', '.join(FREEZE_RULES)}")
        if self.period < 1:
            raise MultisizeConfigError(f"period (Δt) must be >= 1 outer loop, got {self.period}")
        if self.weight < 0:
            raise MultisizeConfigError(f"subset weight must be >= 0, got {self.weight}")


# --- feature distances ----------------------------------------------------------------------------

def prefix_feature_distances(feat_syn: torch.Tensor, feat_real: torch.Tensor, ipc: int,
                             per_image: int = 1) -> torch.Tensor:
    """Squared L2 between the real batch-mean feature and the mean feature of every prefix 1..N-1.

    feat_syn [K, N*per_image, ...], feat_real [K, B, ...] -> [K, N-1]. Prefix n covers the first
    n*per_image decoded samples (all patches of stored images 0..n-1). One cumulative sum gives all
    prefix means.
    """
    k = feat_syn.shape[0]
    syn = feat_syn.reshape(k, feat_syn.shape[1], -1).float()
    real_mean = feat_real.reshape(k, feat_real.shape[1], -1).float().mean(1)  # [K, D]
    if ipc < 2:
        return syn.new_zeros(k, 0)
    counts = torch.arange(1, ipc, device=syn.device) * per_image  # samples in prefixes 1..N-1
    sums = syn.cumsum(1)[:, counts - 1]  # [K, N-1, D]
    means = sums / counts.view(1, -1, 1).to(syn.dtype)
    return ((means - real_mean.unsqueeze(1)) ** 2).sum(-1)


def prefix_masks(sizes: torch.Tensor, samples: int) -> torch.Tensor:
    """[S, M] 0/1 float masks: row i keeps the first sizes[i] of `samples` decoded samples."""
    return (torch.arange(samples, device=sizes.device).unsqueeze(0) < sizes.unsqueeze(1)).float()


class DistanceMeter:
    """Sums per-class prefix distances on the device (no host sync) over one measuring outer loop."""

    def __init__(self, num_classes: int, ipc: int, device: torch.device) -> None:
        self.sum = torch.zeros(num_classes, max(ipc - 1, 0), device=device)
        self.steps = torch.zeros(num_classes, device=device)

    def reset(self) -> None:
        self.sum.zero_()
        self.steps.zero_()

    def add(self, labels: torch.Tensor, distances: torch.Tensor) -> None:
        self.sum.index_add_(0, labels, distances)
        self.steps.index_add_(0, labels, torch.ones_like(labels, dtype=self.steps.dtype))

    def mean(self) -> torch.Tensor:
        """[C, N-1] averaged over the inner steps each class was measured in (one host copy)."""
        return (self.sum / self.steps.clamp_min(1).unsqueeze(1)).cpu()


# --- selection and freezing -----------------------------------------------------------------------

def select_mls(current: torch.Tensor, reference: torch.Tensor | None) -> list[int]:
    """Eq. 8-9 per row of [G, N-1]: argmax_n |F_t(n) - F_ref(n)| as a size in 1..N-1; first MLS is 1.

    Dividing by Δt does not change the argmax and is skipped (as in the code). torch.argmax returns
    the first maximum, so ties go to the smaller subset.
    """
    if reference is None:
        return [1] * current.shape[0]
    change = (current - reference).abs()
    return [int(i) + 1 for i in change.argmax(dim=1).tolist()]


def freeze_paper(prev: int | None, new: int, frozen: int) -> int:
    """Eq. 10: a larger new MLS freezes its predecessor; a smaller one unfreezes; equal keeps."""
    if prev is None or new == prev:
        return frozen
    return prev if new > prev else 0


def freeze_code(prev: int | None, new: int, keep: frozenset[int]) -> tuple[int, frozenset[int]]:
    """The official history rule: mark a finished, not re-selected MLS; freeze max{k marked : k < new}."""
    if prev is not None and new != prev:
        keep = keep | {prev}
    return max((k for k in keep if k < new), default=0), keep


@dataclass
class MLSRecord:
    """One selection: outer loop, MLS size and frozen prefix per group (1 shared or C), distances."""

    outer_loop: int
    selected: list[int]
    frozen: list[int]
    distances: list[list[float]]  # per group, sizes 1..N-1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MLSSelector:
    """MLS / freeze state machine; sizes count stored images per class (the nesting unit)."""

    ipc: int
    num_classes: int
    config: MultisizeConfig = field(default_factory=MultisizeConfig)
    current: list[int] | None = None  # per group; None before the first selection
    frozen: list[int] = field(default_factory=list)
    keep: list[frozenset[int]] = field(default_factory=list)
    reference: torch.Tensor | None = None  # [G, N-1]
    history: list[MLSRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.frozen:
            self.frozen = [0] * self.groups
            self.keep = [frozenset()] * self.groups

    @property
    def groups(self) -> int:
        return self.num_classes if self.config.class_wise else 1

    @property
    def active(self) -> bool:
        """Whether a subset term is applied (from the end of loop 1 on; never for IPC 1)."""
        return self.current is not None and self.ipc > 1

    def measuring(self, outer_loop: int) -> bool:
        """Distances are measured in loop 1 and every loop t with t % period == 0 (1-based t); never for `all`."""
        periodic = outer_loop == 1 or outer_loop % self.config.period == 0
        return self.ipc > 1 and self.config.subsets == "mls" and periodic

    def _per_class(self, values: list[int]) -> list[int]:
        return values * self.num_classes if len(values) == 1 else list(values)

    def subset_sizes(self) -> list[int]:
        """MLS size per class (0 = no subset term)."""
        return self._per_class(self.current) if self.active else [0] * self.num_classes

    def frozen_sizes(self) -> list[int]:
        return self._per_class(self.frozen)

    def select(self, outer_loop: int, distances: torch.Tensor) -> MLSRecord:
        """Select the next MLS from this loop's per-class distances [C, N-1]; update the freeze state."""
        d = distances.detach().float().cpu()
        if not self.config.class_wise:
            d = d.mean(0, keepdim=True)
        new = select_mls(d, self.reference)
        prev = self.current
        for g in range(self.groups):
            p = None if prev is None else prev[g]
            if self.config.freeze == "paper":
                self.frozen[g] = freeze_paper(p, new[g], self.frozen[g])
            elif self.config.freeze == "code":
                self.frozen[g], self.keep[g] = freeze_code(p, new[g], self.keep[g])
        self.current, self.reference = new, d
        record = MLSRecord(outer_loop, list(new), list(self.frozen), d.tolist())
        self.history.append(record)
        return record

    def state_dict(self) -> dict:
        return {
            "current": self.current, "frozen": list(self.frozen), "keep": [sorted(k) for k in self.keep],
            "reference": self.reference, "history": [r.as_dict() for r in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.current = state["current"]
        self.frozen = list(state["frozen"])
        self.keep = [frozenset(k) for k in state["keep"]]
        self.reference = state["reference"]
        self.history = [MLSRecord(**r) for r in state["history"]]


# --- the wrapper ---------------------------------------------------------------------------------

class Multisize:
    """Base loss on the full set + weight * base loss on the MLS prefix; measures prefix distances."""

    def __init__(self, base: BaseMethod, ipc: int, num_classes: int, per_image: int = 1,
                 config: MultisizeConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.base = base
        self.ipc = ipc
        self.num_classes = num_classes
        self.per_image = per_image
        self.config = config or MultisizeConfig()
        self.selector = MLSSelector(ipc, num_classes, self.config)
        self.meter = DistanceMeter(num_classes, ipc, torch.device(device))
        self._weights_cache: tuple[tuple, torch.Tensor] | None = None

    def subset_weights(self, labels: torch.Tensor, samples: int) -> torch.Tensor | None:
        """[K, M] prefix masks of the MLS of each class in `labels` (None when no subset term).

        Cached until the selection changes, so steps do not rebuild (or re-upload) the mask.
        """
        if not self.selector.active:
            return None
        key = (tuple(self.selector.subset_sizes()), samples, labels.device)
        if self._weights_cache is None or self._weights_cache[0] != key:
            sizes = torch.tensor(key[0], device=labels.device) * self.per_image  # [C]
            self._weights_cache = (key, prefix_masks(sizes, samples))
        return self._weights_cache[1].index_select(0, labels)

    def batch_prefix_sizes(self, labels: torch.Tensor) -> list[int] | None:
        """The MLS of each class of the batch in decoded samples, from host-side state only.

        None when class-wise sizes differ and `labels` live on an accelerator: reading them would sync
        the host every step, so the caller falls back to the prefix masks.
        """
        sizes = [n * self.per_image for n in self.selector.subset_sizes()]
        if len(set(sizes)) == 1:
            return sizes[:1] * labels.shape[0]
        if labels.device.type != "cpu":
            return None
        return [sizes[c] for c in labels.tolist()]

    def loss(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
             measure: bool = False) -> torch.Tensor:
        """Augmented class batches syn [K, M, ...], real [K, B, ...] -> base + weight * subset loss.

        `measure=True` also accumulates this step's prefix distances (see `observe`), reusing the real
        features of the target when the base method keeps them (`real_feature_mean`).
        """
        target = self.base.target(model, real, labels)
        if measure:
            hook = getattr(self.base, "real_feature_mean", None)
            real_mean = hook(model, target) if hook is not None else None
            self.observe(model, syn, real, labels, real_mean)
        if self.config.subsets == "all" and self.ipc > 1 and self.config.weight > 0:
            full, subset = self._all_prefix_terms(model, syn, target, labels)
        elif not self.selector.active or self.config.weight == 0:
            return self.base.match(model, syn, target, labels)
        else:
            full, subset = self._terms(model, syn, target, labels)
        return full + self.config.weight * subset

    def _terms(self, model: nn.Module, syn: torch.Tensor, target: Any, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base and subset terms, in the cheapest way the base method offers.

        `match_terms`: both from one forward of the synthetic batch (dm); `match_prefix`: the subset term
        on the MLS prefix alone (gm, whose per-sample gradients make masked samples pure overhead);
        otherwise the base loss with 0/1 prefix weights.
        """
        terms = getattr(self.base, "match_terms", None)
        if terms is not None:
            full, subset = terms(model, syn, target, labels, [None, self.subset_weights(labels, syn.shape[1])])
            return full, subset
        full = self.base.match(model, syn, target, labels)
        prefix = getattr(self.base, "match_prefix", None)
        sizes = self.batch_prefix_sizes(labels) if prefix is not None else None
        if sizes is not None:
            return full, prefix(model, syn, target, labels, sizes)
        return full, self.base.match(model, syn, target, labels, self.subset_weights(labels, syn.shape[1]))

    def _all_prefix_terms(self, model: nn.Module, syn: torch.Tensor, target: Any, labels: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base term and the mean of the base loss over every prefix 1..N-1 (`subsets = "all"`).

        Every size a device may load gets its own term, as Baseline A's separate runs do, but on shared images.
        With `match_terms` (dm) all prefixes come from one forward of the synthetic batch.
        """
        sizes = torch.arange(1, self.ipc, device=labels.device) * self.per_image
        masks = prefix_masks(sizes, syn.shape[1]).unsqueeze(1).expand(-1, labels.shape[0], -1)  # [N-1, K, M]
        terms = getattr(self.base, "match_terms", None)
        if terms is not None:
            full, *prefixes = terms(model, syn, target, labels, [None, *masks])
        else:
            full = self.base.match(model, syn, target, labels)
            prefixes = [self.base.match(model, syn, target, labels, m) for m in masks]
        return full, torch.stack(prefixes).mean()

    @torch.no_grad()
    def observe(self, model: nn.Module, syn: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                real_mean: torch.Tensor | None = None) -> None:
        """Accumulate this step's prefix distances (measuring loops only); stays on the device.

        `real_mean` [K, D]: the real batch's class-mean features, if already computed.
        """
        k = syn.shape[0]
        fs = model.features(syn.reshape(-1, *syn.shape[2:]).detach())
        if real_mean is None:
            real_mean = model.features(real.reshape(-1, *real.shape[2:])).reshape(k, real.shape[1], -1).mean(1)
        d = prefix_feature_distances(fs.reshape(k, syn.shape[1], -1), real_mean.reshape(k, 1, -1),
                                     self.ipc, self.per_image)
        self.meter.add(labels, d)

    def end_outer_loop(self, outer_loop: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                       ) -> MLSRecord | None:
        """Select the next MLS if `outer_loop` was a measuring loop.

        `reduce` combines the [C, N-1] distances of processes that each measured a share of the classes
        (rows of other classes are 0): a sum over ranks, so every rank selects from all classes' distances.
        """
        if not self.selector.measuring(outer_loop):
            return None
        distances = self.meter.mean()
        record = self.selector.select(outer_loop, reduce(distances) if reduce is not None else distances)
        self.meter.reset()
        return record

    def trainable_mask(self, device: torch.device | str) -> torch.Tensor | None:
        """bool [N, C, 1, 1, 1]: stored image i of class c may move iff i >= its frozen prefix."""
        frozen = self.selector.frozen_sizes()
        if not any(frozen):
            return None
        f = torch.tensor(frozen, device=device)
        mask = torch.arange(self.ipc, device=device).unsqueeze(1) >= f.unsqueeze(0)
        return mask.view(self.ipc, self.num_classes, 1, 1, 1)
