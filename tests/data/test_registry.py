"""Data layer: synthetic generator, likelihood inference, alignment, masks and sparse batching."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

from venncell import VennCell, VennCellInputError, validation_split
from venncell.data import (
    MultiModalData,
    fit_registry,
    make_synthetic,
    setup_options,
    truth_from_mudata,
)
from venncell.data.dataset import _csr_rows
from venncell.data.registry import stored_options
from venncell.data.samplers import CellBatches, ChunkedCellBatches, RankBatches, SplitCellBatches
from venncell.data.spec import infer_likelihood


def test_synthetic_shapes_and_truth():
    mdata, truth = make_synthetic(
        n_cells=150, modalities={"rna": 40, "protein": 10, "atac": 30, "features": 12}, seed=3
    )
    assert set(mdata.mod) == {"rna", "protein", "atac", "features"}
    assert mdata.n_obs == 150
    assert sp.issparse(mdata["rna"].X) and sp.issparse(mdata["atac"].X)
    rna = mdata["rna"].X.toarray()
    assert (rna >= 0).all() and np.allclose(rna, rna.round())
    assert set(np.unique(mdata["atac"].X.toarray())) <= {0.0, 1.0}
    assert truth.shared.shape == (150, 4)
    assert all(v.shape == (150, 2) for v in truth.private.values())
    # privates are independent draws: near-zero correlation with the shared block
    c = np.corrcoef(np.hstack([truth.shared, truth.private["rna"]]).T)[:4, 4:]
    assert np.abs(c).max() < 0.3
    again = truth_from_mudata(mdata)
    np.testing.assert_allclose(again.shared, truth.shared)
    assert set(again.feature_driver["rna"]) == {"shared", "private", "both"}


def test_synthetic_names_pick_the_kind_setup_mudata_reads():
    mdata, _ = make_synthetic(n_cells=60, modalities={"gex": 20, "adt": 6, "peaks": 15}, seed=1)
    assert set(np.unique(mdata["peaks"].X.toarray())) <= {0.0, 1.0}
    adt = mdata["adt"].X.toarray()
    assert np.allclose(adt, adt.round()) and adt.sum(1).mean() > 100
    specs = fit_registry(mdata, setup_options(mdata)).specs
    assert {m: s.kind for m, s in specs.items()} == {
        "gex": "rna",
        "adt": "protein",
        "peaks": "atac",
    }


def test_synthetic_sizes_are_checked():
    with pytest.raises(VennCellInputError, match=r"make_synthetic n_cells=-5 is out of range"):
        make_synthetic(n_cells=-5)
    with pytest.raises(VennCellInputError, match=r"n_cells=100.5 must be an integer"):
        make_synthetic(n_cells=100.5)
    with pytest.raises(VennCellInputError, match=r"modalities\['rna'\]=0 is out of range"):
        make_synthetic(n_cells=20, modalities={"rna": 0, "protein": 3})
    # data.modalities=rna:200 on the command line: dict() of a string raised a bare ValueError
    with pytest.raises(
        VennCellInputError, match=r"modalities must be a dict \{name: n_features\}"
    ):
        make_synthetic(n_cells=20, modalities="rna:200")


def test_a_count_modality_of_one_feature_is_refused_with_the_gaussian_way_out():
    """One antibody under the NB likelihood trained without a word: as a share of its own total it is 1 in every
    cell, every prediction was 1.0 and attribution called it constant."""
    mdata, _ = make_synthetic(n_cells=60, modalities={"rna": 20, "protein": 1}, seed=0)
    with pytest.raises(
        VennCellInputError, match=r"Modality 'protein' has a single feature .* share is 1"
    ):
        fit_registry(mdata, setup_options(mdata))
    mdata["protein"].layers["log1p"] = np.log1p(mdata["protein"].X)
    options = setup_options(
        mdata, {"rna": "rna", "protein": {"kind": "features", "layer": "log1p"}}
    )
    assert fit_registry(mdata, options).specs["protein"].likelihood == "gaussian"


def test_synthetic_is_seeded():
    a, _ = make_synthetic(n_cells=50, modalities={"rna": 20, "protein": 5}, seed=7)
    b, _ = make_synthetic(n_cells=50, modalities={"rna": 20, "protein": 5}, seed=7)
    c, _ = make_synthetic(n_cells=50, modalities={"rna": 20, "protein": 5}, seed=8)
    assert (a["rna"].X != b["rna"].X).nnz == 0
    assert (a["rna"].X != c["rna"].X).nnz > 0


def test_modalities_carry_shared_and_private_signal():
    """Each modality's data must depend on both blocks, or the recovery targets would be unlearnable."""
    from venncell.analysis.probes import cv_r2

    mdata, truth = make_synthetic(n_cells=600, modalities={"rna": 200, "protein": 50}, seed=0)
    x = np.log1p(mdata["protein"].X.toarray())
    assert cv_r2(x, truth.shared, probe="linear") > 0.5
    assert cv_r2(x, truth.private["protein"], probe="linear") > 0.3
    assert cv_r2(x, truth.private["rna"], probe="linear") < 0.05


