"""The spectral start of the latent tables for cells outside the rows it was fitted on: cells beyond ``max_cells``
(large data sets) and cells that lack a modality (partial pairing). They used to start from random values."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

from venncell import VennCell, make_synthetic
from venncell.analysis.probes import cv_r2
from venncell.data.validate import VennCellInputWarning
from venncell.module.init import spectral_init

# RNA, and 200 dense real-valued features (log protein counts standing in for morphology features, `kind:
# features`): more features than the 30 PCs kept, so the dense PCA's randomised solver is approximate there, and
# only the same map for fit rows and placed cells (not fit_transform's U·S) puts twins in the same place
TWIN_MODS = {"rna": 120, "protein": 200}


def _duplicated(n: int = 300, batches: bool = False):
    """Every cell twice (cell i and cell i + n are identical), so that a copy outside the fit rows can be compared
    with its twin."""
    kw = dict(n_batches=2, batch_effect=1.0) if batches else {}
    once, truth = make_synthetic(n_cells=n, modalities=dict(TWIN_MODS), seed=6, **kw)
    mods = {}
    for m, name in (("rna", "rna"), ("protein", "morph")):
        twice = ad.concat([once[m], once[m]], index_unique=None)
        twice.obs_names = [f"c{i}" for i in range(2 * n)]
        if name == "morph":
            twice.X = np.log1p(twice.X.toarray() if sp.issparse(twice.X) else twice.X)
        mods[name] = twice
    mdata = md.MuData(mods)
    if batches:
        mdata.obs["batch"] = np.tile(once.obs["batch"].to_numpy(), 2)
    return mdata, np.vstack([truth.shared, truth.shared])


@pytest.mark.filterwarnings(
    "ignore:Observation names are not unique"
)  # the twins' per-modality concat, renamed after
@pytest.mark.parametrize("batches,backed", [(False, False), (True, False), (False, True)])
def test_cells_beyond_max_cells_start_where_their_twins_start(batches, backed, tmp_path):
    """Fitted on half of the cells (``max_cells``), the start places every other cell by the same maps: each cell
    starts exactly where its identical twin starts, whichever of the two the fit rows drew (with random starts
    for the rest, the twins split between fit rows and the rest would differ). Backed data: the fit rows are
    whole on-disk chunks, and the rest is read chunk by chunk."""
    mdata, shared_truth = _duplicated(batches=batches)
    n = mdata.n_obs // 2
    if backed:
        mdata.write(tmp_path / "twins.h5mu")
        model = VennCell(
            str(tmp_path / "twins.h5mu"),
            shared_dim=4,
            private_dim=2,
            backed=True,
            chunk_size=50,
            seed=0,
        )
    else:
        VennCell.setup_mudata(
            mdata,
            modalities={"rna": "rna", "morph": "features"},
            batch_key="batch" if batches else None,
        )
        model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0)
    # several placement chunks, so the chunked path runs too
    shared, private = spectral_init(
        model.data, 4, model.module.private_dims, seed=0, max_cells=n, place_chunk=128
    )
    np.testing.assert_allclose(shared[:n], shared[n:], atol=1e-6)
    for m, block in private.items():
        np.testing.assert_allclose(block[:n], block[n:], atol=1e-6, err_msg=m)
    assert (
        cv_r2(shared, shared_truth, probe="linear") > 0.7
    )  # 0.785 with batches (the lowest measured)


def test_cells_lacking_a_modality_get_a_projected_start(helpers):
    """RNA-only cells: their shared start is predicted from their RNA by the map fitted on the paired cells, so it
    recovers the true shared factors nearly as well as the paired cells' start (a random start scores ~0)."""
    mdata, truth, order, with_prot = helpers.partially_paired()
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0)
    shared = model.module.shared_table.weight.detach().numpy()
    private_rna = model.module.private_tables["rna"].weight.detach().numpy()
    has = np.array([c in with_prot for c in mdata.obs_names])
    target, own = truth.shared[order], truth.private["rna"][order]
    paired, rna_only = cv_r2(shared[has], target[has]), cv_r2(shared[~has], target[~has])
    assert rna_only > 0.8 and rna_only > paired - 0.1, (rna_only, paired)
    assert cv_r2(private_rna[~has], own[~has]) > 0.7
    assert cv_r2(shared[~has], own[~has]) < 0.15, (
        "the RNA-private factors must not start in the shared block"
    )


