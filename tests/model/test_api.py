"""The Python API: latents, prediction, write-back, save/load (also across processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

from venncell import VennCell, VennCellInputError


def test_latent_shapes_and_blocks(trained_tiny):
    model, mdata, _ = trained_tiny
    n = mdata.n_obs
    assert model.get_latent_representation().shape == (n, 4)
    assert model.get_latent_representation(block="private:rna").shape == (n, 2)
    assert model.get_latent_representation(block="all").shape == (n, 4 + 3 * 2)
    assert model.get_latent_representation(source="stage1").shape == (n, 4)
    only_rna = model.get_latent_representation(modalities=["rna"])
    assert np.isfinite(only_rna).all()
    assert not np.allclose(only_rna, model.get_latent_representation())
    with pytest.raises(VennCellInputError, match="block must be"):
        model.get_latent_representation(block="private:nope")
    with pytest.raises(VennCellInputError, match=r"modalities \['nope'\]"):
        model.get_latent_representation(modalities=["nope"])


def test_average_source_is_the_mean_of_encoder_and_stage1(trained_tiny):
    model, mdata, _ = trained_tiny
    get = model.get_latent_representation
    avg, enc, s1 = (get(block="all", source=s) for s in ("average", "encoder", "stage1"))
    assert not np.allclose(enc, s1)  # otherwise the check below could not fail
    np.testing.assert_allclose(avg, 0.5 * (enc + s1), rtol=1e-5, atol=1e-6)
    new = mdata[:5].copy()
    new.obs_names = [f"new_{i}" for i in range(5)]
    with pytest.raises(VennCellInputError, match="only for the training cells"):
        get(new, source="average")
    with pytest.raises(VennCellInputError, match="source='encoder' with modalities"):
        get(modalities=["rna"], source="average")
    with pytest.raises(VennCellInputError, match="'encoder', 'stage1' or 'average'"):
        get(source="mean")


def test_default_source_is_average_for_training_cells_only(trained_tiny):
    model, mdata, _ = trained_tiny
    get = model.get_latent_representation
    np.testing.assert_array_equal(get(block="all"), get(block="all", source="average"))
    np.testing.assert_array_equal(get(mdata, block="all"), get(block="all", source="average"))
    new = mdata[:30].copy()
    new.obs_names = [
        f"new_{i}" for i in range(30)
    ]  # other cells: only the encoders can place them
    np.testing.assert_array_equal(get(new), get(new, source="encoder"))
    # a copy of the training cells, the same file read again, a reordering or a subset (matched by name): the same
    # cells, the same latents
    full = get(block="all", source="average")
    same = mdata.copy()
    np.testing.assert_array_equal(get(same, block="all"), full)
    assert not np.allclose(get(same, block="all"), get(same, block="all", source="encoder"))
    order = np.random.default_rng(0).permutation(mdata.n_obs)[:150]
    some = mdata[mdata.obs_names[order]].copy()
    np.testing.assert_allclose(get(some, block="all"), full[order], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(get(some, source="stage1"), get(source="stage1")[order])
    model.write_latents(some)
    assert "X_venn_shared_stage1" in some.obsm
    np.testing.assert_allclose(
        some.obsm["X_venn_shared"], get(block="shared")[order], rtol=1e-6, atol=1e-6
    )
    assert (
        some.obs["venn_split"].to_numpy() == np.where(model.is_train, "train", "validation")[order]
    ).all()
    assert some.uns["venncell_latents"]["source"] == "average"
    # an estimate from some modalities is written as the latents, never under *_encoder; the earlier write's two
    # estimates go (they describe another latent), and uns says what the keys hold
    model.write_latents(some, modalities=["rna"])
    np.testing.assert_array_equal(some.obsm["X_venn_shared"], get(some, modalities=["rna"]))
    assert not any(k.endswith(("_encoder", "_stage1")) for k in some.obsm)
    assert some.uns["venncell_latents"] == {
        "keys": ["X_venn_shared", *(f"X_venn_private_{m}" for m in model.specs)],
        "source": "encoder",
        "modalities": ["rna"],
        "refine_epochs": 0,
    }
    # training cells without one of their modalities are not what stage 1 fitted: the encoders place them
    rna_only = md.MuData({"rna": mdata["rna"].copy()})
    np.testing.assert_array_equal(get(rna_only), get(rna_only, source="encoder"))
    # other cells under the training cells' names (names such as 0..n-1 get reused) are new cells
    from venncell.data import make_synthetic

    other, _ = make_synthetic(
        n_cells=mdata.n_obs, modalities={m: mdata[m].n_vars for m in mdata.mod}, seed=7
    )
    assert list(other.obs_names) == list(mdata.obs_names)
    np.testing.assert_array_equal(get(other), get(other, source="encoder"))
    with pytest.raises(VennCellInputError, match="only for the training cells"):
        get(other, source="stage1")
    # repeated names get VennCell's own message, not pandas'
    twice = md.MuData({m: mdata[m][[0, 0, 1]].copy() for m in mdata.mod})
    with pytest.raises(VennCellInputError, match="repeated"):
        get(twice)
    # an estimate from some of the modalities comes from their encoders
    only_rna = get(modalities=["rna"])
    np.testing.assert_array_equal(only_rna, get(modalities=["rna"], source="encoder"))


def test_predict_modality(trained_tiny):
    model, mdata, _ = trained_tiny
    pred = model.predict_modality(source=["rna"], target="protein")
    assert pred.shape == (mdata.n_obs, mdata["protein"].n_vars)
    np.testing.assert_allclose(pred.sum(1), 1.0, rtol=1e-4)  # NB proportions
    counts = model.predict_modality(source="rna", target="protein", scale="counts")
    assert counts.sum(1).mean() > 100


def test_predict_modality_denoises_the_target_with_its_private_latent(trained_tiny):
    model, mdata, _ = trained_tiny
    sources = list(mdata.mod)
    denoised = model.predict_modality(source=sources, target="rna")
    across = model.predict_modality(source=["protein", "atac"], target="rna")
    assert denoised.shape == across.shape == (mdata.n_obs, mdata["rna"].n_vars)
    np.testing.assert_allclose(denoised.sum(1), 1.0, rtol=1e-4)
    x = np.asarray(
        mdata["rna"].X.todense() if hasattr(mdata["rna"].X, "todense") else mdata["rna"].X
    )
    measured = np.log1p(1e4 * x / x.sum(1, keepdims=True))

    def fit(pred):  # mean per-cell correlation with the measured, log-normalised counts
        logp = np.log1p(1e4 * pred)
        return np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(logp, measured)])

    # the private block carries what the other modalities cannot know
    assert fit(denoised) > fit(across) + 0.01
    # cells without their own RNA have nothing to denoise
    no_rna = md.MuData({m: mdata[m].copy() for m in ("protein", "atac")})
    with pytest.raises(VennCellInputError, match="'rna' to denoise"):
        model.predict_modality(no_rna, source=sources, target="rna")


def test_write_latents_feeds_scanpy(trained_tiny):
    import scanpy as sc

    model, mdata, _ = trained_tiny
    model.write_latents()
    assert mdata.obsm["X_venn_shared"].shape == (mdata.n_obs, 4)
    assert "X_venn_private_atac" in mdata.obsm and "X_venn_shared_stage1" in mdata.obsm
    for source in ("average", "encoder", "stage1"):  # the default's key, then each source's own
        key = "X_venn_private_rna" + ("" if source == "average" else f"_{source}")
        expected = model.get_latent_representation(block="private:rna", source=source)
        np.testing.assert_allclose(mdata.obsm[key], expected, rtol=1e-5, atol=1e-6)
    assert set(mdata.obs["venn_split"]) == {"train", "validation"}
    sc.pp.neighbors(mdata, use_rep="X_venn_shared", n_neighbors=5)
    assert "connectivities" in mdata.obsp


def test_save_load_fresh_process_identical(trained_tiny, tmp_path):
    model, mdata, _ = trained_tiny
    model.save(tmp_path / "model")
    # the folder's mode follows the umask like the files in it (mkdtemp's 0700 kept other users out)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~mask
    # what a save killed halfway leaves is replaced by the next save, not left beside the model for good
    (tmp_path / ".model.tmp").mkdir()
    (tmp_path / ".model.tmp" / "model.pt").write_text("half")
    model.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    data_path = tmp_path / "data.h5mu"
    mdata.write(str(data_path))
    # the loaded model reads d as new cells, which get the encoders' latents
    np.save(tmp_path / "shared.npy", model.get_latent_representation(source="encoder"))
    np.save(
        tmp_path / "pred.npy", model.predict_modality(source=["rna", "atac"], target="protein")
    )
    script = textwrap.dedent(f"""
        import mudata, numpy as np
        from venncell import VennCell
        m = VennCell.load(r"{tmp_path / "model"}")
        d = mudata.read_h5mu(r"{data_path}")
        np.save(r"{tmp_path / "shared2.npy"}", m.get_latent_representation(d))
        np.save(r"{tmp_path / "pred2.npy"}", m.predict_modality(d, source=["rna", "atac"], target="protein"))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(
        np.load(tmp_path / "shared.npy"), np.load(tmp_path / "shared2.npy")
    )
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), np.load(tmp_path / "pred2.npy"))


