"""Bad input gets a clear VennCellInputError naming the modality, the problem and the fix."""

from __future__ import annotations

import re

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

from venncell import VennCell, VennCellInputError, make_synthetic
from venncell.data import VennCellInputWarning


def _pair(rna, prot, rna_names=None, prot_names=None):
    a = ad.AnnData(rna)
    a.obs_names = rna_names or [f"c{i}" for i in range(rna.shape[0])]
    b = ad.AnnData(prot)
    b.obs_names = prot_names or [f"c{i}" for i in range(prot.shape[0])]
    return md.MuData({"rna": a, "protein": b})


def _counts(n=20, f=6, seed=0):
    return np.random.default_rng(seed).poisson(3, (n, f)).astype(np.float32) + 1


def _build(mdata, **reg):
    VennCell.setup_mudata(mdata, modalities=reg or None)
    return VennCell(mdata, shared_dim=2, private_dim=2)


def test_nan_is_named():
    x = _counts()
    x[3, 2] = np.nan
    with pytest.raises(VennCellInputError, match=r"'rna'.*NaN.*row 3, feature column 2"):
        _build(
            _pair(x, _counts(seed=1)), rna={"kind": "rna", "likelihood": "nb"}, protein="protein"
        )


def test_negative_counts_under_nb():
    x = _counts()
    x[0, 0] = -1
    with pytest.raises(
        VennCellInputError,
        match=r"'rna'.*counts \('nb'\).*1 negative value\(s\).*first at cell row 0, feature column 0"
        r".*likelihood='gaussian'",
    ):
        _build(
            _pair(x, _counts(seed=1)), rna={"kind": "rna", "likelihood": "nb"}, protein="protein"
        )


@pytest.mark.parametrize("kind, fmt", [("rna", "dense"), ("atac", "dense"), ("rna", "csc")])
def test_a_few_negative_counts_are_refused_not_modelled_as_gaussian(kind, fmt):
    """Whole numbers with one corrupt negative entry were taken for normalised data: the modality was modelled as
    Gaussian with a warning that did not say how many entries or where (ATAC's binarising would have read it as
    0). They are refused, located (in a CSC matrix the location was read as if it were CSR)."""
    x = _counts(40, 30)
    x[7, 3] = -1
    x = x if fmt == "dense" else sp.csr_matrix(x).asformat(fmt)
    with pytest.raises(
        VennCellInputError,
        match=rf"'{kind}'.*1 negative value\(s\).*row 7, feature column 3.*corrupt counts",
    ):
        m = _pair(x, _counts(40, 4, seed=1))
        _build(
            md.MuData({kind: m["rna"], "protein": m["protein"]}), **{kind: kind}, protein="protein"
        )


def test_new_cells_that_are_not_counts_are_told_to_bring_counts_only(helpers):
    """At embedding time the likelihood is the trained model's: the fix offered only raw counts, not
    likelihood='gaussian' (which cannot be chosen any more)."""
    mdata, _ = make_synthetic(n_cells=120, modalities={"rna": 30, "protein": 10}, seed=0)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=2, private_dim=2)
    model.train(**helpers.FAST)
    new = mdata[:20].copy()
    new.mod["rna"].X = sp.csr_matrix(new["rna"].X).log1p()
    with pytest.raises(VennCellInputError, match="as the model was trained on") as err:
        model.get_latent_representation(new, source="encoder")
    assert "gaussian" not in str(err.value)


def test_non_integer_counts_under_nb():
    x = _counts() + 0.5
    with pytest.raises(VennCellInputError, match=r"'rna'.*non-integer.*layer='counts'"):
        _build(
            _pair(x, _counts(seed=1)), rna={"kind": "rna", "likelihood": "nb"}, protein="protein"
        )