def test_a_batch_without_complete_cells_is_centred_on_all_its_cells(helpers):
    """Partial pairing by batch: batch 1 has no protein, so no fit row. Its RNA-only cells are centred on their
    batch's mean over all of its cells (one extra pass), the same however many chunks the placement reads, and
    its cells still start with the true shared factors."""
    full, truth = make_synthetic(
        n_cells=600, modalities=dict(helpers.PAIRING_MODS), n_batches=2, batch_effect=1.0, seed=8
    )
    batch = full.obs["batch"].astype(str).to_numpy()
    keep = np.flatnonzero(batch == batch[0])
    mdata = md.MuData({"rna": full["rna"].copy(), "protein": full["protein"][keep].copy()})
    mdata.obs["batch"] = full.obs["batch"].astype(str).reindex(mdata.obs_names).to_numpy()
    VennCell.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    )
    model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0)
    one = spectral_init(model.data, 4, model.module.private_dims, seed=0)
    many = spectral_init(model.data, 4, model.module.private_dims, seed=0, place_chunk=50)
    np.testing.assert_allclose(one[0], many[0], atol=1e-9)
    for m in one[1]:
        np.testing.assert_allclose(one[1][m], many[1][m], atol=1e-9, err_msg=m)
    order = np.asarray([list(full.obs_names).index(c) for c in mdata.obs_names])
    unseen = mdata.obs["batch"].to_numpy() != batch[0]
    assert cv_r2(one[0][unseen], truth.shared[order][unseen]) > 0.7


def test_too_few_complete_cells_leave_partial_cells_at_random_starts(helpers):
    """12 cells with protein: a regression of the shared start on ~11 RNA PCs would interpolate them and place the
    RNA-only cells by noise, so those keep random starts, and a warning says what it costs and what to do."""
    full, _ = make_synthetic(n_cells=300, modalities=dict(helpers.PAIRING_MODS), seed=9)
    mdata = md.MuData({"rna": full["rna"].copy(), "protein": full["protein"][:12].copy()})
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, shared_dim=2, private_dim=2, seed=0)
    with pytest.warns(UserWarning, match=r"start from random latents.*Leave that modality out"):
        shared, _ = spectral_init(model.data, 2, model.module.private_dims, seed=0)
    has = np.isin(mdata.obs_names, full.obs_names[:12])
    assert (
        np.isfinite(shared).all() and abs(shared[~has].std() - 1) < 0.2
    )  # the N(0, 1) draws, untouched


def test_image_cells_lacking_a_channel_are_placed(helpers):
    """Image modalities go through the same placement: cells imaged in channel 0 only start from what channel 0
    predicts (the shared factor scales both channels' brightness)."""
    import pandas as pd

    img, f = helpers.make_images(n=300, seed=2)
    names = np.array([f"cell{i}" for i in range(len(img))])
    both = np.arange(len(img)) < 200
    mods = {}
    for m, keep in (("ch0", np.ones(len(img), bool)), ("ch1", both)):
        a = ad.AnnData(
            np.zeros((keep.sum(), 0), dtype=np.float32), obs=pd.DataFrame(index=names[keep])
        )
        a.obsm["img"] = img[keep]
        mods[m] = a
    mdata = md.MuData(mods)
    VennCell.setup_mudata(
        mdata,
        modalities={
            m: {"kind": "image", "obsm_key": "img", "channels": [int(m[-1])]} for m in mods
        },
    )
    model = VennCell(mdata, **helpers.IMAGE_MODEL)
    shared = model.module.shared_table.weight.detach().numpy()
    assert np.isfinite(shared).all()
    best = max(
        abs(np.corrcoef(shared[~both, j], f[~both, 0])[0, 1]) for j in range(shared.shape[1])
    )
    assert best > 0.9, best  # 0.997 measured; a random start gives ~0