def test_load_with_training_data_restores_stage1(trained_tiny, tmp_path):
    """Loaded without its data, the model knows no training cells, and asking for their stage-1 latents says how
    to load it; loaded with it, they are restored."""
    model, mdata, _ = trained_tiny
    model.save(tmp_path / "m")
    with pytest.raises(VennCellInputError, match=r"loaded without its training data.*mdata="):
        VennCell.load(tmp_path / "m").get_latent_representation(mdata, source="average")
    again = VennCell.load(tmp_path / "m", mdata=mdata)
    np.testing.assert_array_equal(
        again.get_latent_representation(source="stage1"),
        model.get_latent_representation(source="stage1"),
    )
    # the training data's genes in another order line up by name (they were read by position: wrong latents)
    shuffled = mdata.copy()
    shuffled.mod["rna"] = shuffled["rna"][:, shuffled["rna"].var_names[::-1]].copy()
    shuffled.update()
    with pytest.warns(UserWarning, match="reordered"):
        again = VennCell.load(tmp_path / "m", mdata=shuffled)
    for block in ("all", "private:rna"):
        np.testing.assert_allclose(
            again.get_latent_representation(block=block),
            model.get_latent_representation(block=block),
            rtol=1e-5,
            atol=1e-5,
        )
    fewer = mdata.copy()
    fewer.mod["rna"] = fewer["rna"][:, :10].copy()
    fewer.update()
    with pytest.raises(
        VennCellInputError, match="'rna': .* feature\\(s\\) the model was trained on are missing"
    ):
        VennCell.load(tmp_path / "m", mdata=fewer)
    # the training cells in another order, or some of them: each message says what mdata holds and the fix
    with pytest.raises(VennCellInputError, match="in another order.*Reorder them") as err:
        VennCell.load(tmp_path / "m", mdata=mdata[::-1].copy())
    fix = re.search(r"`mdata = (.+)`", str(err.value)).group(1)
    again = VennCell.load(
        tmp_path / "m", mdata=eval(fix, {"mdata": mdata[::-1].copy(), "VennCell": VennCell})
    )
    np.testing.assert_array_equal(
        again.get_latent_representation(source="stage1"),
        model.get_latent_representation(source="stage1"),
    )
    with pytest.raises(
        VennCellInputError, match=f"holds 50 of the model's {mdata.n_obs} training"
    ):
        VennCell.load(tmp_path / "m", mdata=mdata[:50].copy())
    # other cells under the training cells' names (barcodes repeat across samples) got the training cells'
    # stage-1 latents without a word
    other = mdata.copy()
    other.mod["protein"].X = other["protein"].X[np.r_[1 : other.n_obs, 0]]
    with pytest.raises(
        VennCellInputError, match=r"'protein': mdata's cells have the training cells' names but"
    ):
        VennCell.load(tmp_path / "m", mdata=other)
    assert np.isfinite(VennCell.load(tmp_path / "m").get_latent_representation(other)).all()
    # a model loaded without its data keeps the check when saved again
    VennCell.load(tmp_path / "m").save(tmp_path / "again")
    with pytest.raises(VennCellInputError, match="other data"):
        VennCell.load(tmp_path / "again", mdata=other)
    # a model saved before the totals were kept, loaded with other data and saved, does not take them as its own
    import shutil

    shutil.copytree(tmp_path / "m", tmp_path / "legacy")
    with np.load(tmp_path / "m" / "cells.npz") as kept:
        arrays = {k: kept[k] for k in kept.files if not k.startswith("total_")}
    np.savez_compressed(tmp_path / "legacy" / "cells.npz", **arrays)
    VennCell.load(tmp_path / "legacy", mdata=other).save(tmp_path / "stamped")
    VennCell.load(tmp_path / "stamped", mdata=mdata)


