"""Real-data situations on synthetic ground truth: a technical batch shift, and partially paired cells."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from venncell import VennCell, make_synthetic
from venncell.analysis.probes import cv_r2

MODS = {"rna": 120, "protein": 30}
TRAIN = dict(stage1_epochs=20, stage2_epochs=8, batch_size=128, progress_bar="none")


def _batch_accuracy(z: np.ndarray, batch: np.ndarray) -> float:
    """How well a linear probe tells the batch from a latent (0.5 = not at all, for two balanced batches)."""
    return float(
        cross_val_score(
            LogisticRegression(max_iter=2000), z, batch, cv=5, scoring="balanced_accuracy"
        ).mean()
    )


@pytest.fixture(scope="module")
def batched():
    return make_synthetic(
        n_cells=600, modalities=dict(MODS), n_batches=2, batch_effect=1.0, seed=3
    )


@pytest.fixture(scope="module")
def batch_runs(batched, tmp_path_factory):
    mdata, truth = batched
    out = {}
    for key in (None, "batch"):
        m = mdata.copy()
        VennCell.setup_mudata(m, batch_key=key)
        model = VennCell(m, shared_dim=4, private_dim=2, hidden=64, encoder_hidden=64, seed=0)
        model.train(run_dir=tmp_path_factory.mktemp(f"batch_{key}"), **TRAIN)
        out[key] = model
    return out


def test_synthetic_batches_leave_biology_unchanged():
    plain, t0 = make_synthetic(n_cells=100, modalities=dict(MODS), seed=5)
    _, t1 = make_synthetic(n_cells=100, modalities=dict(MODS), n_batches=3, seed=5)
    np.testing.assert_array_equal(t0.shared, t1.shared)
    np.testing.assert_array_equal(t0.private["rna"], t1.private["rna"])
    assert "batch" not in plain.obs


def test_repr_names_the_batches(batch_runs):
    assert "batches=2 (obs['batch'])" in repr(batch_runs["batch"])
    assert "batches" not in repr(batch_runs[None])


def test_batch_key_keeps_batch_out_of_the_latents(batched, batch_runs):
    mdata, truth = batched
    batch = np.asarray(mdata.obs["batch"].cat.codes)
    acc, rec = {}, {}
    for key, model in batch_runs.items():
        z = np.hstack(
            [
                model.get_latent_representation(block=b)
                for b in ("shared", "private:rna", "private:protein")
            ]
        )
        acc[key] = _batch_accuracy(z, batch)
        rec[key] = cv_r2(model.get_latent_representation(block="shared"), truth.shared)
    print(
        f"batch probe accuracy without/with batch_key: {acc[None]:.3f} / {acc['batch']:.3f}; "
        f"shared recovery {rec[None]:.3f} / {rec['batch']:.3f}"
    )
    assert acc[None] > 0.9, (
        "the batch shift should be visible when the model is not told about batches"
    )
    assert acc["batch"] < acc[None] - 0.2
    assert rec["batch"] >= 0.6, "removing the batch must not remove the shared biology"


def test_partially_paired_end_to_end(tmp_path, helpers):
    mdata, truth, order, with_prot = helpers.partially_paired()
    assert mdata.n_obs == 600 and mdata["protein"].n_obs == 400
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=64, encoder_hidden=64, seed=0)
    assert "400 of 600 cells" in repr(model) and "rna (rna, nb, 120 features)" in repr(
        model
    )  # the user sees the pairing
    model.train(run_dir=tmp_path, **TRAIN)

    has = np.array([c in with_prot for c in mdata.obs_names])
    shared = model.get_latent_representation(block="shared")
    assert np.isfinite(shared).all(), "every cell has RNA, so every cell gets a shared latent"
    # RNA-only cells: the shared latent still recovers the true shared factors (fitted on all cells, scored on
    # them). 0.88 measured; 0.80 when these cells started from random latents instead of the spectral start's maps
    r2_rna_only = cv_r2(shared[~has], truth.shared[order][~has])
    assert r2_rna_only > 0.83, r2_rna_only
    # the protein private block exists only where protein was measured
    p_prot = model.get_latent_representation(block="private:protein")
    assert np.isnan(p_prot[~has]).all() and np.isfinite(p_prot[has]).all()
    # stage 2 embeds from any subset: from protein alone, only the cells with protein get a shared latent
    from_prot = model.get_latent_representation(block="shared", modalities=["protein"])
    assert np.isnan(from_prot[~has]).all() and np.isfinite(from_prot[has]).all()
    assert cv_r2(from_prot[has], truth.shared[order][has]) > 0.6
    # the stage-1 table (learned directly, from whatever each cell has) also covers every cell
    table = model.get_latent_representation(block="shared", source="stage1")
    assert np.isfinite(table).all()


def test_a_batch_never_measured_in_the_target_is_predicted_batch_neutral(tmp_path):
    """Batch b3 has protein only. The RNA decoders' input column for b3 never trains, so predicting b3 cells' RNA
    through it would read random weights: they get the mean of their predictions as each batch that measured RNA,
    with a warning; batches that measured RNA are predicted as themselves, and a saved model keeps this."""
    import mudata as md
    import torch

    cells, _ = make_synthetic(
        n_cells=500, modalities={"rna": 60, "protein": 15}, n_batches=2, seed=0
    )
    names = cells.obs_names
    mdata = md.MuData(
        {"rna": cells["rna"][names[:380]].copy(), "protein": cells["protein"].copy()}
    )
    mdata.obs["batch"] = cells.obs["batch"].astype(str).reindex(mdata.obs_names).to_numpy()
    mdata.obs.loc[mdata.obs_names.isin(names[380:]), "batch"] = "b3"
    VennCell.setup_mudata(mdata, batch_key="batch")
    model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=32, encoder_hidden=32, seed=0)
    model.train(run_dir=tmp_path / "run", **TRAIN)
    dec = model.module.shared_decoders["rna"]
    assert dec.batch_trained.tolist() == [True, True, False]
    new = md.MuData({"protein": cells["protein"][names[380:]].copy()})
    preds = {}
    for label in ("b0", "b1", "b3"):
        new.obs["batch"] = label
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            preds[label] = model.predict_modality(new, source=["protein"], target="rna")
        said = [
            str(w.message)
            for w in caught
            if "no training cell was measured in 'rna'" in str(w.message)
        ]
        assert bool(said) == (label == "b3"), said
    np.testing.assert_allclose(preds["b3"], (preds["b0"] + preds["b1"]) / 2, rtol=1e-5, atol=1e-7)
    assert np.abs(preds["b0"] - preds["b1"]).max() > 1e-3  # the batches do differ
    # the untrained column itself gives something else
    z = torch.as_tensor(model.get_latent_representation(new, block="shared"))
    with torch.no_grad():
        raw = dec.likelihood.normalised_mean(dec(z, torch.full((len(z),), 2))).numpy()
    assert np.abs(raw - preds["b3"]).max() > 1e-3
    model.save(tmp_path / "model")
    loaded = VennCell.load(tmp_path / "model")
    assert loaded.module.shared_decoders["rna"].batch_trained.tolist() == [True, True, False]
    # a model saved before decoders knew their batches loads with every batch trained
    state = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    torch.save(
        {k: v for k, v in state.items() if not k.endswith("batch_trained")},
        tmp_path / "model" / "model.pt",
    )
    assert VennCell.load(tmp_path / "model").module.shared_decoders["rna"].batch_trained.all()


def test_a_batch_measured_in_held_out_cells_only_counts_as_untrained(tmp_path):
    """Held-out cells fit their latents with the networks frozen: a batch whose cells measured in a modality are all
    held out never trains that modality's decoder input, so it is predicted batch-neutral too."""
    import mudata as md

    cells, _ = make_synthetic(
        n_cells=300, modalities={"rna": 40, "protein": 10}, n_batches=2, seed=1
    )
    VennCell.setup_mudata(cells, batch_key="batch")
    probe = VennCell(cells, shared_dim=3, private_dim=2, hidden=16, encoder_hidden=16, seed=0)
    held = cells.obs_names[~probe.is_train]
    # protein only in batch b1's training cells and in b0's held-out cells
    keep = (cells.obs["batch"].astype(str).to_numpy() == "b1") & probe.is_train
    keep |= (cells.obs["batch"].astype(str).to_numpy() == "b0") & cells.obs_names.isin(held)
    mdata = md.MuData({"rna": cells["rna"].copy(), "protein": cells["protein"][keep].copy()})
    mdata.obs["batch"] = cells.obs["batch"].astype(str).to_numpy()
    VennCell.setup_mudata(mdata, batch_key="batch")
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=16, encoder_hidden=16, seed=0)
    assert (model.is_train == probe.is_train).all()
    assert model.module.decoders["protein"].batch_trained.tolist() == [False, True]
    assert model.module.decoders["rna"].batch_trained.tolist() == [True, True]
    # cell weights read that untrained column: said, not silently used
    model.train(stage1_epochs=2, stage2_epochs=1, progress_bar="none", num_threads=1)
    with pytest.warns(
        UserWarning,
        match=r"batch\(es\) \['b0'\], in which no training cell was measured in 'protein' \(all its cells "
        r"with it were held out",
    ):
        model.cell_modality_weights(write_obs=False)
    # a batch the training data never measured in protein is not told to give it more cells
    only_b1 = md.MuData(
        {
            "rna": cells["rna"].copy(),
            "protein": cells["protein"][keep & (mdata.obs["batch"] == "b1").to_numpy()].copy(),
        }
    )
    only_b1.obs["batch"] = cells.obs["batch"].astype(str).to_numpy()
    VennCell.setup_mudata(only_b1, batch_key="batch")
    never = VennCell(only_b1, shared_dim=3, private_dim=2, seed=0)
    assert (
        never._why_unfitted("protein", np.array([0])) == "the training data had no 'protein' in it"
    )
