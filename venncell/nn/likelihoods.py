"""Likelihood heads: turn a decoder's raw output into a per-cell negative log-likelihood and a mean.

Each head owns its per-feature parameters (NB inverse dispersion, Gaussian scale, protein background,
ATAC region factors). A head needing several decoder outputs per feature sets ``n_raw``: the decoder then
emits ``n_raw`` blocks of ``n_features`` columns, ``[block 0 | block 1 | ...]``, and every method still
returns one value per *feature* (cells x n_features).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from venncell.data.spec import LIKELIHOODS as LIKELIHOOD_NAMES
from venncell.data.spec import NONZERO_LIKELIHOODS

_EPS = 1e-8


class Likelihood(nn.Module):
    """Base class. ``raw`` is the decoder output (cells x features)."""

    name: str = ""
    n_raw = 1  # decoder outputs per feature

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features

    def split(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The ``n_raw`` blocks of the decoder output, each cells x n_features."""
        if raw.shape[-1] != self.n_features * self.n_raw:
            raise ValueError(
                f"{type(self).__name__}: decoder output has {raw.shape[-1]} columns, expected "
                f"{self.n_features} features x {self.n_raw}."
            )
        return raw.split(self.n_features, dim=-1)

    @torch.no_grad()
    def init_from_data(self, x, library) -> None:
        """Set data-dependent parameters from training data (scipy CSR or ndarray, library per cell)."""

    def nll(
        self, raw: torch.Tensor, x: torch.Tensor, library: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-cell, per-feature negative log-likelihood."""
        raise NotImplementedError

    def cell_nll(
        self,
        raw: torch.Tensor,
        x: torch.Tensor,
        library: torch.Tensor | None,
        nonzeros: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-cell NLL averaged over features: the training objective's term (equal to ``nll(...).mean(1)``)."""
        return self.nll(raw, x, library).mean(1)

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
        # each feature's mean on the training cells: the data are scaled, not centred (centring would densify
        # sparse data), and a decoder's bias starting at 0 does not reach a mean tens of SDs away
        self.register_buffer("offset", torch.zeros(n_features))

    @torch.no_grad()
    def init_from_data(self, x, library) -> None:
        self.offset.copy_(torch.as_tensor(np.asarray(x.mean(0)).ravel(), dtype=torch.float32))

    def nll(self, raw, x, library):
        log_scale = self.log_scale.clamp(-6.0, 6.0)
        return (
            0.5 * ((x - raw - self.offset) * torch.exp(-log_scale)) ** 2
            + log_scale
            + 0.9189385332046727
        )

    def mean(self, raw, library):
        return raw + self.offset


class NegativeBinomial(Likelihood):
    """NB with mean ``library * softmax(raw)`` and per-feature inverse dispersion, as in scVI."""

    name = "nb"

    def __init__(self, n_features: int):
        super().__init__(n_features)
        self.log_theta = nn.Parameter(torch.full((n_features,), 2.0))

    def theta(self) -> torch.Tensor:
        return torch.exp(self.log_theta.clamp(-8.0, 12.0))

    def nll(self, raw, x, library):
        return -_nb_log_prob(x, self.mean(raw, library), self.theta())

    def cell_nll(self, raw, x, library, nonzeros=None):
        """``nll(...).mean(1)`` in a fraction of the passes over the cells x genes array (``_SparseNBNLL``)."""
        if library is None:
            return super().cell_nll(raw, x, library)
        row, col = (x.nonzero().T if nonzeros is None else nonzeros).unbind(0)
        return _SparseNBNLL.apply(raw, self.theta(), x, torch.log(library), row, col) / x.shape[1]

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


class _SparseNBNLL(torch.autograd.Function):
    """Per-cell NB NLL summed over genes, mean ``mu = exp(log_lib) * p``, ``p = softmax(raw)``; gradients for raw
    and theta.

    -log NB = sum_g theta_g (t_g - log theta_g) + sum_{x_g > 0} [x_g (t_g - log mu_g) - G(x_g, theta_g)], with
    t = log(theta + mu) and G = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1). Only p, s = theta + mu and t are
    needed densely; every term holding x is evaluated at the non-zeros (``row``, ``col``), and lgamma / digamma of
    theta per gene rather than per non-zero. The gradients are written out because autograd would keep and revisit
    every intermediate cells x genes array. Each dense op over a batch's cells x genes costs about as much as the whole
    sparse part, so the formulas below are arranged to make as few of them as possible (e.g. ``q = theta / s``
    serves the raw and the theta gradient alike).
    """

    @staticmethod
    def forward(ctx, raw, theta, x, log_lib, row, col):
        n, g = raw.shape
        log_p = torch.log_softmax(raw, dim=1)  # log p, not log of p: exact where p underflows
        p = torch.exp(log_p)
        lib = torch.exp(log_lib)
        s = torch.addcmul(theta, p, lib)
        t = torch.log(s)
        flat = row * g + col
        xv, thv = x.reshape(-1).index_select(0, flat), theta.index_select(0, col)
        gamma = (
            torch.lgamma(xv + thv)
            - torch.lgamma(theta).index_select(0, col)
            - torch.lgamma(xv + 1.0)
        )
        log_mu = log_p.reshape(-1).index_select(0, flat) + log_lib.reshape(-1).index_select(0, row)
        at_nonzeros = xv * (t.reshape(-1).index_select(0, flat) - log_mu) - gamma
        ctx.save_for_backward(p, s, t, theta, lib, xv, thv, row, col, flat)
        dense = t @ theta - (theta * torch.log(theta)).sum()
        return dense.index_add(0, row, at_nonzeros)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        p, s, t, theta, lib, xv, thv, row, col, flat = ctx.saved_tensors
        q = torch.div(theta, s)
        qv = q.reshape(-1).index_select(0, flat)
        grad_raw = grad_theta = None
        if ctx.needs_input_grad[0]:
            # d/d mu_g = (theta_g + x_g) / s_g - x_g / mu_g, so mu_g d/d mu_g = mu_g q_g - x_g q_g; through the softmax:
            # a - p * sum(a), a = mu * d/d mu
            a = torch.mul(q, p).mul_(lib)
            a.reshape(-1).index_add_(0, flat, xv * qv, alpha=-1.0)
            grad_raw = torch.addcmul(a, p, a.sum(1, keepdim=True), value=-1.0).mul_(grad[:, None])
        if ctx.needs_input_grad[1]:
            # d/d theta_g = t_g + q_g - log theta_g - 1 + x_g / s_g - psi(x_g + theta_g) + psi(theta_g)
            gv = grad.index_select(0, row)
            sparse = gv * (
                xv * qv / thv - torch.digamma(xv + thv) + torch.digamma(theta).index_select(0, col)
            )
            grad_theta = (grad @ t + grad @ q - grad.sum() * (torch.log(theta) + 1.0)).index_add(
                0, col, sparse
            )
        return grad_raw, grad_theta, None, None, None, None


def _nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mean mu, inverse dispersion theta), elementwise."""
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + _log_gamma_ratio(x, theta)
    )


def _log_gamma_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``, elementwise.

    The term is exactly 0 wherever x = 0, and lgamma with its digamma backward is the dearest op of a
    training step; on sparse counts (mostly zeros) it is evaluated at the non-zeros only.
    """
    theta = theta.expand_as(x)
    if x.numel() == 0 or (x > 0).float().mean() > 0.5:
        return torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)
    nz = x.nonzero(as_tuple=True)
    xv, tv = x[nz], theta[nz]
    vals = torch.lgamma(xv + tv) - torch.lgamma(tv) - torch.lgamma(xv + 1.0)
    return torch.zeros(x.shape, dtype=vals.dtype, device=x.device).index_put(nz, vals)