def test_new_data_with_wrong_features(trained_tiny, tmp_path):
    model, mdata, _ = trained_tiny
    model.save(tmp_path / "m")
    loaded = VennCell.load(tmp_path / "m")
    bad = mdata.copy()
    bad.mod["protein"] = bad["protein"][:, 3:].copy()
    bad.update()
    with pytest.raises(
        VennCellInputError, match=r"'protein': 3 feature\(s\) the model was trained on are missing"
    ):
        loaded.get_latent_representation(bad)
    # the message's other fix, embedding from the other modalities, works as written: protein is left out
    others = ["rna", "atac"]
    with pytest.warns(UserWarning, match=r"'protein' is left out \(3 feature"):
        z = loaded.get_latent_representation(bad, modalities=others)
    np.testing.assert_allclose(
        z, model.get_latent_representation(mdata, modalities=others), rtol=1e-5, atol=1e-5
    )
    with pytest.warns(UserWarning, match="'protein' is left out"):
        pred = loaded.predict_modality(bad, source=others, target="protein")
    np.testing.assert_allclose(
        pred, model.predict_modality(mdata, source=others, target="protein"), rtol=1e-5, atol=1e-5
    )
    zeroed = mdata.copy()
    zeroed["protein"].X = zeroed["protein"].X * 0
    with pytest.warns(UserWarning, match="'protein' is left out \\(every cell is all-zero"):
        z = loaded.get_latent_representation(zeroed, modalities=others)
    assert np.isfinite(z).all()
    shuffled = mdata.copy()
    order = np.random.default_rng(0).permutation(shuffled["rna"].n_vars)
    shuffled.mod["rna"] = shuffled["rna"][:, order].copy()
    shuffled.update()
    with pytest.warns(UserWarning, match="reordered"):
        z = loaded.get_latent_representation(shuffled)
    np.testing.assert_allclose(
        z, model.get_latent_representation(source="encoder"), rtol=1e-5, atol=1e-5
    )


