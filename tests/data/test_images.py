"""Image modalities: a shared factor visible in two channels lands in the shared latent, each channel's own
factor does not; the lazy .npy store gives the same batches and latents as ``.obsm``; save/load is exact."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neighbors import KNeighborsRegressor

from venncell import VennCell, VennCellInputError
from venncell.data.dataset import MultiModalData
from venncell.data.images import STORE_UNS_KEY


def knn_r2(z, y):
    cv = KFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsRegressor(15), z, y, cv=cv, scoring="r2").mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, helpers):
    img, f = helpers.make_images()
    mdata = helpers.image_mudata(img)
    model = VennCell(mdata, **helpers.IMAGE_MODEL)
    model.train(
        stage1_epochs=15,
        stage2_epochs=10,
        batch_size=64,
        lr_latent=0.05,
        progress_bar="none",
        run_dir=tmp_path_factory.mktemp("img_run"),
    )
    return model, mdata, img, f


def test_shared_latent_holds_shared_factor_only(trained):
    model, mdata, _, f = trained
    shared = model.get_latent_representation()
    r2 = [knn_r2(shared, f[:, k]) for k in range(3)]
    assert r2[0] > 0.6, r2
    assert max(r2[1], r2[2]) < 0.3 and r2[0] - max(r2[1], r2[2]) > 0.4, r2
    for k, m in ((1, "ch0"), (2, "ch1")):
        private = model.get_latent_representation(block=f"private:{m}")
        own, other = knn_r2(private, f[:, k]), knn_r2(private, f[:, 3 - k])
        assert own > 0.6 and other < 0.3, (m, own, other)


def test_shared_latent_from_one_channel_alone(trained):
    """Either channel alone sees the shared factor, so its encoder recovers it without the other."""
    model, _, _, f = trained
    for m in ("ch0", "ch1"):
        assert knn_r2(model.get_latent_representation(modalities=[m]), f[:, 0]) > 0.5


def test_npy_store_matches_obsm(trained, tmp_path, helpers):
    model, mdata, img, _ = trained
    path = tmp_path / "crops.npy"
    np.save(path, img)
    lazy = helpers.image_mudata(img, store=str(path))
    data_obsm = MultiModalData(mdata, model.registry, training=False)
    data_lazy = MultiModalData(lazy, model.registry, training=False)
    assert isinstance(
        data_lazy.x["ch0"].array, np.memmap
    )  # rows are read per batch, not loaded up front
    idx = np.array([5, 0, 299, 17])
    a, b = data_obsm.get(idx), data_lazy.get(idx)
    for m in ("ch0", "ch1"):
        np.testing.assert_allclose(a.x[m].numpy(), b.x[m].numpy(), rtol=1e-6, atol=1e-6)
    # the training cells read from the store are still the training cells (matched by name and data)
    np.testing.assert_allclose(
        model.get_latent_representation(mdata=lazy),
        model.get_latent_representation(),
        rtol=1e-5,
        atol=1e-5,
    )

    # a model fitted on the store records the same per-channel statistics as one fitted on .obsm
    fitted = VennCell(helpers.image_mudata(img, store=str(path)), **helpers.IMAGE_MODEL)
    for m in ("ch0", "ch1"):
        assert fitted.specs[m].image_store == str(path.resolve())
        np.testing.assert_allclose(
            fitted.specs[m].channel_mean, model.specs[m].channel_mean, rtol=1e-5
        )
        np.testing.assert_allclose(
            fitted.specs[m].channel_std, model.specs[m].channel_std, rtol=1e-5
        )


def test_save_load_identical_and_new_store(trained, tmp_path, helpers):
    model, mdata, img, _ = trained
    model.save(tmp_path / "model")
    loaded = VennCell.load(tmp_path / "model")
    for block in ("shared", "private:ch0", "private:ch1"):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(mdata, block=block),
            model.get_latent_representation(block=block, source="encoder"),
        )
    # new cells in their own store: the loaded model reads that store, not the training one
    new_img, _ = helpers.make_images(n=50, seed=7)
    path = tmp_path / "new.npy"
    np.save(path, new_img)
    new = helpers.image_mudata(new_img, store=str(path))
    z_store = loaded.get_latent_representation(new)
    z_obsm = model.get_latent_representation(helpers.image_mudata(new_img))
    np.testing.assert_allclose(z_store, z_obsm, rtol=1e-5, atol=1e-5)
    assert z_store.shape == (50, 2)


def test_a_model_trained_from_a_store_embeds_new_crops_from_obsm(tmp_path, helpers):
    """New cells set up with obsm_key were refused by a model trained from a store (it looked for a store only)."""
    img, _ = helpers.make_images(n=120, seed=3)
    path = tmp_path / "crops.npy"
    np.save(path, img)
    model = VennCell(helpers.image_mudata(img, store=str(path)), **helpers.IMAGE_MODEL)
    model.train(**helpers.FAST)
    new_img, _ = helpers.make_images(n=30, seed=8)
    np.save(tmp_path / "new.npy", new_img)
    from_store = model.get_latent_representation(
        helpers.image_mudata(new_img, store=str(tmp_path / "new.npy"))
    )
    from_obsm = model.get_latent_representation(helpers.image_mudata(new_img))
    np.testing.assert_allclose(from_obsm, from_store, rtol=1e-5, atol=1e-5)


def test_new_data_without_store_is_named(trained, helpers):
    model, _, img, _ = trained
    new = helpers.image_mudata(img[:10], store=None)
    for m in ("ch0", "ch1"):
        del new[m].obsm["img"]
    with pytest.raises(VennCellInputError, match=r"'ch0'.*obsm\['img'\].*does not exist"):
        model.get_latent_representation(new)
    assert STORE_UNS_KEY not in new["ch0"].uns


def test_options_of_tabular_data_are_refused_for_images(helpers):
    """transform='clr' and zero_variance='drop' on an image modality were accepted and did nothing."""
    mdata = helpers.image_mudata(helpers.make_images(n=40)[0])
    for option in ({"transform": "clr"}, {"zero_variance": "drop"}, {"layer": "counts"}):
        reg = {
            m: {"kind": "image", "obsm_key": "img", "channels": [0], **option} for m in mdata.mod
        }
        with pytest.raises(VennCellInputError, match="does not apply to image modalities"):
            VennCell.setup_mudata(mdata, modalities=reg)


def test_image_features_are_plain_gaussian_features():
    """CellProfiler-style morphology tables need no image machinery: kind 'features', standardised, Gaussian."""
    rng = np.random.default_rng(0)
    n = 120
    morph = pd.DataFrame(
        rng.normal(size=(n, 5)) * [1, 10, 100, 0.1, 3] + [0, 5, 50, 1, -2],
        columns=[
            "AreaShape_Area",
            "Intensity_Mean_DNA",
            "Texture_Contrast",
            "Eccentricity",
            "Zernike_0_0",
        ],
    )
    names = [f"c{i}" for i in range(n)]
    mdata = md.MuData(
        {
            "morph": ad.AnnData(
                morph.to_numpy(np.float32),
                obs=pd.DataFrame(index=names),
                var=pd.DataFrame(index=morph.columns),
            ),
            "rna": ad.AnnData(
                rng.poisson(3, (n, 8)).astype(np.float32) + 1, obs=pd.DataFrame(index=names)
            ),
        }
    )
    VennCell.setup_mudata(mdata, modalities={"morph": "features", "rna": "rna"})
    model = VennCell(mdata, shared_dim=2, private_dim=2, hidden=16, encoder_hidden=16)
    spec = model.specs["morph"]
    assert (spec.kind, spec.likelihood, spec.encoder_transform) == (
        "features",
        "gaussian",
        "standardise",
    )
    # the data are divided by each feature's training sd (unit scale for the likelihood); the encoders then see
    # them standardised
    sd = morph.std(ddof=0).to_numpy()
    np.testing.assert_allclose(spec.data_scale, sd, rtol=1e-4)
    np.testing.assert_allclose(
        spec.feature_mean, morph.mean().to_numpy() / sd, rtol=1e-4, atol=1e-4
    )
    model.train(stage1_epochs=2, stage2_epochs=1, batch_size=32, progress_bar="none")
    assert np.isfinite(model.get_latent_representation(modalities=["morph"])).all()


def test_zarr_store_matches_obsm(tmp_path, helpers):
    zarr = pytest.importorskip("zarr")
    img, _ = helpers.make_images(n=60)
    z = zarr.open_array(
        str(tmp_path / "crops.zarr"),
        mode="w",
        shape=img.shape,
        dtype="float32",
        chunks=(16, 2, 16, 16),
    )
    z[:] = img
    small = dict(helpers.IMAGE_MODEL, cnn_channels=[4])
    a = VennCell(helpers.image_mudata(img), **small)
    b = VennCell(helpers.image_mudata(img, store=str(tmp_path / "crops.zarr")), **small)
    idx = np.array([3, 1, 59])
    for m in ("ch0", "ch1"):
        np.testing.assert_array_equal(a.data.get(idx).x[m].numpy(), b.data.get(idx).x[m].numpy())
    # same pixels -> same spectral start (PCA of pooled pixels) for the latent tables
    np.testing.assert_allclose(
        a.module.shared_table.weight.detach().numpy(),
        b.module.shared_table.weight.detach().numpy(),
        atol=1e-5,
    )


def test_interpretation_reads_an_image_modality_pixel_by_pixel(trained, recwarn):
    """Attribution, its feature tables and the planner take image modalities (pixels named c<ch>_y<row>_x<col>);
    they once failed on the image's empty var."""
    model, mdata, _, f = trained
    mdata.obs["brightness"] = f[:, 0]  # the shared factor
    mdata.obs["ch0_position"] = f[:, 1]  # ch0's private factor
    try:
        res = model.attribution(
            ["brightness", "ch0_position"], n_boot=20, n_perm=20, progress=False
        )
        plan = model.plan_measurements(n_boot=10)
    finally:
        del mdata.obs["brightness"], mdata.obs["ch0_position"]
    table = res.features["ch0"]
    assert (
        len(table) == len(mdata["ch0"].obsm["img"][0, 0].ravel()) and table.index[0] == "c0_y0_x0"
    )
    markers = res.markers.set_index("marker")
    assert markers.loc["brightness", "shared_score"] > 0.8
    assert markers.loc["ch0_position", "best_block"] == "private:ch0"
    assert markers.loc["ch0_position", "shared_score"] < 0.5
    rows = plan.summary.set_index("target")
    assert set(rows.index) == {"ch0", "ch1"}
    assert (
        rows["pooled_r2_predicted"] > 0
    ).all()  # the shared brightness is predictable across channels


def test_an_image_modality_without_cells_is_not_called_off_scale(trained, helpers):
    """New data whose image modality holds no crops warned that "these crops' intensities are on another scale"
    (mean 0, sd 1e-06): there was nothing to compare."""
    import warnings

    import mudata

    model, mdata, img, _ = trained
    new, _ = helpers.make_images(n=20, seed=3)
    cells = helpers.image_mudata(new)
    cells.mod["ch1"] = cells["ch1"][:0].copy()
    cells = mudata.MuData(dict(cells.mod))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = model.get_latent_representation(cells, block="private:ch1")
    assert np.isnan(z).all()
    assert not [w for w in caught if "another scale" in str(w.message)]
