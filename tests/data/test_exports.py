"""Data as R (Seurat, SingleCellExperiment) and other tools export them: renamed barcodes, a second version of a
modality, counts in .raw, missing values written as text, cohorts of tiny batches, columns left in the
modalities' .obs. Each gets a message that names the problem and a fix that works when run as written."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

from venncell import VennCell, VennCellInputError, VennCellInputWarning, make_synthetic
from venncell.data.pairing import check_pairing, renamed_pairs


@pytest.fixture
def cite():
    mdata, _ = make_synthetic(
        n_cells=240, modalities={"rna": 40, "protein": 12}, n_batches=3, seed=3
    )
    for m in mdata.mod:
        mdata[m].obs["batch"] = mdata.obs["batch"].reindex(mdata[m].obs_names).to_numpy()
    return mdata


def _venncell_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, VennCellInputWarning)]


def test_barcodes_renamed_in_one_modality_are_named_in_the_pairing_error(cite):
    rna = cite["rna"].copy()
    rna.obs_names = [f"{n}-1" for n in rna.obs_names]
    mdata = md.MuData({"rna": rna, "protein": cite["protein"]})
    # copied up from one modality, the batch is missing for the other's cells: the pairing is the cause
    mdata.obs["batch"] = rna.obs["batch"].reindex(mdata.obs_names)
    with pytest.raises(
        VennCellInputError, match=r"do not overlap.*suffix or prefix.*'cell\d+-1' in rna"
    ):
        VennCell.setup_mudata(mdata, batch_key="batch")


def test_one_batch_renamed_warns_at_setup_and_names_the_batch_at_training(cite):
    rna = cite["rna"].copy()
    first = rna.obs["batch"].astype(str) == rna.obs["batch"].astype(str).iloc[0]
    rna.obs_names = [f"{n}_2" if f else n for n, f in zip(rna.obs_names, first)]
    mdata = md.MuData({"rna": rna, "protein": cite["protein"]})
    batches = [mdata[m].obs["batch"].astype(str) for m in mdata.mod]
    mdata.obs["batch"] = pd.concat(batches).groupby(level=0).first().reindex(mdata.obs_names)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        VennCell.setup_mudata(mdata, batch_key="batch")
        VennCell(mdata)
    said = " ".join(_venncell_warnings(record))
    assert "_2' in rna" in said and "named differently" in said
    assert "none measured in more than one" in said and "rna: " in said and "protein: " in said


def test_legitimately_unpaired_cells_named_in_sequence_are_not_taken_for_renamed_ones():
    def names(prefix, start, n):
        return pd.Index([f"{prefix}{i}" for i in range(start, start + n)])

    paired = names("", 0, 50).map(lambda n: f"{n}-0")
    rna = paired.append(names("", 0, 100).map(lambda n: f"{n}-1"))
    atac = paired.append(names("", 0, 100).map(lambda n: f"{n}-2"))
    assert renamed_pairs({"rna": rna, "atac": atac}) is None
    mosaic = names("paired_", 0, 50)
    assert (
        renamed_pairs(
            {
                "rna": mosaic.append(names("rnaonly_", 0, 80)),
                "atac": mosaic.append(names("atonly_", 0, 80)),
            }
        )
        is None
    )
    # distinct cells of two lanes share a few barcodes by chance: not enough to call them renamed
    rng = np.random.default_rng(0)
    pool = np.array([f"{''.join(rng.choice(list('ACGT'), 10))}" for _ in range(4000)])
    lane1, lane2 = pool[:2000], np.concatenate([pool[:30], pool[2000:3970]])
    assert (
        renamed_pairs({"rna": pd.Index([f"{b}-1" for b in lane1]), "adt": pd.Index(lane2)}) is None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_pairing({"rna": rna, "atac": atac})


def test_a_second_version_of_a_modality_is_named(cite):
    mdata = md.MuData({"RNA": cite["rna"], "SCT": cite["rna"].copy(), "ADT": cite["protein"]})
    with pytest.warns(VennCellInputWarning, match="'RNA' and 'SCT' share 40 of their features"):
        VennCell.setup_mudata(mdata, modalities={"RNA": "rna", "SCT": "rna", "ADT": "protein"})


def test_counts_in_raw_are_named_and_the_fix_runs_as_written(cite):
    rna = cite["rna"].copy()
    rna.raw = rna.copy()
    rna.X = np.log1p(np.asarray(rna.X.todense() if hasattr(rna.X, "todense") else rna.X))
    mdata = md.MuData({"rna": rna, "protein": cite["protein"]})
    with pytest.raises(VennCellInputError, match=r"\.raw holds 40 features") as err:
        VennCell.setup_mudata(mdata, modalities={"rna": {"layer": "counts"}, "protein": {}})
    with pytest.warns(VennCellInputWarning, match=r"Gaussian.*\.raw holds 40 features"):
        VennCell.setup_mudata(mdata)
    fix = str(err.value).split("`")[1]
    exec(fix, {"mdata": mdata})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        VennCell.setup_mudata(mdata, modalities={"rna": {"layer": "counts"}, "protein": {}})
    assert not [w for w in _venncell_warnings(record) if "Gaussian" in w]


def test_counts_in_another_layer_are_named(cite):
    rna = cite["rna"].copy()
    rna.layers["umi"] = rna.X.copy()
    rna.X = np.log1p(np.asarray(rna.X.todense() if hasattr(rna.X, "todense") else rna.X))
    with pytest.warns(VennCellInputWarning, match=r"whole numbers in `layer='umi'`"):
        VennCell.setup_mudata(md.MuData({"rna": rna, "protein": cite["protein"]}))


def test_missing_values_written_as_text_and_tiny_batches_warn_once(cite):
    labels = cite.obs["batch"].astype(str).to_numpy().copy()
    labels[:5] = "NA"
    cite.obs["batch"] = labels
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        VennCell.setup_mudata(cite, batch_key="batch")
        VennCell(cite)
    said = _venncell_warnings(record)
    assert sum("['NA'] read like a missing value" in w for w in said) == 1
    cite.obs["batch"] = [f"donor{i // 3}" for i in range(cite.n_obs)]
    with pytest.warns(VennCellInputWarning, match="80 of 80 batches have fewer than 10 cells"):
        VennCell.setup_mudata(cite, batch_key="batch")
    # a cohort of usual sizes says nothing
    cite.obs["batch"] = [f"donor{i // 40}" for i in range(cite.n_obs)]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        VennCell.setup_mudata(cite, batch_key="batch")
    assert not [w for w in _venncell_warnings(record) if "batch" in w]


def test_the_batch_column_copied_up_from_several_modalities_runs_as_written():
    rna = ad.AnnData(np.ones((6, 3)), obs=pd.DataFrame(index=[f"c{i}" for i in range(6)]))
    atac = ad.AnnData(np.ones((6, 3)), obs=pd.DataFrame(index=[f"c{i}" for i in range(3, 9)]))
    rna.obs["batch"] = pd.Categorical(["a", "a", "b", "b", None, "b"])
    atac.obs["batch"] = pd.Categorical(["b", "c", "c", "c", "c", "c"])
    mdata = md.MuData({"rna": rna, "atac": atac})
    with pytest.raises(VennCellInputError, match="copy it up") as err:
        VennCell.setup_mudata(mdata, batch_key="batch")
    exec(str(err.value).split("`")[1], {"mdata": mdata})
    assert dict(mdata.obs["batch"]) == {
        "c0": "a", "c1": "a", "c2": "b", "c3": "b", "c4": "c", "c5": "b", "c6": "c", "c7": "c", "c8": "c"
    }  # fmt: skip