def test_ambient_corrected_counts_get_the_rounding_fix():
    """Counts corrected for ambient RNA (SoupX, DecontX) are whole numbers but a few: the error called them
    normalised and offered a counts layer the user does not have, and the default fell back to a Gaussian on raw
    counts (negative predicted counts) with the same advice."""
    x = sp.csr_matrix(_counts(n=40))
    x.data[::25] -= 0.37  # 4% of the values
    rounding = (
        r"96% of its nonzero values are whole numbers.*ambient RNA.*np\.rint.*layer='counts'"
    )
    with pytest.raises(VennCellInputError, match=rounding) as err:
        _build(
            _pair(x, _counts(n=40, seed=1)),
            rna={"kind": "rna", "likelihood": "nb"},
            protein="protein",
        )
    assert "looks normalised" not in str(err.value)
    with pytest.warns(VennCellInputWarning, match=rounding):
        _build(_pair(x, _counts(n=40, seed=1)), rna="rna", protein="protein")
    # the fix as written
    mdata = _pair(x, _counts(n=40, seed=1))
    c = mdata["rna"].X.copy()
    c.data = np.rint(c.data)
    mdata["rna"].layers["counts"] = c
    model = _build(mdata, rna={"kind": "rna", "layer": "counts"}, protein="protein")
    assert model.specs["rna"].likelihood == "nb"


def test_non_binary_under_bernoulli():
    with pytest.raises(VennCellInputError, match=r"'protein'.*Bernoulli.*binarize=true"):
        _build(
            _pair(_counts(), _counts(seed=1)),
            rna="rna",
            protein={"kind": "protein", "likelihood": "bernoulli"},
        )


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda x: np.log1p(x), r"non-integer values \(e\.g\. [0-9.]+\)"),
        (lambda x: x - 5, r"negative values \(min -"),
    ],
)
def test_count_kind_that_is_not_counts_warns_before_falling_back_to_gaussian(change, reason):
    """kind 'rna' with log-normalised (or centred) values: the Gaussian fallback is announced, with the fix."""
    m = _pair(change(_counts()), _counts(seed=1))
    with pytest.warns(
        VennCellInputWarning, match=rf"'rna' \(kind 'rna'\) has {reason}.*Gaussian.*layer='counts'"
    ):
        model = _build(m, rna="rna", protein="protein")
    assert model.specs["rna"].likelihood == "gaussian"
    # registering the Gaussian on purpose is silent
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        _build(m, rna={"kind": "rna", "likelihood": "gaussian"}, protein="protein")


@pytest.mark.parametrize("where", ["rna", "both"])
def test_repeated_cell_names_are_rejected(where):
    names = [f"c{i}" for i in range(19)] + ["c0"]
    m = _pair(
        _counts(), _counts(seed=1), rna_names=names, prot_names=names if where == "both" else None
    )
    with pytest.raises(
        VennCellInputError, match=r"repeated cell name.*'c0'.*obs_names_make_unique"
    ):
        _build(m, rna="rna", protein="protein")


def test_no_common_cells():
    m = _pair(_counts(), _counts(seed=1), prot_names=[f"x{i}" for i in range(20)])
    with pytest.raises(VennCellInputError, match=r"No cell is measured in more than one modality"):
        _build(m, rna="rna", protein="protein")


def test_zero_features():
    m = _pair(_counts(), np.zeros((20, 0), dtype=np.float32))
    with pytest.raises(VennCellInputError, match=r"'protein' has zero features"):
        _build(m, rna="rna", protein={"kind": "protein", "likelihood": "nb"})


def test_all_zero_cell_under_counts():
    x = _counts()
    x[4] = 0
    with pytest.raises(VennCellInputError, match=r"'rna'.*1 cell\(s\) are all-zero.*filter_cells"):
        _build(_pair(x, _counts(seed=1)), rna="rna", protein="protein")


def test_zero_variance_feature_warns():
    x = _counts()
    x[:, 1] = 5
    with pytest.warns(VennCellInputWarning, match=r"'rna': 1 feature\(s\) have zero variance"):
        _build(_pair(x, _counts(seed=1)), rna="rna", protein="protein")


