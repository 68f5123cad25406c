"""Per-cell modality weights on synthetic ground truth: in cells whose protein data are noise or another cell's,
protein's weight drops to near 0."""

from __future__ import annotations

import numpy as np
import pytest

from venncell import VennCell, VennCellInputError, make_synthetic

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
    assert ((w >= 0) & (w <= 1)).all().all() and w["protein"].median() > 0.1
    np.testing.assert_array_equal(
        model.mdata.obs["venn_weight_protein"].to_numpy(), w["protein"].to_numpy()
    )


@pytest.mark.parametrize("corruption", ["noise", "scrambled"])
def test_corrupted_protein_gets_no_weight(trained, corruption):
    """In half of the new cells protein is replaced by pure Poisson noise at the cell's depth, or by the protein
    of another of those cells; there its weight must be near 0, elsewhere not (measured medians: noise 0.00,
    scrambled 0.06, intact 0.27). Weights that ignore the data (equal, one modality's everywhere) fail."""
    model, new = trained
    new = new.copy()
    half = N_NEW // 2
    rng = np.random.default_rng(0)
    x = new["protein"].X.toarray()
    if corruption == "noise":
        depth = x[:half].sum(1, keepdims=True)
        x[:half] = rng.poisson(depth / x.shape[1], size=(half, x.shape[1]))
    else:
        x[:half] = x[rng.permutation(half)]
    new.mod["protein"].X = x
    w = model.cell_modality_weights(new, refine_epochs=20)
    bad, intact = w["protein"].iloc[:half], w["protein"].iloc[half:]
    assert bad.median() <= 0.1 and intact.median() >= 0.15, (bad.median(), intact.median())
    assert (bad < intact.median()).mean() >= 0.65  # measured 0.75 (noise), 0.79 (scrambled)
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


def test_refinement_of_the_training_cells_is_refused(trained):
    """The training cells' reference is their stage-1 latents: refine_epochs there was accepted and ignored."""
    model, _ = trained
    with pytest.raises(
        VennCellInputError, match="refine_epochs=5.*on the training cells.*Drop refine_epochs"
    ):
        model.cell_modality_weights(refine_epochs=5)
    with pytest.raises(VennCellInputError, match="on the training cells"):
        model.cell_modality_weights(model.mdata.copy(), refine_epochs=5)


def test_training_cells_passed_again_keep_their_weights(trained):
    """A copy, reordering or subset of the training MuData is the training cells: their stage-1 latents stay the
    reference (as in get_latent_representation), not a refinement of them as new cells."""
    model, _ = trained
    full = model.cell_modality_weights(write_obs=False)
    order = np.random.default_rng(1).permutation(model.mdata.n_obs)[:100]
    some = model.mdata[model.mdata.obs_names[order]].copy()
    w = model.cell_modality_weights(some)
    np.testing.assert_allclose(w.to_numpy(), full.to_numpy()[order], rtol=1e-5, atol=1e-6)
    assert list(w.index) == list(some.obs_names)
    np.testing.assert_allclose(some.obs["venn_weight_rna"].to_numpy(), w["rna"].to_numpy())
