"""Variance explained per latent direction and modality: MOFA+'s factor-by-view R² for VennCell's nonlinear decoders.

A direction is a principal component of a latent block (``venncell.analysis.directions``). Its explained variance
in modality m is what m's full decoder loses when every cell's coordinate along that direction alone is set to the
cells' mean, the rest of each latent kept: the mean over m's features of ``max(EV(full) - EV(without it), 0)``, on
the decoders' normalised scale (``venncell.analysis.features``). For a linear decoder fitted by least squares that
is the direction's R² (the components are uncorrelated), so the values read like MOFA+'s (which pools the features
into one R² where these are per-feature means); decoders are nonlinear, so a block's directions need not add up to
the block's own part. A direction m's decoder does not read (another
modality's private block, a region without m) has none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from venncell.analysis.features import normalised_observed
from venncell.module.regions import block_key

CHUNK = 1024


def direction_variance(module, data, idx: np.ndarray, lat: dict, directions) -> pd.DataFrame:
    """One row per direction (``block``, ``component``, ``explained_variance_ratio``) with ``ev_<m>`` for every
    modality: the EV of m's features the direction holds (module docstring), NaN where m's decoder does not read
    its block or m has no cell or no varying feature among ``idx``."""
    rows = pd.DataFrame(
        [
            {
                "block": d.block,
                "component": d.component,
                "explained_variance_ratio": d.explained_variance_ratio,
            }
            for d in directions
        ]
    )
    for m in data.specs:
        rows[f"ev_{m}"] = _modality_drops(module, data, m, idx, lat, directions)
    return rows


def _reads(module, m: str, block: str) -> bool:
    return block in ("shared", f"private:{m}") or block in {
        block_key(r) for r in module.regions_of[m]
    }


def _modality_drops(module, data, m, idx, lat, directions) -> np.ndarray:
    out = np.full(len(directions), np.nan)
    keep = data.present(m)[idx]
    cells, pos = idx[keep], np.flatnonzero(keep)
    n = len(cells)
    read = [i for i, d in enumerate(directions) if _reads(module, m, d.block)]
    if n < 3 or not read:
        return out
    blocks = {"shared": "shared", "private": f"private:{m}"}
    blocks.update({r: block_key(r) for r in module.regions_of[m]})
    z = {b: torch.as_tensor(lat[key][pos]) for b, key in blocks.items()}
    owner = {key: b for b, key in blocks.items()}
    axes = [
        torch.as_tensor(directions[i].axis, dtype=z[owner[directions[i].block]].dtype)
        for i in read
    ]
    centre = [(z[owner[directions[i].block]] @ a).mean() for i, a in zip(read, axes)]
    dec, lik = module.decoders[m], module.decoders[m].likelihood
    spec = data.specs[m]

    def predict(parts, b):
        regions = {r: parts[r] for r in module.regions_of[m]}
        x = module.decoder_input(m, parts["shared"], parts["private"], regions)
        return lik.normalised_mean(dec(x, b)).double().numpy()

    sy = syy = sse_full = 0.0
    sse = np.zeros((len(read), spec.n_features))
    module.eval()
    with torch.no_grad():
        for start in range(0, n, CHUNK):
            rows = torch.arange(start, min(start + CHUNK, n))
            batch = data.get(cells[rows.numpy()])
            y = normalised_observed(spec, batch.x[m], batch.lib[m]).double().numpy()
            sy, syy = sy + y.sum(0), syy + (y**2).sum(0)
            parts = {b: v[rows] for b, v in z.items()}
            sse_full = sse_full + ((y - predict(parts, batch.batch)) ** 2).sum(0)
            for j, i in enumerate(read):
                b, axis = owner[directions[i].block], axes[j]
                shift = (centre[j] - parts[b] @ axis)[:, None] * axis[None, :]
                pred = predict({**parts, b: parts[b] + shift}, batch.batch)
                sse[j] += ((y - pred) ** 2).sum(0)
    sst = syy - sy**2 / n
    defined = sst > 0
    if not defined.any():
        return out
    ev_full = 1.0 - sse_full[defined] / sst[defined]
    for j, i in enumerate(read):
        ev_marg = 1.0 - sse[j, defined] / sst[defined]
        out[i] = float(np.clip(ev_full - ev_marg, 0.0, None).mean())
    return out
