"""Likelihood heads: turn a decoder's raw output into a per-cell negative log-likelihood and a mean.

Each head owns its per-feature parameters (NB inverse dispersion, Gaussian scale) so that decoders
stay plain MLPs producing one number per feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-8


class Likelihood(nn.Module):
    """Base class. ``raw`` is the decoder output (cells x features)."""

    name: str = ""
    needs_library = False

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features

    def nll(self, raw: torch.Tensor, x: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """Per-cell, per-feature negative log-likelihood."""
        raise NotImplementedError

    def mean(self, raw: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """Expected value of the data on its own scale."""
        raise NotImplementedError

    def normalised_mean(self, raw: torch.Tensor) -> torch.Tensor:
        """Expected value on a library-free scale (proportions for counts)."""
        return self.mean(raw, None)


class Gaussian(Likelihood):
    name = "gaussian"

    def __init__(self, n_features: int):
        super().__init__(n_features)
        self.log_scale = nn.Parameter(torch.zeros(n_features))

    def nll(self, raw, x, library):
        log_scale = self.log_scale.clamp(-6.0, 6.0)
        return 0.5 * ((x - raw) * torch.exp(-log_scale)) ** 2 + log_scale + 0.9189385332046727

    def mean(self, raw, library):
        return raw


class NegativeBinomial(Likelihood):
    """NB with mean ``library * softmax(raw)`` and per-feature inverse dispersion, as in scVI."""

    name = "nb"
    needs_library = True

    def __init__(self, n_features: int):
        super().__init__(n_features)
        self.log_theta = nn.Parameter(torch.full((n_features,), 2.0))

    def nll(self, raw, x, library):
        mu = self.mean(raw, library)
        theta = torch.exp(self.log_theta.clamp(-8.0, 12.0))
        log_theta_mu = torch.log(theta + mu + _EPS)
        ll = (
            theta * (torch.log(theta + _EPS) - log_theta_mu)
            + x * (torch.log(mu + _EPS) - log_theta_mu)
            + torch.lgamma(x + theta)
            - torch.lgamma(theta)
            - torch.lgamma(x + 1.0)
        )
        return -ll

    def mean(self, raw, library):
        p = torch.softmax(raw, dim=-1)
        return p if library is None else p * library

    def normalised_mean(self, raw):
        return torch.softmax(raw, dim=-1)


class Bernoulli(Likelihood):
    name = "bernoulli"

    def nll(self, raw, x, library):
        return F.binary_cross_entropy_with_logits(raw, x, reduction="none")

    def mean(self, raw, library):
        return torch.sigmoid(raw)


LIKELIHOODS: dict[str, type[Likelihood]] = {c.name: c for c in (Gaussian, NegativeBinomial, Bernoulli)}


def make_likelihood(name: str, n_features: int) -> Likelihood:
    try:
        return LIKELIHOODS[name](n_features)
    except KeyError:
        raise ValueError(f"Unknown likelihood '{name}'; choose one of {sorted(LIKELIHOODS)}.") from None
