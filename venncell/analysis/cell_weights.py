"""Per-cell modality weights: how much of the evidence for a cell's shared latent comes from each modality.

For each cell and modality m, the evidence is the reconstruction gain of m's data from the cell's shared latent:
the NLL of m's shared-only decoder (an estimate of ``E[x_m | shared]``) at the population's mean latent minus the
NLL at the cell's own shared latent, times m's reconstruction weight (as in training: per-feature NLLs, modalities
weighted by ``modality_weights``). Gains below 0 count as 0. The weights are the gains normalised to sum to 1. A
modality whose data in a cell are noise, or belong to another cell, is explained no better by the cell's latent
than by the average one, and mostly gets a weight near 0 there -- the per-cell view users of weighted-nearest-neighbour
methods (Seurat's WNN) look at. The cell's shared latent is the one fitted against every decoder: stage 1's table
for the model's own cells, test-time refinement for new cells. A modality the cell lacks has weight 0; a cell
whose modalities all gain nothing gets equal weights over those it has.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from venncell.data.dataset import make_loader


@torch.no_grad()
def cell_modality_weights(
    module,
    data,
    reference: np.ndarray,
    cells: np.ndarray | None = None,
    batch_size: int = 1024,
    population: np.ndarray | None = None,
) -> pd.DataFrame:
    """``cells`` (default all) x modalities weights (rows sum to 1) from ``reference``, those cells' fitted
    shared latents; ``population`` (default ``reference``): the latents whose mean is the baseline."""
    cells = np.arange(data.n_cells) if cells is None else np.asarray(cells)
    module.eval()
    # the baseline: the population's mean latent (other cells' latents would favour the cell's own latent when
    # refinement fitted it to noise)
    population = reference if population is None else population
    mean_latent = torch.as_tensor(np.nanmean(population, axis=0), dtype=torch.float32)
    gains = np.zeros((len(cells), len(module.modalities)))
    present = np.zeros_like(gains, dtype=bool)
    pos = 0
    for batch in make_loader(data, cells, batch_size, shuffle=False):
        n = len(batch)
        z = torch.as_tensor(reference[pos : pos + n], dtype=torch.float32)
        for j, m in enumerate(module.modalities):
            mask = batch.mask[m].numpy()
            nll = [
                module.nll(m, module.decode_raw(m, zz, None, batch, shared_only=True), batch)
                for zz in (mean_latent.expand_as(z), z)
            ]
            gain = (nll[0] - nll[1]).numpy() * module.weights[m]
            gains[pos : pos + n, j] = np.where(mask, np.clip(gain, 0.0, None), 0.0)
            present[pos : pos + n, j] = mask
        pos += n
    total = gains.sum(1, keepdims=True)
    equal = present / np.maximum(present.sum(1, keepdims=True), 1)
    weights = np.where(total > 0, gains / np.where(total > 0, total, 1.0), equal)
    return pd.DataFrame(
        weights, index=np.asarray(data.obs_names)[cells], columns=module.modalities
    )