def test_zero_variance_feature_dropped_or_kept():
    """zero_variance='drop' removes constant features (and new data may still carry them); 'keep' is silent."""
    import warnings

    x = _counts()
    x[:, 1] = 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        model = _build(
            _pair(x, _counts(seed=1)),
            rna={"kind": "rna", "zero_variance": "drop"},
            protein="protein",
        )
        assert model.specs["rna"].n_features == 5 and model.specs["rna"].dropped_features == ["1"]
        model._data_for(_pair(x, _counts(seed=1)))  # the dropped feature in new data: no warning
        # new data lacking a feature: the dropped one is not counted among the extra ones
        short = _pair(x, _counts(seed=1))
        short.mod["rna"] = short["rna"][:, [0, 1, 3, 4, 5]].copy()
        with pytest.raises(VennCellInputError, match=r"\['2'\]\); 0 extra feature"):
            model._data_for(short)
        kept = _build(
            _pair(x, _counts(seed=1)),
            rna={"kind": "rna", "zero_variance": "keep"},
            protein="protein",
        )
        assert kept.specs["rna"].n_features == 6
    # the columns in another order beside the dropped one are reordered with a warning, as without it
    turned = _pair(x[:, ::-1].copy(), _counts(seed=1))
    turned["rna"].var_names = [str(i) for i in range(6)][::-1]
    with pytest.warns(VennCellInputWarning, match="'rna': features reordered"):
        model._data_for(turned)
    # one extra feature beside the dropped one: one extra, not two
    wider = _pair(np.hstack([x, _counts(f=1, seed=3)]), _counts(seed=1))
    wider["rna"].var_names = [str(i) for i in range(6)] + ["X"]
    with pytest.warns(VennCellInputWarning, match="'rna': the data has 1 extra feature"):
        model._data_for(wider)


def test_zero_variance_policy_unknown():
    with pytest.raises(VennCellInputError, match=r"'rna': zero_variance='remove' is not one of"):
        _build(
            _pair(_counts(), _counts(seed=1)),
            rna={"kind": "rna", "zero_variance": "remove"},
            protein="protein",
        )


def test_missing_layer_and_modality():
    m = _pair(_counts(), _counts(seed=1))
    with pytest.raises(VennCellInputError, match=r"'rna': layer 'counts' does not exist"):
        VennCell.setup_mudata(m, modalities={"rna": {"layer": "counts"}, "protein": "protein"})
    with pytest.raises(VennCellInputError, match=r"Modality 'adt' is not in the MuData"):
        VennCell.setup_mudata(m, modalities={"rna": "rna", "adt": "protein"})


def test_single_modality_rejected():
    m = _pair(_counts(), _counts(seed=1))
    with pytest.raises(VennCellInputError, match="at least two modalities"):
        VennCell.setup_mudata(m, modalities=["rna"])


@pytest.mark.parametrize(
    "key,value",
    [("shared_dim", 0), ("private_dim", -1), ("latent_noise", -0.1), ("consistency_weight", -1.0)],
)
def test_config_out_of_range(key, value):
    m = _pair(_counts(), _counts(seed=1))
    VennCell.setup_mudata(m)
    kwargs = {"shared_dim": 2, "private_dim": 2, key: value}
    with pytest.raises(VennCellInputError, match=rf"{key}=.*out of range"):
        VennCell(m, **kwargs)


def test_a_feature_that_a_few_outliers_hold_is_named():
    """Three cells at 1e6 in a morphology column of values near 10 made it `unexplained` without a word (the
    standardised scale was theirs). Skewed but whole columns (log-normal) are not flagged."""
    import warnings

    from venncell.data.validate import VennCellInputWarning

    rng = np.random.default_rng(0)
    rare = np.zeros(500)
    rare[:4] = 1.0  # a rare event: its variance is its few cells' by nature, not an outlier's
    feats = np.column_stack(
        [10 + 3 * rng.normal(size=500), rng.lognormal(0, 1, 500), rng.standard_t(3, 500), rare]
    ).astype(np.float32)
    feats[:3, 0] = 1e6
    rna, features = ad.AnnData(_counts(500, 6)), ad.AnnData(feats)
    rna.obs_names = features.obs_names = [f"c{i}" for i in range(500)]
    m = md.MuData({"rna": rna, "features": features})
    m["features"].var_names = ["area", "skewed", "heavy", "rare"]
    with pytest.warns(
        VennCellInputWarning, match=r"'features': in 1 feature\(s\) \(area\) the 3 most extreme"
    ) as said:
        _build(m, rna="rna", features="features")
    # the clip it writes works as written, at any number of cells (percentiles keep 0.1 % of them, 3 of 500 too)
    clip = next(str(w.message) for w in said if "most extreme" in str(w.message))
    exec(re.search(r"`(x = np.+?)`", clip).group(1), {"np": np, "mdata": m})
    assert (
        m["features"].X[:3, 0].max() < 200 and m["features"].X[3, 3] == 1.0
    )  # the rare event stays
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        _build(m, rna="rna", features="features")
    feats[:3, 0] = 10
    m["features"].X = feats
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        _build(m, rna="rna", features="features")


