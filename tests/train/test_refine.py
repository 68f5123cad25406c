"""Test-time refinement: new cells' latents optimised against the frozen decoders (Stage1Plan, networks frozen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from venncell import VennCell, make_synthetic
from venncell.analysis.probes import cv_r2
from venncell.data.validate import VennCellInputError
from venncell.module.embed import embed_cells
from venncell.train.refine import reconstruction_nll

MODS = {"rna": 60, "protein": 20, "atac": 60}
N_TRAIN, N_NEW = 400, 200


@pytest.fixture(scope="module")
def trained():
    mdata, truth = make_synthetic(n_cells=N_TRAIN + N_NEW, modalities=dict(MODS), seed=3)
    train, new = mdata[:N_TRAIN].copy(), mdata[N_TRAIN:].copy()
    VennCell.setup_mudata(train, modalities={m: m for m in MODS})
    model = VennCell(train, shared_dim=4, private_dim=2, seed=0)
    model.train(stage1_epochs=30, stage2_epochs=10, batch_size=64, progress_bar="none")
    new_truth = {k: v[N_TRAIN:] for k, v in truth.blocks().items()}
    return model, new, new_truth


def _weights(model):
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def test_refinement_lowers_nll_and_keeps_every_weight(trained):
    model, new, _ = trained
    before = _weights(model)
    data = model._data_for(new)
    enc = embed_cells(model.module, data)
    ref = model.refine(new, epochs=15)
    nll_enc = reconstruction_nll(model.module, data, enc)
    nll_ref = reconstruction_nll(model.module, data, ref)
    # Refinement lowers the objective it optimises, the modality-weighted NLL, by a real amount; one
    # modality may give a little ground to the others, never much.
    w = {m: float(model.module.weights[m]) for m in MODS}
    total_enc = sum(w[m] * nll_enc[m] for m in MODS)
    total_ref = sum(w[m] * nll_ref[m] for m in MODS)
    assert total_ref < 0.99 * total_enc, (nll_enc, nll_ref, w)
    for m in MODS:
        assert nll_ref[m] < 1.02 * nll_enc[m], (m, nll_enc, nll_ref)
    after = model.module.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # networks and the training cells' latent tables alike
        assert torch.equal(before[k], after[k]), k
    assert not np.allclose(ref["shared"], enc["shared"])


def test_refinement_is_deterministic_with_a_seed(trained):
    model, new, _ = trained
    a = model.refine(new, epochs=3, seed=7)
    b = model.refine(new, epochs=3, seed=7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = model.refine(new, epochs=3, seed=8)
    assert not np.array_equal(a["shared"], c["shared"])  # the seed drives noise and batch order


def test_refinement_keeps_recovery_of_true_factors(trained):
    model, new, truth = trained
    enc = model.get_latent_representation(new)
    ref = model.get_latent_representation(new, refine_epochs=15)
    r_enc = cv_r2(enc, truth["shared"])
    r_ref = cv_r2(ref, truth["shared"])
    assert r_enc > 0.5  # the model learned something, so the comparison means something
    assert r_ref >= r_enc - 0.05, (r_enc, r_ref)


def test_only_chosen_modalities_drive_refinement(trained):
    model, new, _ = trained
    data = model._data_for(new)
    enc = embed_cells(model.module, data, modalities=["rna"])
    ref = model.refine(new, modalities=["rna"], epochs=10)
    # Protein and ATAC terms are off: their private blocks are the encoders' and untouched.
    for m in ("protein", "atac"):
        np.testing.assert_array_equal(ref[f"private:{m}"], enc[f"private:{m}"])
    assert (
        reconstruction_nll(model.module, data, ref, ["rna"])["rna"]
        < reconstruction_nll(model.module, data, enc, ["rna"])["rna"]
    )
    assert not np.allclose(ref["shared"], enc["shared"])


def test_missing_modality_stays_nan(trained):
    model, new, _ = trained
    partial = new.copy()
    partial.mod["protein"] = partial["protein"][: N_NEW // 2].copy()
    partial.update()
    ref = model.refine(partial, epochs=2)
    lacks = ~np.asarray(partial.obsm["protein"]).astype(bool).ravel()
    assert lacks.sum() == N_NEW - N_NEW // 2
    assert np.isnan(ref["private:protein"][lacks]).all()
    assert np.isfinite(ref["private:protein"][~lacks]).all() and np.isfinite(ref["shared"]).all()


def test_bad_refinement_arguments(trained):
    model, new, _ = trained
    with pytest.raises(VennCellInputError, match="epochs"):
        model.refine(new, epochs=0)
    with pytest.raises(VennCellInputError, match="not in the model"):
        model.refine(new, modalities=["hic"], epochs=1)
    with pytest.raises(VennCellInputError, match="source='encoder'"):
        model.get_latent_representation(block="shared", source="stage1", refine_epochs=2)


def test_embed_cli_refines(trained, tmp_path):
    from venncell.cli.apply import run_embed

    model, new, _ = trained
    model.save(tmp_path / "model")
    new.write(str(tmp_path / "new.h5mu"))
    cfg = OmegaConf.create(
        {
            "model_dir": str(tmp_path / "model"),
            "data": {"path": str(tmp_path / "new.h5mu")},
            "modalities": None,
            "output": "embedded.h5mu",
            "refine_epochs": 2,
        }
    )
    import mudata as md

    out = md.read_h5mu(str(run_embed(cfg, tmp_path)))
    expected = model.get_latent_representation(new, refine_epochs=2)
    np.testing.assert_allclose(out.obsm["X_venn_shared"], expected, rtol=1e-5, atol=1e-6)