def test_embed_new_cells_from_one_modality(trained_tiny):
    model, mdata, _ = trained_tiny
    sub = mdata.copy()
    del sub.mod["atac"]
    del sub.mod["protein"]
    sub.update()
    z = model.get_latent_representation(sub)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(
        z, model.get_latent_representation(modalities=["rna"]), rtol=1e-5, atol=1e-5
    )
    assert np.isnan(model.get_latent_representation(sub, block="private:atac")).all()
    # encoders the data cannot feed: every shared latent would be NaN (it was, without a word)
    with pytest.raises(VennCellInputError, match=r"no cell measured in any of them.*\['rna'\]"):
        model.get_latent_representation(sub, modalities=["atac"])
    with pytest.raises(VennCellInputError, match="no cell measured in any of them"):
        model.write_latents(sub, modalities=["atac", "protein"])
    partial = mdata[mdata.obs_names[:5]].copy()
    partial.mod["atac"] = partial["atac"][partial.obs_names[:2]].copy()
    partial.update()
    with pytest.warns(UserWarning, match="3 of 5 cells have none of modalities"):
        z = model.get_latent_representation(partial, modalities=["atac"])
    assert np.isnan(z[2:]).all() and np.isfinite(z[:2]).all()


def test_untrained_model_refuses(tiny_mdata):
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata)
    with pytest.raises(VennCellInputError, match="not trained"):
        model.get_latent_representation()


def test_changes_to_the_training_mudata_after_set_up_are_refused_not_ignored(tiny_mdata):
    """Cells filtered out of the MuData, or its values normalised in place, after VennCell(mdata) were ignored:
    write_latents() then failed in anndata, latents came from the old values and train() used the old cells."""
    import scanpy as sc

    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata, shared_dim=4, private_dim=2, hidden=16, encoder_hidden=16)
    model.train(stage1_epochs=1, stage2_epochs=1, batch_size=64, progress_bar="none")
    # what the package and users do to it that reads no other data: new columns, latents, attribution's var
    tiny_mdata.obs["label"] = "x"
    model.write_latents()
    model.attribution(markers=[], progress=False)
    model.get_latent_representation()
    counts = tiny_mdata["rna"].X.copy()
    sc.pp.normalize_total(tiny_mdata["rna"])
    with pytest.raises(
        VennCellInputError, match=r"modality 'rna''s values \(e.g. normalised in place"
    ):
        model.get_latent_representation()
    tiny_mdata["rna"].X = counts  # the values as read again
    model.get_latent_representation()
    filtered = tiny_mdata[:150].copy()
    for m in list(tiny_mdata.mod):
        tiny_mdata.mod[m] = filtered[m].copy()
    tiny_mdata.update()
    with pytest.raises(VennCellInputError, match=r"its cells: 200 then, 150 now.*mdata.copy\(\)"):
        model.write_latents()
    with pytest.raises(
        VennCellInputError, match="Cannot train: the MuData this model was built on"
    ):
        model.train(stage1_epochs=1, stage2_epochs=1, progress_bar="none")
    # the fix the message gives: the cells as they are now, as new cells
    assert model.get_latent_representation(tiny_mdata.copy(), source="encoder").shape == (150, 4)