def test_a_modality_on_few_cells_is_left_out_of_the_start_not_everyone_else():
    """ATAC on 30 of 600 cells: the start was fitted on those 30 alone and every other cell started at random
    (a new user's shared latent: kNN accuracy 0.51 with such a modality, 0.84 without it)."""
    full, truth = make_synthetic(
        n_cells=600, modalities={"rna": 200, "protein": 40, "atac": 200}, seed=4
    )
    names = full.obs_names
    mdata = md.MuData(
        {
            "rna": full["rna"].copy(),
            "protein": full["protein"].copy(),
            "atac": full["atac"][names[:30]].copy(),
        }
    )
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0, latent_init="random")
    with pytest.warns(UserWarning, match="fitted without 'atac' \\(measured in 30 cells\\)"):
        shared, private = spectral_init(model.data, 4, model.module.private_dims, seed=0)
    order = np.asarray([list(names).index(c) for c in mdata.obs_names])
    without = ~np.isin(mdata.obs_names, names[:30])
    assert cv_r2(shared[without], truth.shared[order][without]) > 0.7
    assert set(private) == {"rna", "protein", "atac"} and np.isfinite(private["atac"]).all()
    # every cell complete: nothing is left out, however few the cells
    small, _ = make_synthetic(
        n_cells=120, modalities={"rna": 60, "protein": 20, "atac": 60}, seed=1
    )
    VennCell.setup_mudata(small)
    few = VennCell(small, shared_dim=4, private_dim=2, seed=0, latent_init="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spectral_init(few.data, 4, few.module.private_dims, seed=0)


def _batch_mixing(z: np.ndarray, batch: np.ndarray, k: int = 15) -> float:
    """Share of other batches among each cell's k nearest neighbours, over that share were batch random."""
    from sklearn.neighbors import NearestNeighbors

    _, nn = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    expected = 1 - np.mean([(batch == b).mean() for b in batch])
    return float((batch[nn[:, 1:]] != batch[:, None]).mean() / expected)


def test_a_strong_batch_effect_leaves_the_start_with_covariance_alignment():
    """A batch effect of 2 SD on every feature makes the same biology load on other components in each batch:
    removing each batch's mean (the default) leaves the batches apart in the model's shared start
    (experiments/start_batch_alignment: the trained latents keep them apart); matching each batch's covariance
    too (``start_batch_alignment="covariance"``) mixes them, in the private blocks as well, and the start still
    holds the true shared factors."""
    mdata, truth = make_synthetic(n_cells=900, n_batches=3, batch_effect=2.0, seed=0)
    VennCell.setup_mudata(mdata, batch_key="batch")
    batch = mdata.obs["batch"].astype(str).to_numpy()
    assert VennCell(mdata, seed=0).config.start_batch_alignment == "mean"
    starts = {}
    for how in ("mean", "covariance"):
        module = VennCell(mdata, seed=0, start_batch_alignment=how).module
        starts[how] = (
            module.shared_table.weight.detach().numpy(),
            {m: t.weight.detach().numpy() for m, t in module.private_tables.items()},
        )
    assert _batch_mixing(starts["mean"][0], batch) < 0.2
    assert _batch_mixing(starts["covariance"][0], batch) > 0.8
    for m, block in starts["covariance"][1].items():
        assert _batch_mixing(block, batch) > 0.8, m
    assert cv_r2(starts["covariance"][0], truth.shared) > 0.8


def test_a_batch_too_small_for_a_covariance_keeps_its_mean_with_a_warning():
    """A batch with too few cells to estimate its covariance is named, keeps its mean-only start, and the other
    batches are still matched."""
    mdata, _ = make_synthetic(n_cells=900, n_batches=3, batch_effect=2.0, seed=0)
    batch = mdata.obs["batch"].astype(str).to_numpy()
    batch[:40] = "tiny"
    mdata.obs["batch"] = batch
    VennCell.setup_mudata(mdata, batch_key="batch")
    with pytest.warns(VennCellInputWarning, match=r"batches \['tiny'\] have too few cells"):
        module = VennCell(mdata, seed=0, start_batch_alignment="covariance").module
    shared = module.shared_table.weight.detach().numpy()
    assert np.isfinite(shared).all()
    big = batch != "tiny"
    assert _batch_mixing(shared[big], batch[big]) > 0.8


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_covariance_alignment_places_other_cells_by_the_same_maps():
    """Cells beyond ``max_cells`` go through their batch's fitted covariance map: each starts where its identical
    twin among the fit rows starts."""
    mdata, _ = _duplicated(n=500, batches=True)
    VennCell.setup_mudata(mdata, batch_key="batch")
    model = VennCell(mdata, shared_dim=4, private_dim=2, seed=0)
    n = mdata.n_obs // 2
    shared, private = spectral_init(
        model.data, 4, model.module.private_dims, seed=0, max_cells=n, batch_alignment="covariance"
    )
    by_mean = spectral_init(model.data, 4, model.module.private_dims, seed=0, max_cells=n)[0]
    assert np.abs(shared - by_mean).max() > 0.1, "the covariance maps were not fitted"
    np.testing.assert_allclose(shared[:n], shared[n:], atol=1e-6)
    for m, block in private.items():
        np.testing.assert_allclose(block[:n], block[n:], atol=1e-6, err_msg=m)


@pytest.mark.parametrize("n_batches", [2, 3])
def test_a_batch_without_complete_cells_is_matched_from_all_its_cells(n_batches):
    """The last batch has no protein, so no fit row: with ``covariance`` its covariance is matched from all of its
    cells, like the other batches' from theirs (with two batches, the one batch of fit rows is the target), so it
    mixes with them in the shared start instead of staying apart; the placement reads it in chunks of any size."""
    full, truth = make_synthetic(n_cells=900, n_batches=n_batches, batch_effect=2.0, seed=0)
    batch = full.obs["batch"].astype(str).to_numpy()
    last = f"b{n_batches - 1}"
    mdata = md.MuData(
        {m: full[m][batch != last].copy() if m == "protein" else full[m].copy() for m in full.mod}
    )
    mdata.obs["batch"] = batch
    VennCell.setup_mudata(mdata, batch_key="batch")
    own = {}
    for how in ("mean", "covariance"):
        with warnings.catch_warnings():
            # every batch is large enough to be matched
            warnings.filterwarnings("error", "start_batch_alignment", VennCellInputWarning)
            model = VennCell(mdata, seed=0, start_batch_alignment=how)
        shared = model.module.shared_table.weight.detach().numpy()
        from sklearn.neighbors import NearestNeighbors

        _, nn = NearestNeighbors(n_neighbors=16).fit(shared).kneighbors(shared)
        own[how] = (batch[nn[:, 1:]] == batch[:, None]).mean(1)[batch == last].mean()
        if how == "covariance":
            assert cv_r2(shared[batch == last], truth.shared[batch == last]) > 0.8
            args = (model.data, 8, model.module.private_dims)
            one = spectral_init(*args, seed=0, batch_alignment=how)
            many = spectral_init(*args, seed=0, batch_alignment=how, place_chunk=37)
            np.testing.assert_allclose(one[0], many[0], atol=1e-8)
    assert own["mean"] > 0.9 and own["covariance"] < 1 / n_batches + 0.2, own


def test_covariance_alignment_without_a_spectral_start_or_batches_warns(tiny_mdata):
    """The option acts on the spectral start of data with batches: without either it says it has no effect."""
    VennCell.setup_mudata(tiny_mdata)
    with pytest.warns(VennCellInputWarning, match="fewer than two batches.*batch_key.*no effect"):
        VennCell(tiny_mdata, start_batch_alignment="covariance")
    mdata, _ = make_synthetic(n_cells=200, n_batches=2, seed=0)
    VennCell.setup_mudata(mdata, batch_key="batch")
    with pytest.warns(VennCellInputWarning, match="latent_init='random'.*no effect"):
        VennCell(mdata, latent_init="random", start_batch_alignment="covariance")
