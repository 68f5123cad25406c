"""Spectral initialisation of the stage-1 latent tables.

Latent optimisation from random starts settles in poor local optima: a private factor that a
random shared latent happens to encode stays there, and a private latent the decoder ignores at
the start dies. A linear start that already puts shared signal in the shared table and each
modality's own signal in its private table avoids both; stage 1 then refines it nonlinearly.

Shared: generalised CCA (MAXVAR) — the top principal components of the concatenated *whitened*
per-modality PCA scores are the directions most correlated across modalities.
Private m: top principal components of modality m's PCA scores after regressing out the shared start.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from venncell.data.dataset import MultiModalData, encoder_transform


def _modality_scores(data: MultiModalData, m: str, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    spec = data.specs[m]
    batch = data.get(rows)
    x = encoder_transform(spec, batch[f"x:{m}"], batch[f"lib:{m}"]).numpy()
    k = max(1, min(k, x.shape[1] - 1, x.shape[0] - 1))
    return PCA(n_components=k, random_state=seed, svd_solver="randomized").fit_transform(x.astype(np.float64))


def _unit(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(0)) / (z.std(0) + 1e-8)


def spectral_init(data: MultiModalData, shared_dim: int, private_dims: dict[str, int], n_pcs: int = 30,
                  seed: int = 0, max_cells: int = 50_000) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Unit-variance starting latents for every cell, or None when no cell has every modality.

    Fitted on (at most ``max_cells``) cells that have every modality; every other cell starts from
    random values, as it would without this initialisation.
    """
    rng = np.random.default_rng(seed)
    mods = list(data.specs)
    complete = np.flatnonzero(np.logical_and.reduce([data.present(m) for m in mods]))
    if len(complete) < max(10, shared_dim + 2):
        return None
    fit_rows = complete if len(complete) <= max_cells else rng.choice(complete, max_cells, replace=False)
    fit_rows = np.sort(fit_rows)
    scores = {m: _modality_scores(data, m, fit_rows, n_pcs, seed) for m in mods}
    whitened = np.hstack([_unit(s) for s in scores.values()])
    pca = PCA(n_components=min(shared_dim, whitened.shape[1]), random_state=seed)
    shared_fit = _unit(pca.fit_transform(whitened))
    shared = rng.normal(size=(data.n_cells, shared_dim))
    shared[fit_rows, : shared_fit.shape[1]] = shared_fit
    private = {}
    for m in mods:
        s = scores[m]
        beta, *_ = np.linalg.lstsq(np.c_[shared_fit, np.ones(len(s))], s, rcond=None)
        resid = s - np.c_[shared_fit, np.ones(len(s))] @ beta
        d = private_dims[m]
        comp = PCA(n_components=min(d, resid.shape[1]), random_state=seed).fit_transform(resid)
        block = rng.normal(size=(data.n_cells, d))
        block[fit_rows, : comp.shape[1]] = _unit(comp)
        private[m] = block
    return shared, private
