"""The probes every analysis shares: cross-validated ridge (linear) and k-nearest-neighbour (nonlinear)
predictions of a target from a latent block, bootstrap weights and intervals.

Both probes are linear smoothers of the target, so a permutation test (refit on permuted targets) costs one matrix
product per permutation.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import KFold

PROBES = ("linear", "knn")


def out_of_fold(
    x: np.ndarray, y: np.ndarray, folds, probe: str, k: int = 15, ridge_alpha: float = 1.0
) -> np.ndarray:
    """Held-out predictions of every column of ``y`` from ``x`` (standardised on each training fold).

    Parameters
    ----------
    x
        Cells x latent dimensions.
    y
        Cells x targets.
    folds
        (train, test) index pairs covering every cell once as a test cell.
    probe
        ``linear`` (ridge) or ``knn`` (mean of the nearest training cells).
    k
        Neighbours of the ``knn`` probe.
    ridge_alpha
        Ridge penalty of the ``linear`` probe.
    """
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    pred = np.empty_like(y, dtype=float)
    for train, test in folds:
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
        xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
        if probe == "linear":
            ybar = y[train].mean(0)
            coef = np.linalg.solve(
                xtr.T @ xtr + ridge_alpha * np.eye(x.shape[1]), xtr.T @ (y[train] - ybar)
            )
            pred[test] = ybar + xte @ coef
        else:
            kk = min(k, len(train))
            nbr = knn_indices(xtr, xte, kk)
            avg = sp.csr_matrix(
                (np.full(nbr.size, 1.0 / kk), nbr.ravel(), np.arange(0, nbr.size + 1, kk)),
                shape=(len(test), len(train)),
            )
            pred[test] = avg @ y[train]
    return pred


def knn_indices(xtr: np.ndarray, xte: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Brute-force k nearest training rows of each test row (plain numpy: latents are low-dimensional and folds
    small, where a search structure's overhead would dominate)."""
    sq_tr = (xtr**2).sum(1)
    out = np.empty((len(xte), k), dtype=np.int64)
    for start in range(0, len(xte), chunk):
        block = xte[start : start + chunk]
        d = (
            sq_tr[None, :] - 2.0 * block @ xtr.T
        )  # + |x_test|^2, constant per row: irrelevant to the ranking
        out[start : start + chunk] = np.argpartition(d, k - 1, axis=1)[:, :k]
    return out


def cv_r2(
    x: np.ndarray,
    y: np.ndarray,
    probe: str = "knn",
    n_folds: int = 5,
    seed: int = 0,
    k: int = 15,
    ridge_alpha: float = 1.0,
) -> float:
    """Cross-validated R^2 of ``y`` from ``x`` (variance-weighted over ``y``'s columns), pooled over the folds."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float).reshape(len(y), -1)
    folds = list(KFold(n_folds, shuffle=True, random_state=seed).split(x))
    pred = out_of_fold(x, y, folds, probe, k, ridge_alpha)
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def boot_weights(n: int, n_boot: int, rng) -> np.ndarray:
    """(1 + n_boot) x n cell weights: row 0 all ones (the estimate itself), then multinomial resamples."""
    return np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])


def weighted_sst(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Total sum of squares of y's columns (pooled) under each row of cell weights."""
    total = weights.sum(1)
    return weights @ (y**2).sum(1) - ((weights @ y) ** 2).sum(1) / total


def with_ci(name: str, draws: np.ndarray, ci: float) -> dict:
    """Row 0 is the estimate; the rest are bootstrap draws -> percentile interval (NaN draws ignored)."""
    draws = np.asarray(draws, dtype=float)
    if len(draws) < 2:
        return {name: draws[0], f"{name}_lo": draws[0], f"{name}_hi": draws[0]}
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # all-NaN columns: features nothing explains
        q = np.nanpercentile(draws[1:], [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100], axis=0)
    # no interval for an estimate that is undefined (a feature's fraction when its decoder explains nothing)
    q = np.where(np.isnan(draws[0]), np.nan, q)
    return {name: draws[0], f"{name}_lo": q[0], f"{name}_hi": q[1]}


def centred_ci(name: str, draws: np.ndarray, ci: float, bounds=(0.0, 1.0)) -> dict:
    """``with_ci`` with the draws moved so that their median is the estimate, then kept within ``bounds`` (the
    quantity's range): the interval keeps the bootstrap's spread but not its shift, which it does not correct
    either. For a mean of per-feature ratios over thousands of features, resampling cells shifts the draws (the
    ratios' curvature, clipping) by more than they spread, and a plain percentile interval would exclude the
    estimate."""
    draws = np.asarray(draws, dtype=float)
    if len(draws) < 2 or np.all(np.isnan(draws[1:])):
        return with_ci(name, draws, ci)
    shift = np.nanmedian(draws[1:], axis=0) - draws[0]
    out = with_ci(name, np.concatenate([draws[:1], draws[1:] - shift]), ci)
    for k in (f"{name}_lo", f"{name}_hi"):
        out[k] = np.clip(out[k], *bounds)
    return out