class ZeroInflatedNB(NegativeBinomial):
    """NB as ``nb`` plus a per-cell, per-gene dropout logit (decoder block 1), as scVI's ZINB.

    A zero is either a dropout (probability pi) or an NB zero. ``mean`` is the expected count
    ``(1 - pi) * mu``; ``normalised_mean`` the same per unit library, so ``normalised_mean * library == mean``.
    """

    name = "zinb"
    n_raw = 2
    # a zero's likelihood depends on the dropout logit: no sparse shortcut
    cell_nll = Likelihood.cell_nll

    def dropout(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.split(raw)[1])

    def nll(self, raw, x, library):
        rate, logit = self.split(raw)
        log_nb = _nb_log_prob(x, torch.softmax(rate, dim=-1) * library, self.theta())
        log_keep = -F.softplus(logit)  # log(1 - pi)
        zero = torch.logaddexp(-F.softplus(-logit), log_keep + log_nb)  # log(pi + (1 - pi) NB(0))
        return -torch.where(x < 0.5, zero, log_keep + log_nb)

    def mean(self, raw, library):
        rate, logit = self.split(raw)
        p = torch.softmax(rate, dim=-1) * torch.sigmoid(-logit)
        return p if library is None else p * library

    def normalised_mean(self, raw):
        return self.mean(raw, None)


