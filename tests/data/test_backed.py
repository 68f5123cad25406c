"""Out-of-core (backed) training: same numbers as in memory, chunk-wise contiguous reads."""

import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

from venncell import VennCell, make_synthetic
from venncell.data.dataset import make_loader
from venncell.data.samplers import ChunkedCellBatches
from venncell.data.validate import VennCellInputError

CHUNK = 64
MODS = {"rna": "rna", "protein": "protein"}
TRAIN = dict(stage1_epochs=2, stage2_epochs=1, batch_size=32, progress_bar="none")


@pytest.fixture(scope="module")
def h5mu(tmp_path_factory):
    mdata, _ = make_synthetic(n_cells=300, modalities={"rna": 80, "protein": 20}, seed=3)
    path = tmp_path_factory.mktemp("backed") / "small.h5mu"
    mdata.write(path)
    return path


def _model(path, backed: bool):
    if (
        backed
    ):  # a path: opened in backed mode and registered with kinds guessed from the names (= MODS)
        return VennCell(
            str(path), shared_dim=4, private_dim=2, backed=True, chunk_size=CHUNK, seed=1
        )
    mdata = md.read_h5mu(path)
    VennCell.setup_mudata(mdata, MODS)
    return VennCell(mdata, shared_dim=4, private_dim=2, chunk_size=CHUNK, seed=1)


def test_backed_training_matches_in_memory(h5mu):
    """Same file, same seed, same chunk-wise sampler: the backed reader must hand the model exactly the
    values the in-memory CSR does, so the latents agree to float32 rounding (observed: bit-identical)."""
    backed, memory = _model(h5mu, True), _model(h5mu, False)
    assert not sp.issparse(backed.data.x["rna"]) and sp.issparse(memory.data.x["rna"])
    for m in MODS:
        np.testing.assert_allclose(_library(backed, m), _library(memory, m), rtol=1e-6)
    # protein is Gaussian-standardised here: streamed mean/std must equal the in-memory ones
    if memory.specs["protein"].feature_mean is not None:
        np.testing.assert_allclose(
            backed.specs["protein"].feature_mean, memory.specs["protein"].feature_mean, rtol=1e-5
        )
        np.testing.assert_allclose(
            backed.specs["protein"].feature_std, memory.specs["protein"].feature_std, rtol=1e-4
        )
    backed.train(**TRAIN)
    memory.train(**TRAIN)
    for block in ("shared", "private:rna", "private:protein"):
        for source in ("stage1", "encoder"):
            a = backed.get_latent_representation(block=block, source=source)
            b = memory.get_latent_representation(block=block, source=source)
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{block} ({source})")
    # and training actually moved the latents away from the spectral start
    assert np.abs(backed.module.shared_table.weight.detach().numpy()).std() > 0


