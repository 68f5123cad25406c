"""Per-cell modality weights on synthetic ground truth: in cells whose protein data are scrambled, protein's
weight drops."""

from __future__ import annotations

import numpy as np
import pytest

from venncell import VennCell, make_synthetic

MODS = {"rna": 120, "protein": 30}
N_TRAIN, N_NEW = 800, 400


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    mdata, _ = make_synthetic(n_cells=N_TRAIN + N_NEW, modalities=dict(MODS), seed=4)
    train, new = mdata[:N_TRAIN].copy(), mdata[N_TRAIN:].copy()
    VennCell.setup_mudata(train)
    model = VennCell(train, shared_dim=4, private_dim=2, seed=0)
    model.train(
        run_dir=tmp_path_factory.mktemp("w"),
        stage1_epochs=40,
        stage2_epochs=15,
        batch_size=128,
        progress_bar="none",
    )
    return model, new


def test_weights_of_the_training_cells(trained):
    model, _ = trained
    w = model.cell_modality_weights()
    assert list(w.columns) == list(MODS) and np.allclose(w.sum(1), 1.0)
    assert ((w > 0) & (w < 1)).all().all()
    np.testing.assert_array_equal(
        model.mdata.obs["venn_weight_protein"].to_numpy(), w["protein"].to_numpy()
    )


def test_scrambled_protein_loses_weight(trained):
    """The protein rows of half the new cells are shuffled among themselves, so there protein describes another
    cell than RNA does; measured medians 0.21 (scrambled) vs 0.43 (intact). Weights that ignore the data (equal
    weights, one modality's everywhere) fail."""
    model, new = trained
    new = new.copy()
    half = N_NEW // 2
    x = new["protein"].X.toarray()
    x[:half] = x[np.random.default_rng(0).permutation(half)]
    new.mod["protein"].X = x
    w = model.cell_modality_weights(new, refine_epochs=20)
    scrambled, intact = w["protein"].iloc[:half].median(), w["protein"].iloc[half:].median()
    assert scrambled < intact - 0.1, (scrambled, intact)
    assert "venn_weight_rna" in new.obs


def test_a_missing_modality_has_weight_zero(trained):
    model, new = trained
    new = new[:60].copy()
    new.mod["protein"] = new["protein"][:30].copy()
    new.update()
    w = model.cell_modality_weights(new, refine_epochs=2, write_obs=False)
    lacks = ~np.asarray(new.obsm["protein"]).astype(bool).ravel()
    assert lacks.sum() == 30
    assert (w.loc[lacks, "protein"] == 0).all() and (w.loc[lacks, "rna"] == 1).all()
    assert np.allclose(w.sum(1), 1.0) and "venn_weight_rna" not in new.obs
