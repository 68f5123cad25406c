"""Batches assembled on the device (``venncell.data.resident``) are the batches ``MultiModalData.get`` builds."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from venncell.data import MultiModalData, fit_registry, setup_options
from venncell.data.dataset import batch_loader, split_batch
from venncell.data.resident import ResidentBatches, ResidentCells, fits_on
from venncell.data.samplers import CellBatches


def _data() -> MultiModalData:
    """Counts (CSR, read with non-zero lists), a dense count matrix (also listed), dense Gaussian features and
    binary peaks, partly paired, with batches and explicit zeros in the CSR."""
    rng = np.random.default_rng(0)
    names = np.array([f"c{i}" for i in range(50)])
    rna = rng.poisson(0.8, (50, 12)).astype(np.float32)
    rna[:, 0] += 1
    rna = sp.csr_matrix(rna)
    rna.data[::7] = 0.0  # explicit zeros are listed, as get() lists them
    prot = rng.poisson(3, (35, 6)).astype(np.float32) + 1
    feat = rng.normal(size=(40, 5)).astype(np.float32)
    atac = (rng.random((50, 20)) < 0.2).astype(np.float32)
    atac[np.arange(50), np.arange(50) % 20] = 1.0
    atac = sp.csr_matrix(atac)
    mods = {
        m: ad.AnnData(
            x,
            obs=pd.DataFrame(index=cells),
            var=pd.DataFrame(index=[f"{m}{j}" for j in range(x.shape[1])]),
        )
        for m, x, cells in [
            ("rna", rna, names),
            ("protein", prot, names[10:45]),
            ("feat", feat, names[rng.permutation(50)[:40]]),
            ("atac", atac, names),
        ]
    }
    mdata = md.MuData(mods)
    mdata.obs["batch"] = np.where(np.arange(mdata.n_obs) % 3 == 0, "a", "b")
    options = setup_options(
        mdata,
        {
            "rna": {"likelihood": "nb"},
            "protein": {"likelihood": "nb"},
            "feat": {"likelihood": "gaussian"},
            "atac": {"likelihood": "bernoulli"},
        },
        batch_key="batch",
    )
    return MultiModalData(mdata, fit_registry(mdata, options))


def _same(a, b) -> None:
    assert torch.equal(a.idx, b.idx) and torch.equal(a.batch, b.batch)
    for m in a.x:
        assert torch.equal(a.x[m], b.x[m]), m
        assert torch.equal(a.lib[m], b.lib[m]) and torch.equal(a.mask[m], b.mask[m]), m
        assert a.count(m) == b.count(m) == int(a.mask[m].sum()), m
    assert a.nz.keys() == b.nz.keys()
    for m in a.nz:
        assert torch.equal(a.nz[m], b.nz[m]), m


def test_resident_batches_equal_the_loader_batches_split_or_not():
    data = _data()
    cells = ResidentCells(data, "cpu")
    assert fits_on(data, torch.device("cpu"))
    split = np.arange(data.n_cells) % 4 != 0
    for epoch in (0, 3):
        for kind in (None, split):
            sampler = CellBatches(np.arange(data.n_cells), 16, True, seed=1)
            sampler.set_epoch(epoch)
            loader = list(batch_loader(data, sampler, split=kind))
            resident = list(ResidentBatches(cells, sampler, kind))
            assert len(resident) == len(loader) == len(sampler)
            for a, b in zip(resident, loader):
                for x, y in zip(*((a, b) if kind is not None else ((a,), (b,)))):
                    assert (x is None) == (y is None)
                    if x is not None:
                        _same(x, y)


def test_split_batch_keeps_the_order_and_leaves_an_empty_half_out():
    data = _data()
    idx = np.array([7, 3, 20, 11])
    split = np.zeros(data.n_cells, dtype=bool)
    split[[3, 11]] = True
    train, held = split_batch(data.get, idx, split)
    assert train.idx.tolist() == [3, 11] and held.idx.tolist() == [7, 20]
    assert split_batch(data.get, idx, np.ones(data.n_cells, dtype=bool))[1] is None


def test_a_cell_set_missing_a_modality_gives_zeros_and_ones():
    data = _data()
    cells = ResidentCells(data, "cpu")
    missing = np.flatnonzero(~data.present("protein"))[:3]
    got = cells.gather(torch.as_tensor(missing), *cells.host_counts(missing))
    _same(got, data.get(missing))
    assert got.count("protein") == 0 and got.nz["protein"].shape == (2, 0)
