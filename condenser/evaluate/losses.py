"""Student losses on soft-label views, chosen by `EvalBudget.loss` (one training loop for all of them).

- `soft_ce`: cross-entropy against the stored probabilities (the project's default).
- `mse_gt`: G-VBSM's MSE on logits + γ·CE with the hard label (G-VBSM paper §3.3; element-mean MSE as in its
  code, A15). Views store probabilities p = softmax(z/T), which fix the teacher logits only up to a
  per-row constant, so the regression target is T·log p centred per row, compared with the centred
  student logits (softmax ignores that constant too). p is floored at 1e-4 (about the topk-u8 codec's
  resolution); "logits" files are used as stored. GT is the record's own label (not a mix partner's).
- `kl`: SRe2L's distillation loss, τ²·KL(softmax(z/τ) || softmax(s/τ)) with τ = `loss_temperature` (SRe2L §3.3;
  its code: KLDivLoss batchmean, τ = 20 on ImageNet). The target is the teacher at the student's τ, re-tempered
  from the file's own T: softmax((T/τ)·log p) for probabilities (p floored as for `mse_gt`), softmax(z/τ) for
  logits. τ² keeps the gradient's scale as τ grows; at τ = 1 the gradient is `soft_ce`'s.

A loss builds its per-view targets once (`targets`) and is applied per batch (`fn`), both given the evaluation
budget for their settings (`loss_gamma`, `loss_temperature`); targets that need the hard label carry it as a
one-hot block after the K target columns, so sources and the loop stay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from condenser.errors import CondenserError
from condenser.registry import Registry
from condenser.training import soft_cross_entropy
from formats import Views
from runtime.dataset import decode_targets
from runtime.torch_step import kl_divergence

if TYPE_CHECKING:
    from condenser.config.tree import EvalBudget

PROB_FLOOR = 1e-4


@dataclass(frozen=True)
class StudentLoss:
    # (views, label_kind, temperature, labels [N] or None, budget) -> per-view targets [N, V, X]
    targets: Callable[[Views, str, float, torch.Tensor | None, EvalBudget], torch.Tensor]
    # (student logits [B, K], targets [B, X], budget) -> scalar
    fn: Callable[[torch.Tensor, torch.Tensor, EvalBudget], torch.Tensor]


def view_probabilities(views: Views, label_kind: str, temperature: float) -> torch.Tensor:
    """Stored view targets as probability rows, decoded by the device's rule (runtime.dataset.decode_targets)
    so that server evaluation trains on the very targets, to the bit, that runtime.train feeds a device."""
    return torch.from_numpy(decode_targets(views.targets, label_kind, temperature))


def teacher_logits(views: Views, label_kind: str, temperature: float) -> torch.Tensor:
    """Centred teacher logits per view: stored logits, or T·log p for stored probabilities."""
    if label_kind == "logits":
        z = torch.from_numpy(views.targets).float()
    else:
        z = temperature * view_probabilities(views, label_kind, 1.0).clamp_min(PROB_FLOOR).log()
    return z - z.mean(-1, keepdim=True)


def _mse_gt_targets(views: Views, label_kind: str, temperature: float, labels: torch.Tensor | None,
                    budget: EvalBudget) -> torch.Tensor:
    if labels is None:
        raise CondenserError("the mse_gt student loss needs the records' hard labels")
    z = teacher_logits(views, label_kind, temperature)  # [N, V, K]
    hard = F.one_hot(labels.long(), z.shape[-1]).float()[:, None].expand_as(z)
    return torch.cat([z, hard], dim=-1)


def mse_gt(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    k = logits.shape[-1]
    z, hard = targets[:, :k], targets[:, k:]
    centred = logits - logits.mean(-1, keepdim=True)
    return F.mse_loss(centred, z) + gamma * soft_cross_entropy(logits, hard)


def kl_targets(views: Views, label_kind: str, temperature: float, tau: float) -> torch.Tensor:
    """The teacher's distribution at the student's temperature `tau`: softmax(z / tau) of the teacher logits
    (stored, or recovered from the probabilities as T·log p), so `kl` compares both sides at one tau."""
    return torch.softmax(teacher_logits(views, label_kind, temperature) / tau, dim=-1)


STUDENT_LOSSES: Registry[StudentLoss] = Registry("student loss")
STUDENT_LOSSES.add("soft_ce", StudentLoss(targets=lambda v, kind, t, labels, budget: view_probabilities(v, kind, t),
                                          fn=lambda logits, y, budget: soft_cross_entropy(logits, y)))
STUDENT_LOSSES.add("mse_gt", StudentLoss(targets=_mse_gt_targets,
                                         fn=lambda logits, y, budget: mse_gt(logits, y, budget.loss_gamma)))
STUDENT_LOSSES.add("kl", StudentLoss(
    targets=lambda v, kind, t, labels, budget: kl_targets(v, kind, t, budget.loss_temperature),
    fn=lambda logits, y, budget: kl_divergence(logits, y, None, budget.loss_temperature)))
