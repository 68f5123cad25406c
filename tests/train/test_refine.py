"""Test-time refinement: new cells' latents optimised against the frozen decoders (Stage1Plan, networks frozen)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
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


def test_refinement_shows_its_epochs(trained, capsys):
    """Refinement trains for as many epochs as asked, a minute or more on a large query, and showed nothing."""
    model, new, _ = trained
    capsys.readouterr()
    model.refine(new, epochs=2, seed=7)
    out = capsys.readouterr().out
    assert "Refinement epoch 1/2" in out and "Refinement epoch 2/2" in out, out
    assert "Stage 1" not in out


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
    with pytest.raises(VennCellInputError, match="refine_epochs=-1.*>= 0"):  # 0 (off) is allowed
        model.get_latent_representation(new, refine_epochs=-1)


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


# ------------------------------------------------------------------------------------------------ query mapping
@pytest.fixture(scope="module")
def three_batches():
    """A model trained on batches b0 and b1 of three (a strong batch effect), and the cells of b2 it never saw."""
    mdata, truth = make_synthetic(
        n_cells=900,
        modalities={"rna": 80, "protein": 20},
        n_batches=3,
        batch_effect=2.0,
        seed=1,
    )
    seen = (mdata.obs["batch"] != "b2").to_numpy()
    ref, query = mdata[seen].copy(), mdata[~seen].copy()
    VennCell.setup_mudata(ref, batch_key="batch")
    model = VennCell(ref, seed=0)
    model.train(stage1_epochs=40, stage2_epochs=15, progress_bar="none", num_threads=1)
    return model, ref, query, truth.shared[seen], truth.shared[~seen]


def test_a_decoder_reading_new_batches_keeps_the_trained_ones(three_batches):
    model = three_batches[0]
    dec = model.module.decoders["rna"]
    new = dec.with_new_batches(2)
    z = torch.randn(6, dec.net.net[0].in_features - dec.n_batches)
    with torch.no_grad():
        for b in (0, 1):  # the trained batches: the same output
            codes = torch.full((6,), b)
            torch.testing.assert_close(new(z, codes), dec(z, codes))
        # a new batch starts at the trained batches' mean one-hot column: batch-neutral
        neutral = dec.net(torch.cat([z, torch.full((6, 2), 0.5)], 1))
        torch.testing.assert_close(new(z, torch.full((6,), 3)), neutral)
    assert [p for p in new.parameters() if p.requires_grad] == [new.net.net[0].extra]
    assert all(p.requires_grad for p in dec.parameters())  # the trained decoder is not touched
    # a batch no training cell was measured in (its column never trained) stays out of the start
    one = copy.deepcopy(dec)
    one.set_batch_coverage(torch.tensor([True, False]))
    with torch.no_grad():
        as_b0 = one(z, torch.zeros(6, dtype=torch.long))
        torch.testing.assert_close(one.with_new_batches(1)(z, torch.full((6,), 2)), as_b0)


def test_new_batches_are_coded_after_the_trained_ones(three_batches):
    """Cells of known batches keep their codes; each new batch, read as the registry reads labels (2 and 2.0 are
    one batch), gets one code after the trained batches."""
    model, ref, query = three_batches[:3]
    mixed = ref[:6].copy()
    mixed.obs["batch"] = pd.Series(
        ["b0", "b1", "x", 2, 2.0, "x"], index=mixed.obs_names, dtype=object
    )
    data = model._data_for(mixed, warn_new_batches=False)
    assert data.unseen_batches == ["2", "x"]
    np.testing.assert_array_equal(data.with_new_batch_codes().batch, [0, 1, 3, 2, 2, 3])
    np.testing.assert_array_equal(data.batch, [0, 1, -1, -1, -1, -1])  # the view itself unchanged


def test_refinement_maps_cells_of_a_new_batch(three_batches):
    """Refined with their own batch learnt, the new batch's cells land where the reference cells of the same
    state are: their true shared factors are read from the reference's latents far better than after a
    refinement that takes them for a training batch (the batch effect goes into the latents), and as well as
    from the encoders' latents, which saw two batches and place the third well here."""
    model, ref, query, t_ref, t_query = three_batches
    from sklearn.metrics import r2_score
    from sklearn.neighbors import KNeighborsRegressor

    before = _weights(model)
    z_ref = model.get_latent_representation()
    probe = KNeighborsRegressor(15).fit(z_ref, t_ref)

    def r2(z):
        return r2_score(t_query, probe.predict(z))

    with pytest.warns(match="were not in training"):
        encoder = r2(model.get_latent_representation(query))
    relabelled = query.copy()
    relabelled.obs["batch"] = "b0"
    as_b0 = r2(model.get_latent_representation(relabelled, refine_epochs=20))
    mapped = r2(model.get_latent_representation(query, refine_epochs=20))
    assert mapped > as_b0 + 0.1 and mapped > encoder - 0.05, (encoder, as_b0, mapped)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model itself is unchanged
    assert all(p.requires_grad for p in model.module.network_parameters())


def test_a_refinement_with_new_batches_logs_no_lightning_line(three_batches):
    """Two fits (the new batches' inputs alone, then with the latents) log none of Lightning's "`Trainer.fit`
    stopped" lines, as training does not: a query mapped in a loop printed one per call."""
    import logging
    import warnings

    model, _, query = three_batches[:3]
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.get_latent_representation(query, refine_epochs=2)
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "stopped" in m], seen


def test_new_batches_of_a_few_cells_warn_before_refinement(three_batches):
    """A query labelled one batch per cell was mapped without a word, each cell's batch effect learned from the
    cell alone (its biology with it)."""
    import warnings

    model, _, query = three_batches[:3]
    few = query[:24].copy()
    few.obs["batch"] = [f"cell{i}" for i in range(few.n_obs)]
    with pytest.warns(UserWarning, match=r"'cell0' \(1 cell\).*fewer than 10 cells.*= 'query'"):
        model.refine(few, epochs=1)
    few.obs["batch"] = "query"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.refine(few, epochs=1)
    assert not [w for w in record if "fewer than" in str(w.message)]


@pytest.mark.parametrize("bad", [2.9, True, "abc", -1])
def test_embed_cli_refuses_a_bad_refine_epochs_before_reading_anything(bad, tmp_path):
    """venncell-embed converted refine_epochs with int() before checking it: 2.9 ran 2 epochs, true 1, and "abc"
    failed with a traceback. Refused as in Python, before the model or the data are read."""
    from venncell.cli.apply import run_embed

    cfg = OmegaConf.create(
        {
            "model_dir": str(tmp_path / "absent"),
            "data": {"path": str(tmp_path / "absent.h5mu")},
            "modalities": None,
            "output": "embedded.h5mu",
            "refine_epochs": bad,
        }
    )
    with pytest.raises(VennCellInputError, match="refine_epochs"):
        run_embed(cfg, tmp_path)
