"""Scale-free penalties used for leakage control and for regressing latents."""

from __future__ import annotations

import torch


def unexplained_fraction(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """1 - R^2 of ``pred`` for ``target`` over the batch.

    Dividing by the target's variance keeps the penalty from being lowered by shrinking the latents,
    which the decoders could otherwise undo by scaling their first layer.
    """
    var = target.var(0, unbiased=False).sum().clamp_min(1e-6)
    return (target - pred).pow(2).mean(0).sum() / var


def _rbf_gram(x: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(x, x).pow(2)
    # Median heuristic, detached so the bandwidth does not become a way to cheat the penalty.
    bandwidth = d2.detach()[d2.detach() > 0].median().clamp_min(1e-6)
    return torch.exp(-d2 / bandwidth)


def normalised_hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kernel dependence in [0, 1] (CKA with RBF kernels): 0 iff x and y look independent in the batch.

    Nonlinear, so a private block cannot hide shared information in a nonlinear code that a linear
    decorrelation penalty would miss.
    """
    n = x.shape[0]
    h = torch.eye(n, device=x.device) - 1.0 / n
    kx = h @ _rbf_gram(x) @ h
    ky = h @ _rbf_gram(y) @ h
    hxy = (kx * ky).sum()
    hxx = (kx * kx).sum()
    hyy = (ky * ky).sum()
    return hxy / (hxx * hyy).sqrt().clamp_min(1e-12)