def test_a_second_model_on_the_same_mudata_leaves_none_of_the_firsts_keys(tiny_mdata):
    """Model A (rna + protein) written after model B (rna + protein + atac) left B's X_venn_private_atac, atac's
    venn_* var columns and loadings, and obs['venn_weight_atac'] beside A's, with nothing saying whose they were
    (a cell's weights summed to 2)."""
    from venncell import VennCellInputWarning

    VennCell.setup_mudata(tiny_mdata, modalities=["rna", "protein"])
    small = VennCell(tiny_mdata, shared_dim=4, private_dim=2, hidden=16, encoder_hidden=16)
    VennCell.setup_mudata(tiny_mdata)
    full = VennCell(tiny_mdata, shared_dim=4, private_dim=2, hidden=16, encoder_hidden=16)
    for model in (small, full):
        model.train(stage1_epochs=1, stage2_epochs=1, batch_size=64, progress_bar="none")
    full.write_latents()
    full.attribution(markers=[], progress=False, n_boot=20)
    full.cell_modality_weights()
    atac = tiny_mdata["atac"]
    assert "X_venn_private_atac" in tiny_mdata.obsm and "venn_loadings" in atac.varm
    # keys the package or the user made otherwise stay (venncell-predict's, a copy kept under another name)
    tiny_mdata.obsm["X_venn_predicted_protein"] = np.zeros((tiny_mdata.n_obs, 2))
    tiny_mdata.obsm["X_venn_shared_run1"] = tiny_mdata.obsm["X_venn_shared"].copy()
    atac.var["venn_note"] = "mine"
    with pytest.warns(VennCellInputWarning, match=r"Removed obsm 'X_venn_private_atac"):
        small.write_latents()
    with pytest.warns(VennCellInputWarning, match=r"Removed mdata\['atac'\].var 'venn_"):
        small.attribution(markers=[], progress=False, n_boot=20)
    with pytest.warns(VennCellInputWarning, match=r"Removed obs 'venn_weight_atac'"):
        small.cell_modality_weights()
    assert not any(k.startswith("X_venn") and "atac" in k for k in tiny_mdata.obsm)
    assert [c for c in atac.var if c.startswith("venn_")] == ["venn_note"]
    assert "venn_loadings" not in atac.varm
    assert {"X_venn_predicted_protein", "X_venn_shared_run1"} <= set(tiny_mdata.obsm)
    weights = tiny_mdata.obs.filter(like="venn_weight_")
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)


def test_settings_given_to_the_wrong_call_are_sent_where_they_belong(tiny_mdata):
    """VennCell(mdata, stage1_epochs=2) listed the model's options, lr_latent was "did you mean 'latent_l2'", and
    train(n_epochs=2) suggested stage2_epochs alone."""
    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(
        VennCellInputError, match=r"stage1_epochs is a setting of model.train\(...\)"
    ):
        VennCell(tiny_mdata, stage1_epochs=2)
    with pytest.raises(VennCellInputError, match=r"lr_latent is a setting of model.train"):
        VennCell(tiny_mdata, lr_latent=0.01)
    with pytest.raises(
        VennCellInputError, match=r"batch_key is a setting of VennCell.setup_mudata"
    ):
        VennCell(tiny_mdata, batch_key="batch")
    with pytest.raises(VennCellInputError, match=r"modalities=\{'rna': \{'layer': ...\}"):
        VennCell(tiny_mdata, layer="counts")
    VennCell(tiny_mdata, private_dim=3)  # the model's private_dim, not a modality's
    with pytest.raises(VennCellInputError, match=r"takes no lr.*lr_network=..., lr_latent="):
        VennCell(tiny_mdata, lr=1e-3)
    model = VennCell(tiny_mdata)
    with pytest.raises(
        VennCellInputError, match=r"takes no n_epochs.*stage1_epochs=..., stage2_epochs="
    ):
        model.train(n_epochs=2)
    with pytest.raises(
        VennCellInputError, match=r"kl_weight is a setting of VennCell\(mdata, ...\)"
    ):
        model.train(kl_weight=2)


def test_arguments_of_the_wrong_type_are_named(tiny_mdata, tmp_path):
    """These reached pathlib, pandas, difflib or Lightning: a run_dir that is a file, load's arguments swapped, a
    batch_key list, a list of targets, overwrite="no" (which overwrote)."""
    with pytest.raises(
        VennCellInputError, match="batch_key must be the name of one column.*got list"
    ):
        VennCell.setup_mudata(tiny_mdata.copy(), batch_key=["cluster"])
    tiny_mdata.obs["batch"] = ["a", "b"] * (tiny_mdata.n_obs // 2)
    VennCell.setup_mudata(tiny_mdata, batch_key="batch")
    del tiny_mdata.obs["batch"]
    with pytest.raises(VennCellInputError, match="batch_key 'batch' is not a column of mdata.obs"):
        VennCell(tiny_mdata)
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(VennCellInputError, match="run_dir.*a_file is a file, not a folder"):
        model.train(run_dir=tmp_path / "a_file", stage1_epochs=1, stage2_epochs=1)
    with pytest.warns(UserWarning, match="The model is not trained"):
        model.save(tmp_path / "untrained")
    with pytest.raises(VennCellInputError, match="overwrite must be True or False"):
        model.save(tmp_path / "untrained", overwrite="no")
    with pytest.raises(VennCellInputError, match="the path comes first"):
        VennCell.load(tiny_mdata, tmp_path / "untrained")
    model.is_trained = True  # the target check comes before any use of the weights
    with pytest.raises(VennCellInputError, match="target must be the name of one modality"):
        model.predict_modality(source=["rna"], target=["protein"])


def test_a_misspelt_training_option_names_the_closest_one(tiny_mdata):
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata)
    with pytest.raises(VennCellInputError, match="did you mean 'stage1_epoch' -> 'stage1_epochs'"):
        model.train(stage1_epoch=3)


