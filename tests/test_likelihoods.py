"""Likelihood heads against scipy's reference densities: a wrong formula or shape fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from venncell.nn import make_likelihood


def test_negative_binomial_matches_scipy():
    rng = np.random.default_rng(0)
    lik = make_likelihood("nb", 5)
    with torch.no_grad():
        lik.log_theta.copy_(torch.log(torch.tensor([0.5, 1.0, 3.0, 10.0, 50.0])))
    raw = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float32)
    library = torch.tensor([[100.0], [1000.0], [50.0], [3000.0]])
    x = torch.tensor(rng.poisson(20, size=(4, 5)), dtype=torch.float32)
    mu = (torch.softmax(raw, -1) * library).numpy()
    theta = np.exp(lik.log_theta.detach().numpy())
    ref = -stats.nbinom.logpmf(x.numpy(), theta, theta / (theta + mu))
    got = lik.nll(raw, x, library).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lik.mean(raw, library).detach().numpy(), mu, rtol=1e-5)
    np.testing.assert_allclose(lik.normalised_mean(raw).sum(-1).detach().numpy(), 1.0, rtol=1e-5)


def test_bernoulli_matches_scipy():
    lik = make_likelihood("bernoulli", 3)
    raw = torch.tensor([[0.0, 2.0, -1.0], [3.0, -2.0, 0.5]])
    x = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    p = 1 / (1 + np.exp(-raw.numpy()))
    np.testing.assert_allclose(lik.nll(raw, x, None).numpy(), -stats.bernoulli.logpmf(x.numpy(), p), rtol=1e-5)


def test_gaussian_matches_scipy():
    lik = make_likelihood("gaussian", 2)
    with torch.no_grad():
        lik.log_scale.copy_(torch.tensor([0.0, np.log(2.0)]))
    raw = torch.tensor([[0.5, -1.0]])
    x = torch.tensor([[1.5, 3.0]])
    ref = -stats.norm.logpdf(x.numpy(), raw.numpy(), np.array([1.0, 2.0]))
    np.testing.assert_allclose(lik.nll(raw, x, None).detach().numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("name,data", [("nb", "counts"), ("bernoulli", "binary"), ("gaussian", "real")])
def test_fitting_recovers_a_known_mean(name, data):
    """Maximising each likelihood over a free mean lands on the data's mean (catches sign/shape bugs)."""
    rng = np.random.default_rng(1)
    if data == "counts":
        p = np.array([0.1, 0.3, 0.6])
        x = rng.multinomial(200, p, size=500).astype(np.float32)
        target = p
    elif data == "binary":
        target = np.array([0.2, 0.5, 0.9])
        x = (rng.random((500, 3)) < target).astype(np.float32)
    else:
        target = np.array([-1.0, 0.0, 2.0])
        x = (target + rng.normal(size=(2000, 3))).astype(np.float32)
    lik = make_likelihood(name, 3)
    raw = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([raw, *lik.parameters()], lr=0.05)
    xt = torch.tensor(x)
    lib = xt.sum(1, keepdim=True) if name == "nb" else None
    for _ in range(1500):
        opt.zero_grad()
        lik.nll(raw.expand(len(xt), 3), xt, lib).mean().backward()
        opt.step()
    est = lik.normalised_mean(raw).detach().numpy().ravel()
    mle = x.sum(0) / x.sum() if name == "nb" else x.mean(0)  # the closed-form maximum-likelihood mean
    np.testing.assert_allclose(est, mle, atol=0.02)
    np.testing.assert_allclose(est, target, atol=0.1)
