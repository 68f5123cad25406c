"""Per-cell modality weights: how much each modality determines a cell's shared latent.

Each modality's encoder alone gives an estimate ``z_m`` of the cell's shared latent; the reference ``z`` is the
cell's latent fitted against every decoder at once (stage 1's table for the model's own cells, test-time
refinement for new cells). With ``e_m = |z_m - z|^2`` (standardised per dimension), the weight of m is
``(1 / e_m) / sum_k (1 / e_k)``: the weight an inverse-variance combination of the modality estimates would give
that cell. A modality that is noisy, uninformative or corrupted in a cell lands far from the reference there and
gets little weight -- the quantity users of weighted-nearest-neighbour methods (Seurat's WNN) look at per cell.
A modality the cell lacks has weight 0; a cell with one modality gives it weight 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from venncell.module.embed import embed_cells


def cell_modality_weights(
    module, data, reference: np.ndarray, cells: np.ndarray | None = None
) -> pd.DataFrame:
    """``cells`` (default all) x modalities weights (rows sum to 1) against ``reference`` (those cells' shared
    latents)."""
    cells = np.arange(data.n_cells) if cells is None else np.asarray(cells)
    scale = np.nanstd(reference, axis=0) + 1e-8  # each dimension counts alike
    err = {}
    for m in module.modalities:
        z_m = embed_cells(module, data, cells, modalities=[m])["shared"]
        err[m] = (((z_m - reference) / scale) ** 2).mean(1)  # NaN where the cell lacks m
    e = np.column_stack([err[m] for m in module.modalities])
    precision = np.where(np.isnan(e), 0.0, 1.0 / np.maximum(e, 1e-12))
    total = precision.sum(1, keepdims=True)
    weights = np.divide(precision, total, out=np.full_like(precision, np.nan), where=total > 0)
    return pd.DataFrame(
        weights, index=np.asarray(data.obs_names)[cells], columns=module.modalities
    )
