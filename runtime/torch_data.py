"""`Dataset.to_torch(labels="soft")`: the map-style samples of a runtime.Dataset as a torch Dataset.

Importing this module imports torch, so only `to_torch()` does (`import runtime` never does). Items
are ``runtime.dataset.Sample`` tuples of tensors: the replayed view, its label, the teacher's
probabilities on it and the view index; torch's default collate batches them field by field.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset as _TorchDataset

from runtime.dataset import Sample


class TorchDataset(_TorchDataset):
    """Tensors of ``ds[i]`` (no copy of the arrays); ``set_epoch`` draws the next epoch's views."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Sample:
        s = self.ds[index]
        return Sample(torch.from_numpy(s.image), torch.tensor(s.label, dtype=torch.int64),
                      torch.from_numpy(s.target), torch.tensor(s.view, dtype=torch.int64))

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)


__all__ = ["TorchDataset"]