def test_load_takes_its_training_data_in_another_layout(tmp_path):
    """Standardised features sum to near 0 per cell, and float32 totals of the same values stored column-major or
    sparse differed past the check's tolerance: load(path, mdata) refused the model's own training data."""
    import scipy.sparse as sp

    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(n_cells=300, modalities={"rna": 30, "features": 20}, seed=0)
    feats = np.asarray(
        mdata["features"].X.toarray() if sp.issparse(mdata["features"].X) else mdata["features"].X
    )
    mdata["features"].X = np.asfortranarray(feats - feats.mean(0))
    VennCell.setup_mudata(mdata)
    VennCell(mdata, shared_dim=2, private_dim=2).save(tmp_path / "m")
    for layout in (np.ascontiguousarray, sp.csr_matrix):
        again = mdata.copy()
        again["features"].X = layout(mdata["features"].X)
        VennCell.load(tmp_path / "m", mdata=again)


def test_settings_of_point_latents_say_they_do_nothing_to_variational_ones(tiny_mdata):
    """latent_l2, which the non-finite-loss message advised, was ignored by the default latents without a word."""
    import warnings

    VennCell.setup_mudata(tiny_mdata)
    with pytest.warns(
        UserWarning, match=r"latent_l2=10.0 act\(s\) on point latents only.*kl_weight"
    ):
        VennCell(tiny_mdata, latent_l2=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        VennCell(tiny_mdata, latent_l2=10.0, latent_posterior="point")
        VennCell(tiny_mdata, shared_only_weight=0.5, shared_only_detach=False)
    # detached shared-only decoders train on a term of their own, whose scale Adam divides out
    with pytest.warns(UserWarning, match=r"shared_only_weight=0.5 has no effect beyond 0"):
        VennCell(tiny_mdata, shared_only_weight=0.5)


def test_load_rejects_non_model(tmp_path):
    with pytest.raises(VennCellInputError, match="not a saved VennCell model"):
        VennCell.load(tmp_path)
    (tmp_path / "venncell.json").write_text('{"format": 1, "conf')
    with pytest.raises(VennCellInputError, match="unreadable or truncated"):
        VennCell.load(tmp_path)


def test_saved_models_record_their_version_and_older_ones_are_named(trained_tiny, tmp_path):
    """A saved model recorded no version: a model from before a change of default (the training cells' latents)
    loaded without a word, and a format-1 model's error said only "retrain"."""
    import json
    import warnings

    import venncell

    model, _, _ = trained_tiny
    model.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "venncell.json").read_text())
    assert meta["venncell_version"] == venncell.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error", venncell.VennCellInputWarning)
        VennCell.load(tmp_path / "model")
    del meta["venncell_version"]
    (tmp_path / "model" / "venncell.json").write_text(json.dumps(meta))
    with pytest.warns(venncell.VennCellInputWarning, match="source='encoder'"):
        VennCell.load(tmp_path / "model")
    (tmp_path / "model" / "venncell.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(
        VennCellInputError, match=r"format 1 \(VennCell 0.1.x\).*load it with VennCell 0.1.x"
    ):
        VennCell.load(tmp_path / "model")


def test_consistency_on_part_of_each_batch(tiny_mdata):
    """consistency_cells below 8 is refused; otherwise stage 1's encoders see that many of a batch's cells.

    0 means every cell; the refusal names the setting."""
    import torch

    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(VennCellInputError, match="consistency_cells"):
        VennCell(tiny_mdata, consistency_cells=3)
    for k, expected in ((0, 64), (16, 16)):
        model = VennCell(tiny_mdata, consistency_cells=k, seed=0)
        module = model.module
        seen = []
        encode = (
            module.encode_regions
        )  # what the consistency term runs (the shared and region blocks)

        def counting(m, batch, rows=None):
            seen.append(batch.x[m].shape[0] if rows is None else rows.numel())
            return encode(m, batch, rows)

        module.encode_regions = counting
        terms = module.stage1_loss(model.data.get(np.arange(64))).logged()
        assert set(seen) == {expected} and len(seen) == len(module.modalities)
        assert all(torch.isfinite(terms[f"consistency/{m}"]) for m in module.modalities)


def test_every_model_preset_builds():
    """Each named preset (``model=<name>``) is the defaults with a few fields changed, and VennCell accepts it."""
    from venncell.module.config import PRESETS, model_preset

    assert {"venncell", "apollo", "fast"} <= set(PRESETS)
    for name in PRESETS:
        cfg = model_preset(name)  # an unknown key fails here
        if name == "fast":
            assert cfg.consistency_cells == 32 and cfg.leakage_every == 3
    with pytest.raises(VennCellInputError, match="Unknown model preset"):
        model_preset("fastest")