class NBMixture(Likelihood):
    """totalVI-style protein counts: NB background/foreground mixture with a shared dispersion.

    background_j = exp(log_background_j), a learned per-protein count (not library-scaled: ambient
    antibody does not scale with the cell); foreground = background * (1 + softplus(block 0 + fore_bias_j));
    fore_bias starts at the data's foreground/background ratio (an untrained decoder would otherwise start
    the foreground on top of the background, and the shared dispersion then collapses to fit one wide mode);
    probability of background = sigmoid(block 1). ``mean`` is the mixture mean; ``normalised_mean`` the
    foreground part ``(1 - pi) * foreground`` — the denoised protein on the count scale, as totalVI's
    ``include_protein_background=False``.
    """

    name = "nb_mixture"
    n_raw = 2

    def __init__(self, n_features: int):
        super().__init__(n_features)
        self.log_theta = nn.Parameter(torch.full((n_features,), 2.0))
        self.log_background = nn.Parameter(torch.zeros(n_features))
        self.fore_bias = nn.Parameter(torch.zeros(n_features))

    def theta(self) -> torch.Tensor:
        return torch.exp(self.log_theta.clamp(-8.0, 12.0))

    def background(self) -> torch.Tensor:
        return torch.exp(self.log_background.clamp(-10.0, 15.0))

    def components(self, raw):
        """(background mean, foreground mean, background probability), each cells x proteins."""
        fore, logit = self.split(raw)
        bg = self.background()
        return (
            bg.expand_as(fore),
            bg * (1.0 + F.softplus(fore + self.fore_bias)),
            torch.sigmoid(logit),
        )

    def nll(self, raw, x, library):
        fore, logit = self.split(raw)
        bg = self.background()
        theta = self.theta()
        log_bg = -F.softplus(-logit) + _nb_log_prob(x, bg.expand_as(fore), theta)
        log_fg = -F.softplus(logit) + _nb_log_prob(
            x, bg * (1.0 + F.softplus(fore + self.fore_bias)), theta
        )
        return -torch.logaddexp(log_bg, log_fg)

    def mean(self, raw, library):
        bg, fg, pi = self.components(raw)
        return pi * bg + (1.0 - pi) * fg

    def normalised_mean(self, raw):
        _, fg, pi = self.components(raw)
        return (1.0 - pi) * fg

    @torch.no_grad()
    def init_from_data(self, x, library) -> None:
        """Background start per protein = lower component of a 2-Gaussian mixture on log1p counts (totalVI's
        prior), foreground start = the upper one; proteins where the mixture fails fall back to the 10 % and
        90 % quantiles."""
        from sklearn.mixture import GaussianMixture

        rng = np.random.default_rng(0)
        rows = rng.choice(x.shape[0], min(x.shape[0], 5000), replace=False)
        sub = x[np.sort(rows)]
        dense = np.log1p(sub.toarray() if sp.issparse(sub) else np.asarray(sub, dtype=np.float64))
        log_bg, log_fg = np.quantile(dense, [0.1, 0.9], axis=0)
        for j in range(dense.shape[1]):
            col = dense[:, j : j + 1]
            if np.unique(col).size < 3:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gmm = GaussianMixture(2, random_state=0).fit(col)
            log_bg[j], log_fg[j] = float(gmm.means_.min()), float(gmm.means_.max())
        bg = np.maximum(np.expm1(log_bg), 0.1)
        excess = np.clip(
            np.expm1(log_fg) / bg - 1.0, 0.1, 1e4
        )  # softplus(fore_bias) = fg / bg - 1
        self.log_background.copy_(torch.as_tensor(np.log(bg), dtype=torch.float32))
        self.fore_bias.copy_(
            torch.as_tensor(excess + np.log(-np.expm1(-excess)), dtype=torch.float32)
        )


