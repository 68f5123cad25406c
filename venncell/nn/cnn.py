"""Convolutional encoder and decoder for image modalities (cells x C x H x W crops).

Batches carry images flattened to ``C*H*W`` columns so that every modality looks alike to the losses; the
module's image encoder and decoder (``venncell.module.networks``) reshape them for these networks. ``channels``:
one stride-2 stage per entry. GroupNorm(1, c) — LayerNorm over a feature map — for the same reason the MLPs avoid BatchNorm:
stage 1 mixes training and frozen-network passes inside one step.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(1, c_out), nn.GELU()]


class ConvEncoderNet(nn.Module):
    """``(n, C, H, W) -> (n, d_out)``: stride-2 conv stages, then a small MLP head."""

    def __init__(self, shape, d_out: int, channels=(16, 32, 64), hidden: int = 128):
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += _block(c, c_out, stride=2)
            c, h, w = c_out, math.ceil(h / 2), math.ceil(w / 2)
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class ConvDecoderNet(nn.Module):
    """``(n, d_in) -> (n, C, H, W)``: a dense map to a coarse grid, then upsample + conv stages."""

    def __init__(self, d_in: int, shape, channels=(16, 32, 64), hidden: int = 128):
        super().__init__()
        self.shape = tuple(shape)
        c_img, h, w = self.shape
        n = len(channels)
        self.h0, self.w0 = math.ceil(h / 2**n), math.ceil(w / 2**n)
        self.c0 = channels[-1]
        self.dense = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, self.c0 * self.h0 * self.w0),
        )
        widths = list(channels[::-1][1:]) + [channels[0]]
        layers: list[nn.Module] = []
        c = self.c0
        for c_out in widths:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_block(c, c_out)]
            c = c_out
        layers.append(nn.Conv2d(c, c_img, 3, padding=1))
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).reshape(len(z), self.c0, self.h0, self.w0)
        _, h, w = self.shape
        return self.up(x)[
            :, :, :h, :w
        ]  # the coarse grid is rounded up; crop back to the image size


def random_dihedral(x: torch.Tensor, shape) -> torch.Tensor:
    """Flattened ``(n, C*H*W)`` images, each turned by its own random element of the square's symmetry group
    (quarter turns and mirror images; half turns and mirror images where H != W). Cells in a crop have no
    canonical orientation, so a latent that must explain every orientation of a cell keeps its shape and intensity
    rather than which way it happens to point."""
    c, h, w = shape
    n = x.shape[0]
    img = x.reshape(n, c, h, w)
    quarter_turns = (0, 1, 2, 3) if h == w else (0, 2)
    pick = torch.randint(0, len(quarter_turns), (n,), device=x.device)
    mirror = torch.randint(0, 2, (n,), device=x.device).bool()
    out = torch.where(mirror[:, None, None, None], img.flip(-1), img)
    turned = out
    # torch.rot90 turns a whole tensor: keep each cell's own turn
    for i, k in enumerate(quarter_turns[1:], 1):
        turned = torch.where((pick == i)[:, None, None, None], out.rot90(k, (-2, -1)), turned)
    return turned.reshape(n, -1)
