"""Scale-free penalties used for leakage control and for regressing latents."""

from __future__ import annotations

import numpy as np
import torch


def unexplained_fraction(
    target: torch.Tensor, pred: torch.Tensor, floor: float = 1e-6
) -> torch.Tensor:
    """1 - R^2 of ``pred`` for ``target`` over the batch.

    Dividing by the target's variance keeps the penalty from being lowered by shrinking the latents,
    which the decoders could otherwise undo by scaling their first layer. ``floor``: the smallest variance divided
    by; a region block left empty (means near 0 under the prior) would otherwise pay as much as a full one.
    """
    var = target.var(0, unbiased=False).sum().clamp_min(floor)
    return (target - pred).pow(2).mean(0).sum() / var


def centred_rbf_gram(x: torch.Tensor) -> torch.Tensor:
    """H K H for the RBF Gram K of the rows of x (H = centring matrix), in O(n^2) rather than two n^3 products."""
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    # Median heuristic over the off-diagonal pairs (flat[1:] viewed (n-1) x (n+1) drops the diagonal without
    # an index op), detached so the bandwidth does not become a way to cheat the penalty.
    n = x.shape[0]
    off = d2.detach().flatten()[1:].view(n - 1, n + 1)[:, :-1]
    bandwidth = _lower_median(off).clamp_min(1e-6)
    k = torch.exp(-d2 / bandwidth)
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _lower_median(t: torch.Tensor) -> torch.Tensor:
    """``t.median()`` (the lower of the two middle values), by numpy's selection on CPU: torch's CPU median of a
    batch's pairs costs several times as much, and three Grams are taken per leakage-control step."""
    if (
        t.device.type != "cpu"
        or t.dtype not in (torch.float32, torch.float64)
        or not bool(torch.isfinite(t).all())
    ):
        return t.median()  # numpy has no bfloat16, and torch's median propagates NaN
    v = t.reshape(-1).numpy()
    k = (v.size - 1) // 2
    return torch.as_tensor(np.partition(v, k)[k], dtype=t.dtype)


def normalised_hsic(
    x: torch.Tensor, y: torch.Tensor, kx: torch.Tensor | None = None
) -> torch.Tensor:
    """Kernel dependence in [0, 1] (CKA with RBF kernels): 0 iff x and y look independent in the batch.

    Nonlinear, so a private block cannot hide shared information in a nonlinear code that a linear
    decorrelation penalty would miss. ``kx``: x's centred Gram if already computed (the shared latent is
    compared with every private block).
    """
    kx = centred_rbf_gram(x) if kx is None else kx
    ky = centred_rbf_gram(y)
    return (kx * ky).sum() / ((kx * kx).sum() * (ky * ky).sum()).sqrt().clamp_min(1e-12)