def test_sparse_nan_is_named():
    x = sp.csr_matrix(_counts())
    x.data[7] = np.inf
    with pytest.raises(VennCellInputError, match=r"'rna'.*NaN/inf.*row 1.*mdata\['rna'\]\.X\.sum"):
        _build(_pair(x, _counts(seed=1)), rna="rna", protein="protein")


def test_the_fix_names_the_layer_the_values_were_read_from():
    """NaN in a registered layer: the fix's line of code filtered on .X, which held other (finite) values."""
    m = _pair(_counts(), _counts(seed=1))
    bad = _counts()
    bad[2, 1] = np.nan
    m["rna"].layers["counts"] = bad
    with pytest.raises(
        VennCellInputError, match=r"'rna'.*NaN.*mdata\['rna'\]\.layers\['counts'\]\.sum"
    ):
        _build(m, rna={"kind": "rna", "layer": "counts"}, protein="protein")


# ---------------------------------------------------------------- property-based: any such input, same error
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(10, 30),
    f=st.integers(2, 12),
    row=st.integers(0, 1000),
    col=st.integers(0, 1000),
    bad=st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 2.5]),
    sparse=st.booleans(),
)
def test_any_bad_count_value_is_reported(n, f, row, col, bad, sparse):
    x = _counts(n, f)
    r, c = row % n, col % f
    x[r, c] = bad
    m = _pair(sp.csr_matrix(x) if sparse else x, _counts(n, 4, seed=1))
    expected = {
        True: r"NaN/inf.*first at cell row",
        False: r"negative value" if bad < 0 else r"non-integer",
    }
    with pytest.raises(
        VennCellInputError, match=rf"Modality 'rna'.*{expected[not np.isfinite(bad)]}"
    ):
        _build(
            m,
            rna={"kind": "rna", "likelihood": "nb"},
            protein={"kind": "protein", "likelihood": "nb"},
        )


# ---------------------------------------------------------------- image modalities (cells x C x H x W)
def _with_image(img, n_obs=20, key="img"):
    """RNA counts plus an image modality whose .obsm[key] holds ``img`` (None: nothing in .obsm)."""
    m = _pair(_counts(n_obs), _counts(n_obs, seed=1))
    cells = ad.AnnData(np.zeros((n_obs, 0), dtype=np.float32))
    cells.obs_names = [f"c{i}" for i in range(n_obs)]
    if img is not None:
        cells.obsm[key] = img
    return md.MuData({"rna": m["rna"], "cells": cells})


def _images(n=20, c=2, dtype=np.float32):
    return np.random.default_rng(0).random((n, c, 8, 8)).astype(dtype)


def test_image_wrong_rank():
    m = _with_image(_images()[:, 0])  # channel axis missing
    with pytest.raises(
        VennCellInputError, match=r"'cells'.*rank 3.*must be 4-D.*images\[:, None\]"
    ):
        _build(m, rna="rna", cells={"kind": "image", "obsm_key": "img"})


def test_image_non_numeric_dtype():
    m = _with_image(_images().astype(object))
    with pytest.raises(VennCellInputError, match=r"'cells'.*dtype object.*astype\(np.float32\)"):
        _build(m, rna="rna", cells={"kind": "image", "obsm_key": "img"})


def test_image_bool_dtype():
    m = _with_image(_images() > 0.5)
    with pytest.raises(VennCellInputError, match=r"'cells'.*dtype bool.*real numbers"):
        _build(m, rna="rna", cells={"kind": "image", "obsm_key": "img"})


