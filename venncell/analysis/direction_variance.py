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

from venncell.module.regions import block_key


def direction_variance(directions, drops: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per direction (``block``, ``component``, ``explained_variance_ratio``) with ``ev_<m>`` for every
    modality: the EV of m's features the direction holds (module docstring; ``drops[m]``, from
    ``venncell.analysis.features.feature_attribution``), NaN where m's decoder does not read its block or m has
    no cell or no varying feature among those analysed."""
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
    for m, ev in drops.items():
        rows[f"ev_{m}"] = ev
    return rows


def centred_along(directions, m: str, module, z: dict[str, torch.Tensor]) -> dict[int, tuple]:
    """For each direction m's decoder reads (by its index in ``directions``): the decoder-input part it lies in
    (``shared``, ``private`` or a region's name), its unit axis and the analysed cells' mean coordinate along it.
    ``z``: those parts' latents of the analysed cells."""
    # the blocks m's decoder reads, by the decoder-input part each is
    owner = {"shared": "shared", f"private:{m}": "private"}
    owner.update({block_key(r): r for r in module.regions_of[m]})
    out = {}
    for i, d in enumerate(directions):
        if d.block in owner:
            part = owner[d.block]
            axis = torch.as_tensor(d.axis, dtype=z[part].dtype)
            out[i] = (part, axis, (z[part] @ axis).mean())
    return out


def drops_from_ev(ev: dict[str, np.ndarray], n_directions: int) -> np.ndarray:
    """Each direction's EV (module docstring) from per-feature EVs: ``ev["full"]`` and ``ev["direction:<i>"]``
    (point estimates in row 0; NaN for features without variance)."""
    out = np.full(n_directions, np.nan)
    full = ev["full"][0]
    defined = np.isfinite(full)
    if not defined.any():
        return out
    for key, values in ev.items():
        if key.startswith("direction:"):
            drop = full[defined] - values[0][defined]
            out[int(key.split(":", 1)[1])] = float(np.clip(drop, 0.0, None).mean())
    return out
