"""The soft-label student loss, written once for every torch path: server evaluation and teacher training
(condenser/training.py), the traced device train step (condenser/export/train_step.py) and the runtime's
torch backend. Importing this module imports torch: `import runtime` never does.
"""

from __future__ import annotations

import torch


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Cross-entropy against probability rows (KL(targets || softmax) up to a constant).

    With `weights`, sum_i w_i CE_i / sum_i w_i: zero weights mask the padding of a partial batch.
    """
    per_sample = -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.sum()
