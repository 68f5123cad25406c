"""The spectral start of the latent tables for cells outside the rows it was fitted on: cells beyond ``max_cells``
(large data sets) and cells that lack a modality (partial pairing). They used to start from random values."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest

from test_batches_pairing import MODS, _partially_paired
from venncell import VennCell, make_synthetic
from venncell.analysis.recovery import cv_r2
from venncell.model.init import spectral_init


def _duplicated(n: int = 300, batches: bool = False):
    """Every cell twice (cell i and cell i + n are identical), so that a copy outside the fit rows can be compared
    with its twin."""
    kw = dict(n_batches=2, batch_effect=1.0) if batches else {}
    once, truth = make_synthetic(n_cells=n, modalities=dict(MODS), seed=6, **kw)
    mods = {}
    for m in MODS:
        twice = ad.concat([once[m], once[m]], index_unique=None)
        twice.obs_names = [f"c{i}" for i in range(2 * n)]
        mods[m] = twice
    mdata = md.MuData(mods)
    if batches:
        mdata.obs["batch"] = np.tile(once.obs["batch"].to_numpy(), 2)
    return mdata, np.vstack([truth.shared, truth.shared])


@pytest.mark.filterwarnings("ignore:Observation names are not unique")  # the twins' per-modality concat, renamed after
@pytest.mark.parametrize("batches", [False, True])
def test_cells_beyond_max_cells_start_where_their_twins_start(batches):
    """Fitted on half of the cells (``max_cells``), the start places every other cell by the same maps: each cell
    starts exactly where its identical twin starts, whichever of the two the fit rows drew (with random starts
    for the rest, the twins split between fit rows and the rest would differ)."""
    mdata, shared_truth = _duplicated(batches=batches)
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"},
                          batch_key="batch" if batches else None)
    model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0)
    n = mdata.n_obs // 2
    shared, private = spectral_init(model.data, 4, model.module.private_dims, seed=0, max_cells=n)
    np.testing.assert_allclose(shared[:n], shared[n:], atol=1e-6)
    for m, block in private.items():
        np.testing.assert_allclose(block[:n], block[n:], atol=1e-6, err_msg=m)
    assert cv_r2(shared, shared_truth, probe="linear") > 0.8


def test_cells_lacking_a_modality_get_a_projected_start():
    """RNA-only cells: their shared start is predicted from their RNA by the map fitted on the paired cells, so it
    recovers the true shared factors nearly as well as the paired cells' start (a random start scores ~0)."""
    mdata, truth, order, with_prot = _partially_paired()
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0)
    shared = model.module.shared_table.weight.detach().numpy()
    private_rna = model.module.private_tables["rna"].weight.detach().numpy()
    has = np.array([c in with_prot for c in mdata.obs_names])
    target, own = truth.shared[order], truth.private["rna"][order]
    paired, rna_only = cv_r2(shared[has], target[has]), cv_r2(shared[~has], target[~has])
    assert rna_only > 0.8 and rna_only > paired - 0.1, (rna_only, paired)
    assert cv_r2(private_rna[~has], own[~has]) > 0.7
    assert cv_r2(shared[~has], own[~has]) < 0.15, "the RNA-private factors must not start in the shared block"