@pytest.mark.parametrize(
    "values,kind,expected",
    [
        (np.array([[0, 3], [5, 1]]), "rna", "nb"),
        (np.array([[0, 1], [1, 1]]), "features", "bernoulli"),
        (np.array([[0, 4], [2, 1]]), "atac", "bernoulli_factors"),
        (np.array([[0.3, -1.2], [2.5, 1.0]]), "features", "gaussian"),
    ],
)
def test_infer_likelihood(values, kind, expected):
    assert infer_likelihood(kind, sp.csr_matrix(values.astype(np.float32))) == expected


def test_setup_registers_every_modality(tiny_mdata):
    VennCell.setup_mudata(tiny_mdata)
    reg = stored_options(tiny_mdata)["modalities"]
    assert reg["rna"]["likelihood"] == "nb"
    assert reg["protein"]["likelihood"] == "nb"
    assert reg["atac"]["likelihood"] == "bernoulli_factors"


def test_batches_are_densified_per_batch_and_stay_sparse(tiny_mdata):
    data = _view(
        tiny_mdata,
        {
            "rna": {"likelihood": "nb"},
            "protein": {"likelihood": "nb"},
            "atac": {"likelihood": "bernoulli"},
        },
    )
    assert sp.issparse(data.x["rna"])
    b = data.get(np.array([5, 2, 9]))
    np.testing.assert_allclose(b.x["rna"].numpy(), tiny_mdata["rna"].X[[5, 2, 9]].toarray())
    assert b.mask["rna"].all()
    np.testing.assert_allclose(
        b.lib["rna"].numpy().ravel(), np.asarray(tiny_mdata["rna"].X[[5, 2, 9]].sum(1)).ravel()
    )


def test_partially_paired_cells_are_masked():
    rng = np.random.default_rng(0)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(2, (30, 8)).astype(np.float32)))
    a.obs_names = [f"c{i}" for i in range(30)]
    b = ad.AnnData(sp.csr_matrix(rng.poisson(3, (20, 5)).astype(np.float32) + 1))
    b.obs_names = [f"c{i}" for i in range(10, 30)]
    mdata = md.MuData({"rna": a, "protein": b})
    data = _view(mdata, {"rna": {"likelihood": "nb"}, "protein": {"likelihood": "nb"}})
    assert data.n_cells == 30
    assert data.present("protein").sum() == 20
    idx = np.array([list(mdata.obs_names).index("c0"), list(mdata.obs_names).index("c15")])
    batch = data.get(idx)
    assert batch.mask["protein"].tolist() == [False, True]
    np.testing.assert_allclose(batch.x["protein"][1].numpy(), b["c15"].X.toarray().ravel())