def test_leakage_every_k_batches_weights_the_terms_k_times(tiny_mdata):
    """leakage_every below 1 is refused; k >= 1 puts the leakage terms, weighted k times, on every k-th batch.

    The other batches leave the encoders out entirely (no pass, no gradient)."""
    import torch

    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(VennCellInputError, match="leakage_every"):
        VennCell(tiny_mdata, leakage_every=0)
    model = VennCell(tiny_mdata, leakage_every=3, seed=0)
    module = model.module
    assert [module.leakage_factor(i) for i in range(7)] == [3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 3.0]
    batch = model.data.get(np.arange(64))
    module.eval()  # encoder dropout off, so the three losses see the same encoder pass
    loss = {f: module.stage1_loss(batch, noise=False, leakage=f).loss for f in (0.0, 1.0, 3.0)}
    torch.testing.assert_close(loss[3.0] - loss[0.0], 3 * (loss[1.0] - loss[0.0]))
    assert (
        loss[1.0] > loss[0.0]
    )  # the leakage terms are positive here, so the check above is not 0 = 0
    terms = module.stage1_loss(batch, leakage=0.0).logged()
    assert not any(k.startswith(("consistency/", "independence/")) for k in terms)
    module.zero_grad(set_to_none=True)
    terms["loss"].backward()
    assert all(p.grad is None for p in module.encoders.parameters())


def test_stage2_recon_total_weights_modalities_and_counts_single_cell_modalities():
    """stage2/val/recon (the default sweep objective) = sum over modalities of weight x that modality's NLL, a
    modality measured in only one cell of the batch included."""
    import anndata as ad
    import mudata as md_

    from venncell import make_synthetic as synth

    full, _ = synth(n_cells=60, modalities={"rna": 30, "protein": 8}, seed=2)
    mdata = md_.MuData(
        {
            "rna": full["rna"].copy(),
            "protein": ad.AnnData(
                full["protein"].X[:40].copy(),
                obs=full["protein"].obs.iloc[:40].copy(),
                var=full["protein"].var.copy(),
            ),
        }
    )
    VennCell.setup_mudata(mdata, {"rna": {"kind": "rna", "weight": 2.0}, "protein": "protein"})
    model = VennCell(mdata, shared_dim=2, private_dim=2, hidden=16, encoder_hidden=16)
    has_protein = np.flatnonzero(model.data.present("protein"))
    rna_only = np.flatnonzero(~model.data.present("protein"))
    for rows in (
        np.arange(60),
        np.r_[rna_only[:10], has_protein[:1]],
    ):  # the second: one protein cell
        terms = model.module.stage2_loss(model.data.get(rows), noise=False, recon=True).logged()
        expected = 2.0 * terms["recon/rna"] + terms["recon/protein"]
        assert torch.allclose(terms["recon"], expected), (terms["recon"], expected)


def test_batch_worker_processes_train_the_same_model(tiny_mdata, tmp_path, helpers):
    """Batches assembled in 2 worker processes are the same batches in the same order: the same model."""
    from lightning.pytorch.callbacks import Callback

    class Workers(Callback):  # the loader each stage actually trained with
        def __init__(self):
            self.seen = []

        def on_train_start(
            self, trainer, pl_module
        ):  # no workers: batches assembled on the device, no loader
            self.seen.append(getattr(trainer.train_dataloader, "num_workers", 0))

    latents = []
    for workers in (0, 2):
        mdata = tiny_mdata.copy()
        VennCell.setup_mudata(mdata)
        model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=32, encoder_hidden=32, seed=0)
        seen = Workers()
        model.train(
            run_dir=tmp_path / str(workers),
            num_workers=workers,
            trainer_kwargs={"callbacks": [seen]},
            **helpers.FAST,
        )
        assert seen.seen == [workers, workers]
        latents.append(model.get_latent_representation(block="shared", source="stage1"))
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[2])
    np.testing.assert_array_equal(latents[1], latents[3])
    with pytest.raises(VennCellInputError, match="num_workers=-1"):
        model.train(num_workers=-1, **helpers.FAST)


def test_encoder_dropout_reaches_the_encoders_only(tiny_mdata):
    """encoder_dropout regularises the encoders (which regress each training cell's own latent) and leaves the
    decoders deterministic; an out-of-range value is a config error naming the key."""
    from torch import nn

    VennCell.setup_mudata(tiny_mdata)
    module = VennCell(tiny_mdata, encoder_dropout=0.3).module
    for m in module.modalities:
        assert [d.p for d in module.encoders[m].modules() if isinstance(d, nn.Dropout)] == [
            0.3
        ] * module.cfg.n_layers
        assert not any(isinstance(d, nn.Dropout) for d in module.decoders[m].modules())
    with pytest.raises(VennCellInputError, match="encoder_dropout"):
        VennCell(tiny_mdata, encoder_dropout=1.5)