def test_chunked_sampler_covers_every_cell_once_with_contiguous_reads(h5mu):
    model = _model(h5mu, True)
    n = model.data.n_cells
    indices = np.flatnonzero(np.random.default_rng(0).random(n) < 0.8)  # e.g. the training cells
    sampler = ChunkedCellBatches(indices, 32, shuffle=True, seed=5, chunk_size=CHUNK)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = np.concatenate(list(sampler))
        assert len(sampler) == len(list(sampler))
        np.testing.assert_array_equal(np.sort(order), indices)  # every cell exactly once
        runs = order // CHUNK
        changes = runs[np.flatnonzero(np.diff(runs)) + 1]
        assert len(changes) + 1 == len(
            np.unique(runs)
        )  # each chunk is one contiguous run of the stream
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch ...
    sampler.set_epoch(0)
    np.testing.assert_array_equal(
        np.concatenate(list(sampler)), orders[0]
    )  # ... as a pure function of (seed, epoch)
    assert not np.array_equal(
        orders[0], np.sort(orders[0])
    )  # and cells are shuffled within chunks

    reader = model.data.x["rna"]
    reader.reads.clear()
    reader._cache.clear()
    seen = [b.idx.numpy() for b in make_loader(model.data, np.arange(n), 32, shuffle=True, seed=2)]
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))
    n_chunks = -(-n // CHUNK)
    expected = [(k * CHUNK, min(n, (k + 1) * CHUNK)) for k in range(n_chunks)]
    assert (
        sorted(reader.reads) == expected
    )  # one sequential read per chunk per epoch, nothing else
    assert reader.reads != expected  # in shuffled chunk order


def test_backed_errors_are_clear(h5mu, tmp_path):
    mdata = md.read_h5mu(h5mu)
    VennCell.setup_mudata(mdata, MODS)
    with pytest.raises(VennCellInputError, match="backed mode"):
        VennCell(mdata, backed=True)
    bad = md.read_h5mu(h5mu)
    x = bad.mod["rna"].X.toarray()
    x[200, 3] = 2.5  # a non-count value deep in the file, found by the streaming pass
    bad.mod["rna"].X = sp.csr_matrix(x)
    bad.write(tmp_path / "bad.h5mu")
    b = md.read_h5mu(tmp_path / "bad.h5mu", backed=True)
    VennCell.setup_mudata(b, {"rna": {"kind": "rna", "likelihood": "nb"}, "protein": "protein"})
    with pytest.raises(VennCellInputError, match="Modality 'rna'.*non-integer.*rows 0-299"):
        VennCell(b, backed=True)
    # a column-wise matrix in a layer: the fix names that layer, not .X
    csc = md.read_h5mu(h5mu)
    csc.mod["rna"].layers["counts"] = sp.csc_matrix(csc.mod["rna"].X)
    csc.write(tmp_path / "csc.h5mu")
    c = md.read_h5mu(tmp_path / "csc.h5mu", backed=True)
    VennCell.setup_mudata(c, {"rna": {"kind": "rna", "layer": "counts"}, "protein": "protein"})
    with pytest.raises(
        VennCellInputError, match=r"CSC.*mdata\['rna'\]\.layers\['counts'\] = .*\.tocsr\(\)"
    ):
        VennCell(c, backed=True)
    with pytest.raises(
        VennCellInputError, match="num_workers=2 with backed data.*Fix: num_workers=0"
    ):
        _model(h5mu, backed=True).train(
            num_workers=2, stage1_epochs=1, stage2_epochs=1, progress_bar="none"
        )


@pytest.mark.parametrize(
    "policy, mod", [("warn", "rna"), ("drop", "rna"), ("keep", "rna"), ("drop", "atac")]
)
def test_backed_applies_the_zero_variance_policy_like_in_memory(tmp_path, policy, mod):
    """A constant feature: backed data warn / drop / keep exactly as the in-memory reader does, same libraries
    (atac: binarised, its constant 2 counts 1 in every cell's depth)."""
    import warnings

    from venncell.data import VennCellInputWarning

    mdata, _ = make_synthetic(n_cells=200, modalities={mod: 40, "protein": 12}, seed=4)
    x = mdata[mod].X.toarray()
    x[:, 5] = 2.0  # constant, non-zero: it also adds to every cell's library size
    mdata.mod[mod].X = sp.csr_matrix(x)
    path = tmp_path / "const.h5mu"
    mdata.write(path)
    reg = {mod: {"kind": mod, "zero_variance": policy}, "protein": "protein"}
    models = {}
    for backed in (False, True):
        m = md.read_h5mu(path, backed=backed)
        VennCell.setup_mudata(m, reg)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            models[backed] = VennCell(
                m, shared_dim=2, private_dim=2, backed=backed, chunk_size=CHUNK
            )
        said = [
            w
            for w in caught
            if issubclass(w.category, VennCellInputWarning) and "zero variance" in str(w.message)
        ]
        assert len(said) == (policy == "warn"), (backed, [str(w.message) for w in caught])
        if said:
            assert (
                f"'{mod}'" in str(said[0].message) and said[0].filename == __file__
            )  # points at the caller's line
    mem, bk = models[False].specs[mod], models[True].specs[mod]
    assert bk.features == mem.features and bk.dropped_features == mem.dropped_features
    assert len(mem.features) == (39 if policy == "drop" else 40)
    np.testing.assert_allclose(
        _library(models[True], mod), _library(models[False], mod), rtol=1e-6
    )
    rows = np.arange(0, 200, 7)
    np.testing.assert_array_equal(
        models[True].data.get(rows).x[mod].numpy(), models[False].data.get(rows).x[mod].numpy()
    )


def _library(model, m):
    """Every cell's library size of modality m, as the model's data view reads it."""
    return model.data.rows(m, np.arange(model.data.n_cells))[1]