@pytest.mark.parametrize("canonical", [True, False])
def test_batch_rows_match_scipy_for_partial_and_unsorted_csr(canonical, monkeypatch):
    """A batch read straight from the CSR arrays equals scipy's rows: values, zero rows for absent cells, non-zeros;
    a CSR with unsorted and duplicate entries (summed, as scipy reads them) takes scipy's path."""
    from venncell.data import dataset

    direct = []  # the matrices _csr_rows read
    monkeypatch.setattr(
        dataset, "_csr_rows", lambda x, rows: direct.append(x) or _csr_rows(x, rows)
    )
    rng = np.random.default_rng(2)
    dense = rng.poisson(0.6, (20, 9)).astype(np.float32)
    dense[np.arange(20), np.arange(20) % 9] += 1.0  # no all-zero cell (refused for counts)
    a = ad.AnnData(sp.csr_matrix(dense))
    a.obs_names = [f"c{i}" for i in range(20)]
    other = ad.AnnData(rng.poisson(2, (30, 3)).astype(np.float32))
    other.obs_names = [f"c{i}" for i in range(30)]
    mdata = md.MuData({"rna": a, "protein": other})
    data = _view(mdata, {"rna": {"likelihood": "nb"}, "protein": {"likelihood": "gaussian"}})
    if not canonical:
        # AnnData canonicalises what it is given, so the matrix is swapped in: every row's entries reversed, and
        # row 4's first entry split into two listed entries that sum to it
        r, c, v = sp.find(data.x["rna"])
        order = np.lexsort((-c, r))
        r, c, v = r[order], c[order], v[order]
        first4 = np.flatnonzero(r == 4)[0]
        v[first4] -= 1.0
        r, c, v = (
            np.insert(r, first4, 4),
            np.insert(c, first4, c[first4]),
            np.insert(v, first4, 1.0),
        )
        data.x["rna"] = sp.csr_matrix(
            (v.astype(np.float32), c, np.searchsorted(r, np.arange(21))), shape=(20, 9)
        )
        assert not data.x["rna"].has_canonical_format
    cells = ("c25", "c4", "c0", "c29", "c13")  # c25, c29: no rna
    batch = data.get(np.array([list(mdata.obs_names).index(c) for c in cells]))
    want = np.zeros((5, 9), dtype=np.float32)
    for i, c in enumerate(cells):
        if int(c[1:]) < 20:  # the rna cells are c0..c19, rows 0..19 of the matrix
            want[i] = dense[int(c[1:])]
    np.testing.assert_array_equal(batch.x["rna"].numpy(), want)
    assert batch.mask["rna"].tolist() == [False, True, True, False, True]
    assert sorted(map(tuple, batch.nz["rna"].T.tolist())) == sorted(
        map(tuple, np.argwhere(want).tolist())
    )
    # the stored matrix itself is read in place only when canonical; otherwise its rows are read by scipy first
    assert any(x is data.x["rna"] for x in direct) == canonical


def test_cell_batches_depend_only_on_seed_and_epoch():
    s = CellBatches(np.arange(100), 16, shuffle=True, seed=3)
    s.set_epoch(4)
    first = [b.tolist() for b in s]
    s.set_epoch(0)
    _ = list(s)
    s.set_epoch(4)
    assert [b.tolist() for b in s] == first
    assert sorted(np.concatenate(first).tolist()) == list(range(100))


def _view(mdata, options: dict) -> MultiModalData:
    """The training-data view of ``mdata`` registered with ``options`` (per modality)."""
    return MultiModalData(mdata, fit_registry(mdata, setup_options(mdata, options)))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_first_epoch_mixes_held_out_cells_like_any_other(seed):
    """Every sampler's epoch-0 order is independent of the validation split drawn with the same seed: numpy pads
    ``(seed, 0)`` to ``seed``, and an untagged stream put all held-out cells in the first batches of stage 1."""
    n = 2000
    held_out = ~validation_split(n, 0.1, seed)
    samplers = [
        CellBatches(np.arange(n), 100, True, seed),
        SplitCellBatches(np.arange(n), ~held_out, 100, True, seed),
        ChunkedCellBatches(np.arange(n), 100, True, seed, chunk_size=n),
        RankBatches(np.arange(n), 100, True, seed, rank=0, world=1, fixed_shard=True),
    ]
    for sampler in samplers:
        order = np.concatenate(list(sampler))
        # the share of held-out cells among the first as many cells: 1.0 with the padded seed, ~0.1 at random
        first = held_out[order[: held_out.sum()]].mean()
        assert first < 0.3, type(sampler).__name__