def test_epoch_history_has_a_row_per_epoch_and_the_held_out_values_where_validation_ran(
    tiny_mdata, tmp_path, monkeypatch
):
    """Only each stage's last values were kept: no convergence plot without a CSV logger (scvi-tools users read
    model.history). The final held-out scores were an extra validation after the last epoch, in no history row and
    with no training loss beside them in train()'s metrics; and the default run folder was never removed."""
    import tempfile

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=32, encoder_hidden=32)
    made = []

    def mkdtemp(**kwargs):
        made.append(tmp_path / "run")
        made[-1].mkdir()
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    model.train(
        stage1_epochs=3,
        stage2_epochs=5,
        batch_size=64,
        progress_bar="none",
        check_val_every_n_epoch=2,
    )
    assert len(made) == 1 and not made[0].exists()  # the temporary run folder is gone
    one, two = model.epoch_history("stage1"), model.epoch_history("stage2")
    assert list(one.index) == [0, 1, 2] and list(two.index) == [0, 1, 2, 3, 4]
    assert one["stage1/train/loss_epoch"].notna().all()
    # the last epoch's mean is the value train() returned for the stage
    assert one["stage1/train/loss_epoch"].iloc[-1] == pytest.approx(
        model.history["stage1"]["stage1/train/loss_epoch"]
    )
    val = two["stage2/val/loss"]
    # validation ran after epochs 1 and 3, and after the last whatever the interval
    assert val.notna().tolist() == [False, True, False, True, True]
    for key in ("stage2/val/loss", "stage2/train/loss_epoch"):
        assert two[key].iloc[-1] == pytest.approx(model.history["stage2"][key])
    model.save(tmp_path / "m")
    pd.testing.assert_frame_equal(VennCell.load(tmp_path / "m").epoch_history("stage2"), two)
    with pytest.raises(VennCellInputError, match="use 'stage1' or 'stage2'"):
        model.epoch_history("stage3")


def test_a_marker_column_left_in_a_modality_obs_is_named_with_the_copy(trained_tiny):
    model, mdata, _ = trained_tiny
    mdata["rna"].obs["celltype_r"] = "T"
    try:
        with pytest.raises(
            VennCellInputError, match="It is a column of the .obs of \\['rna'\\]"
        ) as err:
            model.check_markers(["celltype_r"])
        assert "mdata.obs['celltype_r'] = mdata['rna'].obs['celltype_r']" in str(err.value)
        # muon's name for it is read where it is, as after mdata.pull_obs()
        model.check_markers(["rna:celltype_r"])
        # a column named like one of the modality's features: both names given work
        feature = model.specs["rna"].feature_names[0]
        mdata["rna"].obs[feature] = 1.0
        with pytest.raises(VennCellInputError, match=f"'obs:rna:{feature}'"):
            model.check_markers([f"rna:{feature}"])
        model.check_markers([f"obs:rna:{feature}"])
        del mdata["rna"].obs[feature]
    finally:
        del mdata["rna"].obs["celltype_r"]


def test_new_cells_without_the_target_modality_still_get_predictions(trained_tiny):
    model, mdata, _ = trained_tiny
    subset = md.MuData({"rna": mdata["rna"][:20].copy(), "protein": mdata["protein"][:0].copy()})
    pred = model.predict_modality(subset, source=["rna"], target="protein")
    assert pred.shape == (20, mdata["protein"].n_vars) and np.isfinite(pred).all()


def test_new_cells_with_a_modality_zeroed_out_are_told_to_leave_it_out(trained_tiny):
    """totalVI users hide a modality of new cells by zeroing it; VennCell reads that as a measurement of zeros."""
    model, mdata, _ = trained_tiny
    zeroed = md.MuData({m: mdata[m][:30].copy() for m in mdata.mod})
    zeroed["protein"].X = zeroed["protein"].X * 0
    with pytest.raises(VennCellInputError, match="leave it out of the MuData"):
        model.get_latent_representation(zeroed)
    # predicting it from RNA reads no protein: the zeroed modality is left out, as if it were absent
    without = md.MuData({"rna": zeroed["rna"].copy()})
    with pytest.warns(UserWarning, match="'protein' is left out"):
        pred = model.predict_modality(zeroed, source=["rna"], target="protein")
    np.testing.assert_array_equal(
        pred, model.predict_modality(without, source=["rna"], target="protein")
    )


def test_only_global_rank_0_saves_after_a_ddp_training(trained_tiny, tmp_path, monkeypatch):
    """In a script trained with strategy="ddp", every rank runs the script's save(): they wrote one temporary
    folder at once and deleted each other's files. The other ranks hold the same model and write nothing."""
    model, _, _ = trained_tiny
    monkeypatch.setattr(model, "history", {**model.history, "ddp": {"global_rank": 1}})
    model.save(tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(model, "history", {**model.history, "ddp": {"global_rank": 0}})
    model.save(tmp_path / "rank0")
    assert (tmp_path / "rank0" / "model.pt").is_file()