def test_image_channel_out_of_range():
    m = _with_image(_images(c=2))
    with pytest.raises(
        VennCellInputError,
        match=r"'cells'.*channels \[2\] are out of range.*2 channel\(s\).*0\.\.1",
    ):
        _build(m, rna="rna", cells={"kind": "image", "obsm_key": "img", "channels": [2]})


def test_image_cell_count_mismatch(tmp_path):
    np.save(tmp_path / "crops.npy", _images(n=25))  # the store has 25 rows, the modality 20 cells
    with pytest.raises(
        VennCellInputError, match=r"'cells'.*25 rows but the modality has 20 cells"
    ):
        _build(
            _with_image(None),
            rna="rna",
            cells={"kind": "image", "store": str(tmp_path / "crops.npy")},
        )


def test_image_nan_pixels():
    img = _images()
    img[3, 1, 4, 5] = np.nan
    with pytest.raises(
        VennCellInputError,
        match=r"'cells'.*NaN/inf pixel.*cell row 3, channel 1, pixel \(4, 5\).*nan_to_num",
    ):
        _build(_with_image(img), rna="rna", cells={"kind": "image", "obsm_key": "img"})


def test_image_missing_obsm_key():
    with pytest.raises(
        VennCellInputError, match=r"'cells'.*obsm\['crops'\]` does not exist.*obsm keys: \['img'\]"
    ):
        _build(_with_image(_images()), rna="rna", cells={"kind": "image", "obsm_key": "crops"})


def test_image_missing_store_file(tmp_path):
    with pytest.raises(
        VennCellInputError, match=r"'cells'.*image store .*nope.npy' does not exist.*`store` path"
    ):
        _build(
            _with_image(None),
            rna="rna",
            cells={"kind": "image", "store": str(tmp_path / "nope.npy")},
        )


@pytest.mark.parametrize("sparse", [True, False])
def test_binarised_peaks_stored_as_bool_train_like_floats(sparse):
    """``X > 0`` gives bool; it is a binary modality, not "non-numeric"."""
    from venncell.data import make_synthetic

    fits = []
    for as_bool in (True, False):
        mdata, _ = make_synthetic(n_cells=120, modalities={"rna": 30, "atac": 40}, seed=3)
        peaks = (
            np.asarray(
                mdata["atac"].X.todense() if sp.issparse(mdata["atac"].X) else mdata["atac"].X
            )
            > 0
        )
        peaks = peaks if as_bool else peaks.astype(np.float32)
        mdata.mod["atac"].X = sp.csr_matrix(peaks) if sparse else peaks
        VennCell.setup_mudata(mdata)
        model = VennCell(mdata, hidden=16, encoder_hidden=16, seed=0)
        model.train(stage1_epochs=2, stage2_epochs=1, progress_bar="none", num_threads=1)
        fits.append(model.get_latent_representation(block="all"))
    assert np.isfinite(fits[0]).all()
    np.testing.assert_array_equal(fits[0], fits[1])


def test_binary_data_with_a_corrupt_entry_are_refused_located():
    """0/1 data with one -1 were read as Bernoulli, whose error said to binarise, which then refused the -1."""
    x = (np.random.default_rng(0).random((40, 12)) < 0.3).astype(np.float32)
    x[5, 2] = -1
    with pytest.raises(
        VennCellInputError, match=r"'protein'.*1 negative value\(s\).*row 5, feature column 2"
    ):
        _build(_pair(_counts(40, 6), x), rna="rna", protein="protein")


def _fix(message: str, start: str) -> str:
    """The code in backticks of ``message`` that starts with ``start``."""
    return re.search(rf"`({re.escape(start)}[^`]*)`", message).group(1)