@pytest.mark.parametrize("seed", [0, 3])
def test_split_batches_hold_one_side_each_and_spread_the_held_out_ones(seed):
    """Stage 1's in-memory batches: each all training or all held-out cells (one pass per step), every cell once per
    epoch, the held-out batches spread over the epoch, and each epoch's order a function of (seed, epoch)."""
    n, size = 2000, 20
    is_train = validation_split(n, 0.1, seed)
    sampler = SplitCellBatches(np.arange(n), is_train, size, True, seed)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert (
            len(batches)
            == len(sampler)
            == -(-is_train.sum() // size) + -(-(~is_train).sum() // size)
        )
        assert all(len(np.unique(is_train[b])) == 1 for b in batches)
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n))
        held = np.array([not is_train[b[0]] for b in batches])
        assert held[: held.sum()].mean() < 0.5  # not the first batches of the epoch
        assert np.flatnonzero(held).mean() > 0.25 * len(batches)
    again = SplitCellBatches(np.arange(n), is_train, size, True, seed)
    again.set_epoch(1)
    assert all(np.array_equal(a, b) for a, b in zip(again, batches))
    again.set_epoch(0)
    assert not np.array_equal(np.concatenate(list(again)), np.concatenate(batches))


def test_whole_number_features_stay_gaussian_when_said_and_warn_when_guessed():
    """kind='features' on whole numbers (CellProfiler areas, object counts) was silently fitted as sequencing
    counts (NB, normalised by each cell's total); the README promises Gaussian."""
    import warnings

    import anndata as ad
    import mudata as md
    import pandas as pd

    from venncell.data import VennCellInputWarning

    rng = np.random.default_rng(0)
    names = pd.DataFrame(index=[f"c{i}" for i in range(60)])
    whole = rng.poisson(30.0, size=(60, 6)).astype(np.float32)
    rna = ad.AnnData(rng.poisson(2.0, size=(60, 20)).astype(np.float32), obs=names)
    mdata = md.MuData({"rna": rna, "morph": ad.AnnData(whole, obs=names)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        VennCell.setup_mudata(mdata, {"rna": "rna", "morph": "features"})
    assert stored_options(mdata)["modalities"]["morph"]["likelihood"] == "gaussian"
    with pytest.warns(VennCellInputWarning, match="'morph'.*names no kind.*whole numbers"):
        VennCell.setup_mudata(mdata, {"rna": "rna", "morph": None})
    assert stored_options(mdata)["modalities"]["morph"]["likelihood"] == "nb"
    VennCell.setup_mudata(mdata, {"rna": "rna", "morph": {"kind": "features", "likelihood": "nb"}})
    assert stored_options(mdata)["modalities"]["morph"]["likelihood"] == "nb"
    # binarised peaks under a name of no known kind lost ATAC's depth factors without a word
    mdata.mod["mod1"] = ad.AnnData((whole > 30).astype(np.float32), obs=names)
    with pytest.warns(VennCellInputWarning, match="'mod1'.*names no kind.*0/1 only.*kind='atac'"):
        VennCell.setup_mudata(mdata, {"rna": "rna", "mod1": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        VennCell.setup_mudata(mdata, {"rna": "rna", "mod1": "atac"})


def test_a_kind_name_that_is_no_modality_names_the_modality_of_that_kind():
    """ASAP-seq data with an 'adt' modality: predict_modality(target='protein'), as in the README, said only that
    'protein' is not a modality."""
    from venncell.data.spec import ModalitySpec, kind_hint

    specs = {
        "peaks": ModalitySpec(name="peaks", kind="atac"),
        "adt": ModalitySpec(name="adt", kind="protein"),
    }
    assert kind_hint(["protein"], specs) == " The model's protein modality is 'adt'."
    assert kind_hint(["rna", "adt", "cells"], specs) == ""
