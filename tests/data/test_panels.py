"""Antibody panels that differ between batches: unmeasured features are found, reported and split off."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp


def _panel_data(seed=0, n=400, missing=(0, 1, 2)):
    """RNA + protein with two batches; batch 'b' did not measure the proteins ``missing`` (zeros filled in)."""
    from venncell import make_synthetic

    mdata, _ = make_synthetic(
        n_cells=n, modalities={"rna": 80, "protein": 16}, n_batches=2, seed=seed
    )
    mdata.obs["batch"] = np.where(mdata.obs["batch"].astype(str) == "b0", "a", "b")
    x = np.asarray(
        mdata["protein"].X.todense() if sp.issparse(mdata["protein"].X) else mdata["protein"].X
    )
    in_b = (mdata.obs["batch"] == "b").reindex(mdata["protein"].obs_names).to_numpy()
    x = x.copy()
    x[np.ix_(in_b, list(missing))] = 0
    mdata.mod["protein"].X = sp.csr_matrix(x)
    return mdata


def test_mask_flags_zero_blocks_only_where_their_absence_is_no_chance():
    from venncell.data.panels import unmeasured_mask

    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1, 2], [200, 200, 30])
    x = rng.poisson(2.0, size=(430, 5)).astype(float)
    x[codes == 1, 0] = 0  # unmeasured in batch 1
    x[codes == 2, 1] = 0  # zero in a batch of 30 cells: expected about 26 non-zero cells
    x[:, 2] = 0
    x[rng.choice(400, 4, replace=False), 2] = 1  # rare everywhere: 0 in a batch is chance
    x[codes == 2, 2] = 0
    mask = unmeasured_mask(sp.csr_matrix(x), codes, 3)
    assert mask.tolist() == [
        [False] * 5,
        [True, False, False, False, False],
        [False, True, False, False, False],
    ]


def test_model_warns_about_unmeasured_proteins_and_not_about_full_panels():
    from venncell import VennCell, VennCellInputWarning

    full = _panel_data(missing=())
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        VennCell.setup_mudata(full, batch_key="batch")
        VennCell(full)
    mdata = _panel_data()
    VennCell.setup_mudata(mdata, batch_key="batch")
    with pytest.warns(VennCellInputWarning) as got:
        VennCell(mdata)
    message = next(str(w.message) for w in got if "no counts at all" in str(w.message))
    names = list(mdata["protein"].var_names[:3])
    assert "Modality 'protein': 3 feature(s)" in message
    assert all(n in message for n in names)
    assert "batch(es) 'b' (3)" in message and "split_panels(mdata, 'protein', 'batch')" in message
    # the fix as written, on the MuData set up before: the panel is modelled (the copied setup left it out)
    import venncell

    fixed = eval(
        re.search(r"`mdata = (.+?)`", message).group(1), {"venncell": venncell, "mdata": mdata}
    )
    model = VennCell(fixed)
    assert list(model.specs) == ["rna", "protein", "protein_panel1"]
    assert model.specs["protein_panel1"].kind == "protein" and model.registry.batch_key == "batch"


def test_split_panels_moves_unmeasured_features_to_their_batches_cells(tiny_mdata):
    from venncell import VennCell
    from venncell.data import VennCellInputError, split_panels

    mdata = _panel_data()
    out = split_panels(mdata, "protein", "batch")
    assert out.uns["venncell_panels"] == {"protein_panel1": ["a"]}
    moved = list(mdata["protein"].var_names[:3])
    assert list(out["protein_panel1"].var_names) == moved
    assert not set(moved) & set(out["protein"].var_names)
    assert out["protein"].n_obs == mdata["protein"].n_obs
    in_a = mdata.obs.loc[out["protein_panel1"].obs_names, "batch"]
    assert (in_a == "a").all() and len(in_a) == (mdata.obs["batch"] == "a").sum()
    assert (out.obs["batch"] == mdata.obs["batch"].reindex(out.obs_names)).all()
    with pytest.raises(VennCellInputError, match="no layer 'counts'"):
        split_panels(mdata, "protein", "batch", layer="counts")
    VennCell.setup_mudata(
        out,
        modalities={"rna": "rna", "protein": "protein", "protein_panel1": "protein"},
        batch_key="batch",
    )
    model = VennCell(out, seed=0)
    model.train(
        stage1_epochs=2, stage2_epochs=1, batch_size=64, progress_bar="none", num_threads=1
    )
    pred = model.predict_modality(source=["rna"], target="protein_panel1")
    assert pred.shape == (out.n_obs, 3) and np.isfinite(pred).all()


def test_split_panels_edge_cases():
    """A batch without any of the modality leaves no empty modality behind; the MuData's other parts are kept,
    and a layer holding the counts is read, not .X."""
    from venncell import VennCellInputWarning
    from venncell.data import split_panels

    mdata = _panel_data(missing=range(16))  # batch 'b' has no protein at all
    mdata.uns["colors"] = ["red"]
    mdata.obsm["X_umap"] = np.zeros((mdata.n_obs, 2))
    out = split_panels(mdata, "protein", "batch")
    assert "protein" not in out.mod and out["protein_panel1"].n_vars == 16
    assert out.uns["colors"] == ["red"] and out.obsm["X_umap"].shape == (mdata.n_obs, 2)
    assert out.uns["venncell_panels_dropped"] == []
    # counts in a layer, scaled values in .X: the layer decides
    mdata = _panel_data()
    mdata["protein"].layers["counts"] = mdata["protein"].X.copy()
    mdata["protein"].X = mdata["protein"].X.toarray() + 1.0
    assert split_panels(mdata, "protein", "batch", layer="counts")["protein_panel1"].n_vars == 3
    with pytest.warns(VennCellInputWarning, match="nothing to split"):
        split_panels(mdata, "protein", "batch")


def test_nan_filled_panels_are_refused_with_the_way_to_keep_the_cells():
    """NaN for the proteins a batch lacked was refused with a fix (keep the cells whose values are all finite) that
    drops that whole batch."""
    from venncell import VennCell
    from venncell.data import VennCellInputError

    mdata = _panel_data()
    x = mdata["protein"].X.toarray()
    in_b = (mdata.obs["batch"] == "b").reindex(mdata["protein"].obs_names).to_numpy()
    x[np.ix_(in_b, [0, 1, 2])] = np.nan
    mdata.mod["protein"].X = x
    VennCell.setup_mudata(mdata, batch_key="batch")
    with pytest.raises(
        VennCellInputError, match=r"fill 3 feature\(s\) for the same \d+ cells"
    ) as err:
        VennCell(mdata)
    fix = re.search(
        r"`mdata = (venncell.data.split_panels\(mdata, 'protein', 'batch'\))`", str(err.value)
    )
    # which reads NaN as not measured: the split data hold no NaN; the fix runs as written
    import venncell

    out = eval(fix.group(1), {"venncell": venncell, "mdata": mdata})
    assert out.uns["venncell_panels"] == {"protein_panel1": ["a"]}
    VennCell.setup_mudata(out, batch_key="batch")
    VennCell(out)
    x[0, 5] = np.nan  # scattered: no panel, no such advice
    mdata.mod["protein"].X = x
    with pytest.raises(VennCellInputError, match="NaN/inf") as err:
        VennCell(mdata)
    assert "split_panels" not in str(err.value)


def test_split_panels_keeps_the_cells_order_and_reads_all_nan_batches_as_unmeasured():
    """A modality not last among partly paired ones changed MuData's order of cells, and .obsm was dropped; NaN
    in all of a small batch's cells was read as measured, and the NaN error's advice then looped."""
    import mudata as md

    from venncell.data import split_panels

    mdata = _panel_data()
    protein = mdata["protein"][mdata["protein"].obs_names[:380]].copy()  # partly paired
    x = protein.X.toarray()
    small = np.arange(len(x)) >= 372  # a batch of 8 cells, too few for the rate rule
    x[np.ix_(small, [4, 5])] = np.nan
    protein.X = x
    protein.obs["batch"] = np.where(small, "c", "a")
    both = md.MuData({"protein": protein, "rna": mdata["rna"]})
    both.obs["batch"] = np.where(both.obs_names.isin(protein.obs_names[small]), "c", "a")
    both.obsm["X_umap"] = np.arange(both.n_obs, dtype=float)[:, None].repeat(2, 1)
    out = split_panels(both, "protein", "batch")
    assert out.uns["venncell_panels"] == {"protein_panel1": ["a"]}
    assert not np.isnan(out["protein"].X).any()
    where = both.obs_names.get_indexer(out.obs_names)
    np.testing.assert_array_equal(out.obsm["X_umap"][:, 0], where)


def test_the_warning_gives_the_registered_layer():
    """The suggested split_panels call left out layer=, and read .X (scaled values), which split nothing."""
    from venncell import VennCell, VennCellInputWarning

    mdata = _panel_data()
    mdata["protein"].layers["counts"] = mdata["protein"].X.copy()
    mdata["protein"].X = mdata["protein"].X.toarray() + 1.0
    VennCell.setup_mudata(
        mdata,
        modalities={"rna": "rna", "protein": {"kind": "protein", "layer": "counts"}},
        batch_key="batch",
    )
    with pytest.warns(
        VennCellInputWarning, match=r"split_panels\(mdata, 'protein', 'batch', layer='counts'\)"
    ):
        VennCell(mdata)
