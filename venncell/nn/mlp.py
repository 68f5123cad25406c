"""Fully connected networks shared by every encoder and decoder."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``d_in -> hidden x n_layers -> d_out`` with LayerNorm + GELU between layers.

    LayerNorm rather than BatchNorm: stage 1 mixes training and frozen-network passes inside a step,
    and BatchNorm's running statistics would be corrupted by the frozen passes.
    """

    def __init__(
        self, d_in: int, d_out: int, hidden: int = 128, n_layers: int = 2, dropout: float = 0.0
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(n_layers):
            layers += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden
        layers.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