def test_the_fixes_in_the_messages_run_as_written_on_the_mudata():
    """A user applying the fixes word for word: the NaN fix named an `adata` the user did not have, the
    non-numeric data gave numpy's TypeError when the likelihood was inferred, the zero-variance fix registered
    one modality only, and the all-zero cells' fix filtered an `adata`."""
    env = {"np": np, "VennCell": VennCell}
    x = _counts()
    x[3, 2] = np.nan
    m = _pair(x, _counts(seed=1))
    with pytest.raises(VennCellInputError, match="NaN") as err:
        _build(m)
    exec(_fix(str(err.value), "mdata.mod['rna'] = "), {**env, "mdata": m})
    m.update()
    assert m.n_obs == 20 and m["rna"].n_obs == 19
    _build(m)

    m = _pair(_counts(), _counts(seed=1))
    m["protein"].X = m["protein"].X.astype(object)
    with pytest.raises(
        VennCellInputError, match=r"'protein' holds non-numeric values \(dtype object\)"
    ) as err:
        VennCell.setup_mudata(m)
    exec(_fix(str(err.value), "mdata['protein'].X = "), {**env, "mdata": m})
    _build(m)

    x = _counts()
    x[:, 1] = 5
    m = _pair(x, _counts(seed=1))
    m.obs["batch"] = ["a", "b"] * 10
    with pytest.warns(VennCellInputWarning, match="zero variance") as said:
        VennCell.setup_mudata(m, batch_key="batch")
        VennCell(m, shared_dim=2, private_dim=2)
    call = _fix(
        str(next(w.message for w in said if "zero variance" in str(w.message))), "VennCell."
    )
    exec(call, {**env, "mdata": m})
    model = VennCell(m, shared_dim=2, private_dim=2)
    assert list(model.specs) == ["rna", "protein"] and model.registry.batch_key == "batch"
    assert model.specs["rna"].dropped_features == ["1"]

    # an image's stored names are setup_mudata's (obsm_key, store), and a weight of 0.0 is kept
    from venncell.data.registry import as_setup_options
    from venncell.data.validate import _drop_setup

    stored = {
        "modalities": {
            "rna": {"kind": "rna", "likelihood": "nb", "weight": 0.0, "binarize": False},
            "cells": {
                "kind": "image",
                "image_key": "crops",
                "image_store": None,
                "channels": None,
            },
        },
        "batch_key": None,
    }
    call = _drop_setup("rna", {**stored, "modalities": as_setup_options(stored)})
    assert "'weight': 0.0" in call and "'obsm_key': 'crops'" in call and "image_key" not in call

    x = _counts()
    x[4] = 0
    m = _pair(x, _counts(seed=1))
    with pytest.raises(VennCellInputError, match="all-zero") as err:
        _build(m)
    import scanpy as sc

    exec(_fix(str(err.value), "sc.pp"), {**env, "sc": sc, "mdata": m})
    m.update()
    _build(m)


def test_default_cell_names_in_every_modality_are_pointed_out():
    """Modalities built from bare matrices (ad.AnnData(X)) are all named '0'..'n-1': pairing by name then pairs
    row i with row i, right or wrong, and rows in another cell order trained silently as the wrong pairs."""
    x = _counts(30, 6)
    bare = md.MuData({"rna": ad.AnnData(x), "protein": ad.AnnData(_counts(30, 4, seed=1))})
    with pytest.warns(VennCellInputWarning, match=r"named '0', '1', \.\.\..*obs_names = barcodes"):
        VennCell.setup_mudata(bare)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        VennCell.setup_mudata(_pair(x, _counts(30, 4, seed=1)))  # barcodes: no warning


def test_an_axis_1_mudata_is_refused_with_the_reason():
    """muon's layout for datasets of the same features was refused as "repeated cell names", with a fix that
    changed nothing."""
    same = md.MuData(
        {"rna": ad.AnnData(_counts()), "protein": ad.AnnData(_counts(seed=1))}, axis=1
    )
    with pytest.raises(VennCellInputError, match="axis=1.*axis=0"):
        VennCell.setup_mudata(same)


def test_a_backed_mudata_needs_backed_true(tmp_path):
    """A MuData read with backed=True, given without backed=True, was refused as "non-numeric values (dtype
    object)" with an astype fix that raises on the on-disk matrix."""
    mdata, _ = make_synthetic(n_cells=60, modalities={"rna": 12, "protein": 5}, seed=0)
    VennCell.setup_mudata(mdata)
    mdata.write(tmp_path / "d.h5mu")
    backed = md.read_h5mu(tmp_path / "d.h5mu", backed=True)
    with pytest.raises(
        VennCellInputError, match=r"read with backed=True.*VennCell\(mdata, backed=True\)"
    ):
        VennCell(backed)
    VennCell(backed, backed=True, shared_dim=2, private_dim=2)
