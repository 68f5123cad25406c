"""Latent directions: the principal components of each latent block and the features that move along them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA

from venncell.data.transforms import log_normalised
from venncell.data.written_keys import drop_stale_keys

LOADINGS_KEY = "venn_loadings"


@dataclass
class Direction:
    """One principal component of a latent block and every feature's Pearson r with it."""

    block: str
    component: str
    explained_variance_ratio: float
    correlation: pd.Series  # indexed by (modality, feature)
    axis: np.ndarray  # the unit vector in the block's latent coordinates


def block_directions(data, idx: np.ndarray, lat: dict, cfg) -> list[Direction]:
    """The first ``cfg.n_components`` principal components of every latent block (shared, Venn regions, privates),
    fitted on the cells ``idx`` (rows of ``lat``), with each feature's correlation. Every cell, as MOFA+'s
    loadings: on a held-out subset alone a component's top genes can be chance."""
    feats = {m: _feature_matrix(data, m, idx) for m in data.specs}
    names = pd.MultiIndex.from_tuples(
        [(m, f) for m in feats for f in data.specs[m].feature_names], names=["modality", "feature"]
    )
    blocks = ["shared", *(b for b in lat if b.startswith("shared:"))]
    out = []
    for block in blocks + [f"private:{m}" for m in data.specs]:
        z = lat[block]
        ok = np.isfinite(z).all(1)
        n_comp = min(cfg.n_components, z.shape[1], int(ok.sum()) - 1)
        if n_comp < 1:
            continue
        pca = PCA(n_components=n_comp, random_state=cfg.seed).fit(z[ok])
        pcs = np.full((len(z), n_comp), np.nan)
        pcs[ok] = pca.transform(z[ok])
        corr = np.vstack([_correlate(pcs, x, present) for x, present in feats.values()])
        out += [
            Direction(
                block,
                f"PC{c + 1}",
                float(pca.explained_variance_ratio_[c]),
                pd.Series(corr[:, c], names),
                pca.components_[c],
            )
            for c in range(n_comp)
        ]
    return out


def dimension_view(directions: list[Direction], cfg) -> pd.DataFrame:
    """Top features (by |Pearson r|, all modalities) of each principal component of each latent block."""
    rows = []
    for d in directions:
        r = d.correlation.to_numpy()
        for rank, i in enumerate(np.argsort(-np.abs(r))[: cfg.top_n]):
            rows.append(
                {
                    "block": d.block,
                    "component": d.component,
                    "explained_variance_ratio": d.explained_variance_ratio,
                    "rank": rank + 1,
                    "modality": d.correlation.index[i][0],
                    "feature": d.correlation.index[i][1],
                    "correlation": float(r[i]),
                }
            )
    return pd.DataFrame(rows)


def direction_markers(directions: list[Direction], lat: dict, markers) -> pd.DataFrame:
    """How each direction goes with each marker (MOFA+'s factor-covariate association), over the analysed cells that
    have both: a continuous marker's Pearson r with the cells' coordinates along the direction, a categorical one's
    eta² (the share of the coordinates' variance between its categories). ``markers``: ``Marker`` objects, values
    per row of ``lat``. One row per direction and marker."""
    rows = []
    for d in directions:
        z = lat[d.block]
        coord = (z - np.nanmean(z, 0)) @ d.axis
        for mk in markers:
            ok = np.isfinite(coord) & ~pd.isna(mk.values)
            x, values = coord[ok], mk.values[ok]
            if mk.kind == "categorical":
                measure, value = "eta_squared", _eta_squared(x, values)
            else:
                measure, value = "pearson_r", _pearson(x, values.astype(float))
            rows.append(
                {
                    "block": d.block,
                    "component": d.component,
                    "marker": mk.name,
                    "n_cells": int(ok.sum()),
                    "measure": measure,
                    "association": value,
                }
            )
    return pd.DataFrame(
        rows, columns=["block", "component", "marker", "n_cells", "measure", "association"]
    )


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _eta_squared(x: np.ndarray, groups: np.ndarray) -> float:
    total = ((x - x.mean()) ** 2).sum()
    if len(x) < 3 or total == 0:
        return float("nan")
    codes = pd.factorize(pd.Series(groups).astype(str))[0]
    means = np.bincount(codes, weights=x) / np.bincount(codes)
    return float(((means[codes] - x.mean()) ** 2).sum() / total)


def write_loadings(mdata, directions: list[Direction]) -> None:
    """Every feature's Pearson r with every direction as ``mdata[m].varm["venn_loadings"]`` (one column per
    direction, ``"<block> <component>"``; MOFA+'s loadings); features setup dropped get NaN."""
    if not directions:  # none to show: an earlier run's loadings would read as this model's
        for ad in mdata.mod.values():
            ad.varm.pop(LOADINGS_KEY, None)
        return
    table = pd.DataFrame({f"{d.block} {d.component}": d.correlation for d in directions})
    mine = set(table.index.unique("modality"))
    for m, ad in mdata.mod.items():
        # another model's loadings of a modality this one lacks would read as this model's
        written = [LOADINGS_KEY] if m in mine else []
        drop_stale_keys(ad.varm, [LOADINGS_KEY], written, f"mdata['{m}'].varm")
        if m in mine:
            part = table.xs(m, level="modality")
            ad.varm[LOADINGS_KEY] = part.reindex(ad.var_names.astype(str)).set_axis(ad.var_names)


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
    # no cell has both the block and the modality (e.g. a region of modalities never measured together)
    if n < 2:
        return np.full((x.shape[1], z.shape[1]), np.nan)
    z = (z - z.mean(0)) / (z.std(0) + 1e-12)
    mean = np.asarray(x.mean(0)).ravel()
    sq = x.multiply(x).mean(0) if sp.issparse(x) else (np.asarray(x) ** 2).mean(0)
    sd = np.sqrt(np.maximum(np.asarray(sq).ravel() - mean**2, 0.0))
    cov = np.asarray(x.T @ z) / max(n, 1)  # z is centred, so x's mean drops out
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd[:, None] > 0, cov / sd[:, None], 0.0)
