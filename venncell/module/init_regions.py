"""The spectral start when the model has Venn regions (``ModelConfig.venn_regions``): which starting directions
go to the all-modality shared block and which to a region.

Generalised CCA finds directions correlated across modalities, but a direction that two of three modalities share
is as "correlated" to it as one that all three share, so the plain start puts region factors into the shared
block, and stage 1 does not move them out (the region blocks start empty and the decoders learn to ignore them).

Here, within the leading GCCA directions, each region gets the directions that its members' whitened PCA scores
predict and the other modalities' scores do not: the top generalised eigenvectors of (members' predictable
covariance, outsiders' predictable covariance). A direction is kept only when every member predicts it by at least
``MARGIN`` (R^2) more than the best outsider, so a region the data do not support starts empty (small random). The
shared block starts from the leading directions left once the regions' are taken out.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg

log = logging.getLogger(__name__)
MARGIN = 0.3  # R^2 by which each member must out-predict every outsider for a direction to start a region
SHARED_R2 = 0.7  # R^2 every modality must reach on a direction for it to start the shared block


def _predicted(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares prediction of y's columns from x (with an intercept)."""
    x1 = np.c_[x, np.ones(len(x))]
    beta, *_ = np.linalg.lstsq(x1, y, rcond=None)
    return x1 @ beta


def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1.0 - (y - pred).var(0) / (y.var(0) + 1e-12)


def venn_components(
    white_fit: dict[str, np.ndarray],
    shared_dim: int,
    regions: dict[str, tuple[str, ...]],
    region_dims: dict[str, int],
    seed: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Starting shared block and region blocks of the fit rows (raw scores; the caller rescales them). A region
    with fewer supported directions than its size comes back narrower (the caller pads it)."""
    from sklearn.decomposition import PCA  # loaded on use: it costs a second at import

    mods = list(white_fit)
    whitened = np.hstack([white_fit[m] for m in mods])
    k = min(shared_dim + sum(region_dims.values()), whitened.shape[1], len(whitened) - 1)
    comps = PCA(n_components=k, random_state=seed).fit_transform(whitened)
    comps = (comps - comps.mean(0)) / (comps.std(0) + 1e-12)
    pred = {m: _predicted(white_fit[m], comps) for m in mods}
    cov = {m: p.T @ p / len(p) for m, p in pred.items()}  # what m predicts of the GCCA subspace
    total = comps.T @ comps / len(comps)
    out: dict[str, np.ndarray] = {}
    taken = []
    for r, members in regions.items():
        outsiders = [m for m in mods if m not in members]
        inside = sum(cov[m] for m in members) / len(members)
        outside = sum(cov[m] for m in outsiders) / len(outsiders)
        _, vecs = scipy.linalg.eigh(inside, outside + 0.05 * total)
        keep = []
        for w in vecs[:, ::-1][:, : region_dims[r]].T:  # leading first
            z = comps @ w
            r2 = {m: float(_r2(pred[m] @ w, z)) for m in mods}
            if min(r2[m] for m in members) - max(r2[m] for m in outsiders) >= MARGIN:
                keep.append(z)
        out[r] = np.column_stack(keep) if keep else np.zeros((len(comps), 0))
        taken += keep
    rest = comps
    if taken:  # the shared start: what is left once the region directions are regressed out
        rest = comps - _predicted(np.column_stack(taken), comps)
    n_shared = min(shared_dim, rest.shape[1])
    shared = PCA(n_components=n_shared, random_state=seed).fit_transform(rest)
    # only directions every modality predicts start the shared block; the others would seed it with region signal
    seen_by_all = np.min([_r2(_predicted(white_fit[m], shared), shared) for m in mods], axis=0)
    shared = shared[:, seen_by_all >= SHARED_R2]
    log.info(
        "Spectral start with Venn regions: %d shared starting directions, per region %s.",
        shared.shape[1],
        {r: z.shape[1] for r, z in out.items()},
    )
    return shared, out
