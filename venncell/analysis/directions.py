"""Latent directions: the principal components of each latent block and the features that move along them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA

from venncell.data.transforms import log_normalised


def dimension_view(data, is_train: np.ndarray, idx: np.ndarray, lat: dict, cfg) -> pd.DataFrame:
    """Top features (by |Pearson r|, all modalities) of each principal component of each latent block."""
    held_out = ~is_train[idx]
    pos = np.flatnonzero(held_out) if held_out.sum() >= 50 else np.arange(len(idx))
    feats = {m: _feature_matrix(data, m, idx[pos]) for m in data.specs}
    rows = []
    for block in ["shared"] + [f"private:{m}" for m in data.specs]:
        z = lat[block][pos]
        ok = np.isfinite(z).all(1)
        n_comp = min(cfg.n_components, z.shape[1], int(ok.sum()) - 1)
        if n_comp < 1:
            continue
        pca = PCA(n_components=n_comp, random_state=cfg.seed).fit(z[ok])
        pcs = np.full((len(z), n_comp), np.nan)
        pcs[ok] = pca.transform(z[ok])
        corr = np.vstack([_correlate(pcs, x, present) for x, present in feats.values()])
        names = [(m, f) for m in feats for f in data.specs[m].features]
        for c in range(n_comp):
            for rank, i in enumerate(np.argsort(-np.abs(corr[:, c]))[: cfg.top_n]):
                rows.append(
                    {
                        "block": block,
                        "component": f"PC{c + 1}",
                        "explained_variance_ratio": float(pca.explained_variance_ratio_[c]),
                        "rank": rank + 1,
                        "modality": names[i][0],
                        "feature": names[i][1],
                        "correlation": float(corr[i, c]),
                    }
                )
    return pd.DataFrame(rows)


def _feature_matrix(data, m: str, cells: np.ndarray):
    present = data.present(m)[cells]
    x, lib = data.rows(m, cells[present])
    return log_normalised(data.specs[m], x, lib), present


def _correlate(pcs: np.ndarray, x, present: np.ndarray) -> np.ndarray:
    """Pearson r of every feature with every component, over cells that have both (sparse-friendly)."""
    z = pcs[present]
    ok = np.isfinite(z).all(1)
    z, x = z[ok], x[ok]
    n = len(z)
    z = (z - z.mean(0)) / (z.std(0) + 1e-12)
    mean = np.asarray(x.mean(0)).ravel()
    sq = x.multiply(x).mean(0) if sp.issparse(x) else (np.asarray(x) ** 2).mean(0)
    sd = np.sqrt(np.maximum(np.asarray(sq).ravel() - mean**2, 0.0))
    cov = np.asarray(x.T @ z) / max(n, 1)  # z is centred, so x's mean drops out
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd[:, None] > 0, cov / sd[:, None], 0.0)
