"""The harness's datasets: every labelled real set in ../shared/datasets plus the built-in synthetic default.

Each builder writes one .h5mu into ``benchmarks/integration/data/`` (gitignored; the data are never committed), with
raw counts in ``.X`` of modalities named ``rna``, ``protein`` and ``atac`` (so VennCell's defaults recognise them by
name), labels and batches in ``mdata.obs``. A dataset whose source folder is absent is skipped.

Your own data (``run.py --data NAME=PATH.h5mu --labels COL``, ``own_dataset``): a copy with each modality renamed to
its kind (VennCell's ``guess_kind`` of its name: ``adt`` is protein, ``peaks`` ATAC) goes into the same folder, and
the dataset is kept in ``data/own.json`` for later runs; a changed file replaces it (and its fits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from venncell.data.files import atomic_write

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "datasets"
DATA = HERE / "data"


@dataclass
class Dataset:
    """One benchmark dataset: where its MuData lives and what to score it on."""

    name: str
    kind: str  # cite | multiome | trimodal | image
    labels: list[str]  # .obs columns scored; the first is the headline label
    batch_key: str | None = None
    source: str = ""  # folder in ../shared/datasets ("" = generated)
    register: dict | None = None  # image modalities only: where the pixels are (data, not tuning)
    notes: str = ""
    modalities: list[str] = field(default_factory=list)
    own: bool = False  # the user's data (``own_dataset``), not one the harness ships

    @property
    def path(self) -> Path:
        return DATA / f"{self.name}.h5mu"

    def available(self) -> bool:
        if self.own:
            return self.path.exists()
        return not self.source or (SHARED / self.source).exists()

    def load(self) -> md.MuData:
        if not self.path.exists() and not self.own:
            DATA.mkdir(parents=True, exist_ok=True)
            atomic_write(BUILDERS[self.name](), self.path)
        return md.read_h5mu(str(self.path))

    def trained_defaults(self, seed: int = 0, **options):
        """``(model, mdata)``: VennCell with the package defaults (changed by ``options``, model fields) trained on
        this dataset on one thread, as the harness fits it (the experiments' fits)."""
        import tempfile

        import torch

        from venncell import VennCell

        torch.set_num_threads(1)
        mdata = self.load()
        VennCell.setup_mudata(mdata, modalities=self.register, batch_key=self.batch_key)
        model = VennCell(mdata, seed=seed, **options)
        with tempfile.TemporaryDirectory() as d:
            model.train(run_dir=d, progress_bar="none")
        return model, mdata


def _counts(x) -> sp.csr_matrix:
    return sp.csr_matrix(x, dtype=np.float32)


def _mudata(mods: dict[str, ad.AnnData], obs: pd.DataFrame) -> md.MuData:
    mdata = md.MuData(mods)
    for col in obs.columns:
        mdata.obs[col] = obs[col].to_numpy()
    return mdata


def build_synthetic() -> md.MuData:
    from venncell import make_synthetic

    mdata, _ = (
        make_synthetic()
    )  # the built-in default (3,000 cells, RNA + protein + ATAC); truth in .obsm
    return mdata


def build_pbmc10k_cite() -> md.MuData:
    src = SHARED / "pbmc10k_cite_totalvi"
    rna = pd.read_csv(src / "pbmc10k_harmo_rna.csv.gz", index_col=0).T
    adt = pd.read_csv(src / "pbmc10k_harmo_pro.csv.gz", index_col=0).T
    labels = pd.read_csv(src / "tagtango_labels.csv", index_col=0).reindex(rna.index)
    cells = pd.DataFrame(index=rna.index.astype(str))
    mods = {
        "rna": ad.AnnData(
            _counts(rna.values), obs=cells.copy(), var=pd.DataFrame(index=rna.columns)
        ),
        "protein": ad.AnnData(
            adt.values.astype(np.float32),
            obs=cells.copy(),
            var=pd.DataFrame(index=[c.replace("_TotalSeqB", "") for c in adt.columns]),
        ),
    }
    return _mudata(mods, labels[["Fine.RNA", "Main.RNA"]].astype(object).set_axis(cells.index))


def _bmmc(name: str, mod2: str) -> md.MuData:
    src = SHARED / f"neurips2021_bmmc_{name}_starter" / f"openproblems_bmmc_{name}_starter"
    rna, other = ad.read_h5ad(f"{src}.output_rna.h5ad"), ad.read_h5ad(f"{src}.output_mod2.h5ad")
    if not (rna.obs_names == other.obs_names).all():
        raise RuntimeError(
            f"BMMC {name}: the two modalities' cells differ (see the dataset's SOURCE.md)"
        )
    cells = pd.DataFrame(index=rna.obs_names.astype(str))
    mods = {
        key: ad.AnnData(
            _counts(a.layers["counts"]), obs=cells.copy(), var=pd.DataFrame(index=a.var_names)
        )
        for key, a in (("rna", rna), (mod2, other))
    }
    return _mudata(mods, rna.obs[["cell_type", "batch"]].astype(str).set_axis(cells.index))


def build_bmmc_cite() -> md.MuData:
    return _bmmc("cite", "protein")


def build_bmmc_multiome() -> md.MuData:
    return _bmmc("multiome", "atac")


def build_scicar() -> md.MuData:
    src = SHARED / "scicar_a549_rna_atac"
    cells = [line.strip() for line in open(src / "shared_cells.txt")]
    rna = sp.load_npz(src / "diff_expr_shared_cells.npz").T.tocsr()
    atac = sp.load_npz(src / "diff_atac_shared_cells.npz").T.tocsr()
    meta = pd.read_csv(src / "GSM3271040_RNA_sciCAR_A549_cell.txt", index_col=0).loc[cells]
    obs = pd.DataFrame(
        {"treatment_time": meta["treatment_time"].astype(int).astype(str).add(" h").to_numpy()},
        index=cells,
    )
    mods = {
        "rna": ad.AnnData(
            _counts(rna),
            obs=obs[[]].copy(),
            var=pd.DataFrame(index=[f"gene_{i:04d}" for i in range(rna.shape[1])]),
        ),
        "atac": ad.AnnData(
            _counts(atac),
            obs=obs[[]].copy(),  # the source gives no feature names
            var=pd.DataFrame(index=[f"atac_{i:03d}" for i in range(atac.shape[1])]),
        ),
    }
    return _mudata(mods, obs)


BBBC_CHANNELS = {"dapi": [0], "cyto": [1, 2]}


def build_bbbc021() -> md.MuData:
    """Crops pooled 2 x 2 (68 -> 34 px), log1p, cells x 3 x 34 x 34 in ``.obsm['crops']`` of both modalities."""
    src = SHARED / "bbbc021_singlecell_crops_dmso_vs_protsynth"
    man = pd.read_csv(src / "manifest.csv")
    x = np.stack([np.load(src / p) for p in man.path]).astype(np.float32)  # (n, 68, 68, 3)
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
    pixels = np.log1p(x).transpose(0, 3, 1, 2).astype(np.float32)
    obs = pd.DataFrame(
        {"moa": man.moa.astype(str).to_numpy(), "field": man.field_id.astype(str).to_numpy()},
        index=[f"cell{i:05d}" for i in range(n)],
    )
    mods = {}
    for m, ch in BBBC_CHANNELS.items():
        a = ad.AnnData(np.zeros((n, 0), dtype=np.float32), obs=obs[[]].copy())
        a.obsm["crops"] = pixels[:, ch]
        mods[m] = a
    return _mudata(mods, obs)


BUILDERS = {
    "synthetic": build_synthetic,
    "pbmc10k_cite": build_pbmc10k_cite,
    "bmmc_cite": build_bmmc_cite,
    "bmmc_multiome": build_bmmc_multiome,
    "scicar": build_scicar,
    "bbbc021": build_bbbc021,
}

DATASETS = {
    "synthetic": Dataset(
        "synthetic",
        "trimodal",
        ["cluster"],
        modalities=["rna", "protein", "atac"],
        notes="built-in default generator, 3,000 cells; known shared and private factors",
    ),
    "pbmc10k_cite": Dataset(
        "pbmc10k_cite",
        "cite",
        ["Fine.RNA", "Main.RNA"],
        source="pbmc10k_cite_totalvi",
        modalities=["rna", "protein"],
        notes="6,855 cells, 4,000 genes + 14 ADT",
    ),
    "bmmc_cite": Dataset(
        "bmmc_cite",
        "cite",
        ["cell_type"],
        "batch",
        "neurips2021_bmmc_cite_starter",
        modalities=["rna", "protein"],
        notes="600 cells, 1,000 genes + 134 ADT, 2 batches",
    ),
    "bmmc_multiome": Dataset(
        "bmmc_multiome",
        "multiome",
        ["cell_type"],
        "batch",
        "neurips2021_bmmc_multiome_starter",
        modalities=["rna", "atac"],
        notes="500 cells, 600 genes + 600 peaks, 2 batches",
    ),
    "scicar": Dataset(
        "scicar",
        "multiome",
        ["treatment_time"],
        source="scicar_a549_rna_atac",
        modalities=["rna", "atac"],
        notes="1,874 cells, 2,613 genes + 815 ATAC features",
    ),
    "bbbc021": Dataset(
        "bbbc021",
        "image",
        ["moa"],
        source="bbbc021_singlecell_crops_dmso_vs_protsynth",
        register={m: {"kind": "image", "obsm_key": "crops"} for m in BBBC_CHANNELS},
        modalities=list(BBBC_CHANNELS),
        notes="2,000 crops, DAPI vs tubulin + actin, 34 x 34 px",
    ),
}


OWN = DATA / "own.json"
KIND_OF_SET = {
    frozenset({"rna", "protein"}): "cite",
    frozenset({"rna", "atac"}): "multiome",
    frozenset({"rna", "protein", "atac"}): "trimodal",
}


def _own_datasets() -> dict[str, Dataset]:
    entries = json.loads(OWN.read_text()) if OWN.exists() else {}
    return {name: Dataset(**e["dataset"], own=True) for name, e in entries.items()}


def own_dataset(name: str, file: str, labels: list[str], batch_key: str | None = None) -> bool:
    """Register the user's MuData ``file`` as dataset ``name``: checked, copied with each modality named by its kind
    into ``data/``, kept in ``data/own.json``. Returns True when the data are new or changed (earlier fits of
    ``name`` are then stale)."""
    from venncell.data.spec import guess_kind

    if name in BUILDERS:
        raise SystemExit(
            f"--data {name}=...: {name} is a shipped dataset; give yours another name"
        )
    src = Path(file).resolve()
    if not src.is_file():
        raise SystemExit(f"--data {name}={file}: no such file")
    stat = src.stat()
    signature = [str(src), stat.st_size, stat.st_mtime_ns, labels, batch_key]
    entries = json.loads(OWN.read_text()) if OWN.exists() else {}
    path = DATA / f"{name}.h5mu"
    if entries.get(name, {}).get("signature") == signature and path.exists():
        return False
    mdata = md.read_h5mu(str(src))
    kinds = {m: guess_kind(m) for m in mdata.mod}
    unknown = [m for m, k in kinds.items() if k not in ("rna", "protein", "atac")]
    if unknown or len(set(kinds.values())) < len(kinds):
        raise SystemExit(
            f"--data {name}: the harness scores RNA, protein and ATAC modalities, one of each, named so that their "
            f"kind shows (rna/gex, protein/adt, atac/peaks); {file} has {kinds}. Rename them (mdata.mod)."
        )
    missing = [c for c in [*labels, *([batch_key] if batch_key else [])] if c not in mdata.obs]
    if missing:
        raise SystemExit(
            f"--data {name}: {missing} not in mdata.obs of {file} (it has {list(mdata.obs.columns)[:20]})"
        )
    kind = KIND_OF_SET.get(frozenset(kinds.values()), "other")
    # the cells measured in every modality (the peers need paired cells), in mdata's order
    cells = mdata.obs_names
    for a in mdata.mod.values():
        cells = cells[cells.isin(a.obs_names)]
    # labels as text, a missing one kept missing (the scores leave unlabelled cells out)
    obs = mdata.obs.loc[cells, [*labels, *([batch_key] if batch_key else [])]].apply(
        lambda c: c.astype(object).where(c.isna(), c.astype(str))
    )
    mods = {}
    for m, k in kinds.items():
        a = mdata.mod[m][cells]
        x = (
            a.layers["counts"] if "counts" in a.layers else a.X
        )  # raw counts: every peer models them
        mods[k] = ad.AnnData(_counts(x), obs=obs[[]].copy(), var=a.var[[]].copy())
    copy = _mudata(mods, obs)
    DATA.mkdir(parents=True, exist_ok=True)
    atomic_write(copy, path)
    dataset = dict(
        name=name,
        kind=kind,
        labels=list(labels),
        batch_key=batch_key,
        modalities=list(mods),
        notes=f"your data, {file}: {copy.n_obs:,} cells measured in every modality, "
        + " + ".join(f"{a.n_vars:,} {k}" for k, a in mods.items()),
    )
    entries[name] = {"signature": signature, "dataset": dataset}
    OWN.write_text(json.dumps(entries, indent=1))
    DATASETS[name] = Dataset(**dataset, own=True)
    return True


DATASETS.update(_own_datasets())