class BernoulliFactors(Likelihood):
    """MultiVI-style accessibility: p = sigmoid(raw) * region_factor * cell_factor.

    region_factor = sigmoid(region_logit), a learned per-peak parameter. cell_factor = the cell's observed
    depth (accessible peaks, passed as ``library``) / the median training depth, clipped to [1e-3, 1]: a
    fixed function of the data, so new cells need no fitting. Without a depth (predicting ATAC for a cell
    that has none) the median factor of the training cells with an open peak is used. The reference depth is a
    buffer, saved with the model.
    """

    name = "bernoulli_factors"
    depth_quantile = 0.5

    def __init__(self, n_features: int):
        super().__init__(n_features)
        self.region_logit = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("ref_depth", torch.ones(()))
        self.register_buffer("median_factor", torch.ones(()))

    def region_factor(self) -> torch.Tensor:
        return torch.sigmoid(self.region_logit)

    def cell_factor(self, library: torch.Tensor | None) -> torch.Tensor:
        if library is None:
            return self.median_factor
        return (library / self.ref_depth).clamp(1e-3, 1.0)

    def _log_p(self, raw, library):
        return (
            F.logsigmoid(raw)
            + F.logsigmoid(self.region_logit)
            + torch.log(self.cell_factor(library))
        )

    def nll(self, raw, x, library):
        log_p = self._log_p(raw, library).clamp_max(-1e-6)
        return -(x * log_p + (1.0 - x) * torch.log1p(-torch.exp(log_p)))

    def mean(self, raw, library):
        return torch.exp(self._log_p(raw, library))

    def normalised_mean(self, raw):
        return self.mean(raw, None)

    @torch.no_grad()
    def init_from_data(self, x, library) -> None:
        """Reference depth from the training cells; region factors start at each peak's frequency over what
        sigmoid(0) * mean cell factor gives, so the decoder starts near the marginal accessibility."""
        depth = np.asarray(library, dtype=np.float64).ravel()
        ref = (
            float(np.quantile(depth[depth > 0], self.depth_quantile)) if (depth > 0).any() else 1.0
        )
        factors = np.clip(depth / ref, 1e-3, 1.0)
        self.ref_depth.fill_(ref)
        # of the cells with an open peak: where most cells have none (a few targeted peaks, shallow data), their
        # floor of 1e-3 would be the median, and every prediction a thousandth of the observed frequency
        opened = factors[depth > 0]
        self.median_factor.fill_(float(np.median(opened)) if opened.size else 1.0)
        freq = np.asarray(x.mean(0)).ravel()
        start = np.clip(freq / (0.5 * factors.mean()), 1e-3, 0.99)
        self.region_logit.copy_(torch.as_tensor(np.log(start / (1 - start)), dtype=torch.float32))


LIKELIHOODS: dict[str, type[Likelihood]] = {
    c.name: c
    for c in (Gaussian, NegativeBinomial, Bernoulli, ZeroInflatedNB, NBMixture, BernoulliFactors)
}
# the data layer names the heads (venncell.data.spec) without importing torch; both lists must agree
assert set(LIKELIHOODS) == set(LIKELIHOOD_NAMES), (sorted(LIKELIHOODS), LIKELIHOOD_NAMES)
assert all(LIKELIHOODS[n].cell_nll is not Likelihood.cell_nll for n in NONZERO_LIKELIHOODS)


def make_likelihood(name: str, n_features: int) -> Likelihood:
    try:
        return LIKELIHOODS[name](n_features)
    except KeyError:
        raise ValueError(
            f"Unknown likelihood '{name}'; choose one of {sorted(LIKELIHOODS)}."
        ) from None
