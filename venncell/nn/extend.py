"""A trained linear layer that reads extra inputs it was never trained on, with weights of their own."""

from __future__ import annotations

import torch
from torch import nn


class ExtendedLinear(nn.Module):
    """``base`` (kept as it is, frozen) on the first ``base.in_features`` inputs, plus a weight of its own for each
    of ``extra.shape[1]`` further inputs: the only parameter that trains.

    Query mapping appends one-hot columns for batches a trained decoder never saw; their weights start at
    ``init`` (the trained batches' mean column: batch-neutral) and are fitted to the new batches' cells.
    """

    def __init__(self, base: nn.Linear, init: torch.Tensor):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.extra = nn.Parameter(init.detach().clone().to(base.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.base.in_features
        return self.base(x[:, :d]) + x[:, d:] @ self.extra.T
