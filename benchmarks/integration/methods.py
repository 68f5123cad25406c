"""One function per method: fit it on a dataset and return its embedding (and, for CITE-seq, its RNA -> ADT
prediction for the held-out cells). Each runs in a child process of its own (``fit.py``), so its wall time and peak
memory are its own. Peers (scvi-tools, mofapy2/muon) are benchmark-only dependencies: ``pip install -e ".[bench]"``.

Every method uses its tool's own defaults; the only inputs are the data, the batch key and the seed.
"""

from __future__ import annotations

import tempfile
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.neighbors import KNeighborsRegressor

N_PCS = 50  # scanpy's default number of principal components


# ------------------------------------------------------------------ shared preprocessing (baselines, MOFA+)
def log_normalised(x) -> np.ndarray | sp.csr_matrix:
    """scanpy's normalize_total(1e4) + log1p."""
    a = ad.AnnData(
        sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    )
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a.X


def clr(x) -> np.ndarray:
    """Per-cell centred log-ratio of protein counts (log1p, minus the cell's mean over proteins)."""
    x = np.log1p(np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64))
    return x - x.mean(1, keepdims=True)


def tfidf(x) -> sp.csr_matrix:
    """TF-IDF of binarised accessibility, log-scaled (Signac-style LSI input)."""
    t = TfidfTransformer(norm="l1").fit_transform(sp.csr_matrix((x > 0).astype(np.float32)))
    t = sp.csr_matrix(t * 1e4)
    t.data = np.log1p(t.data)
    return t


def pixels(mdata: md.MuData, m: str) -> np.ndarray:
    x = np.asarray(mdata[m].obsm["crops"], dtype=np.float32).reshape(mdata[m].n_obs, -1)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def modality_kind(m: str) -> str:
    return {"rna": "rna", "protein": "protein", "atac": "atac"}.get(m, "image")


def pca_embedding(mdata: md.MuData, m: str, seed: int) -> np.ndarray:
    """The standard single-modality embedding: PCA of log-normalised RNA, of CLR proteins, of pixels; LSI of ATAC
    (its first component tracks depth and is dropped)."""
    kind = modality_kind(m)
    if kind == "atac":
        n = min(N_PCS, mdata[m].n_vars - 2)
        z = TruncatedSVD(n + 1, random_state=seed).fit_transform(tfidf(mdata[m].X))[:, 1:]
        return (z - z.mean(0)) / z.std(0)
    x = {
        "rna": lambda: log_normalised(mdata[m].X),
        "protein": lambda: clr(mdata[m].X),
        "image": lambda: pixels(mdata, m),
    }[kind]()
    n = min(N_PCS, x.shape[1] - 1, x.shape[0] - 1)
    if sp.issparse(x):
        x = x.toarray()
    return PCA(n, random_state=seed).fit_transform(np.asarray(x, dtype=np.float64))


def unit(z: np.ndarray) -> np.ndarray:
    """Unit total variance, so no block dominates a concatenation."""
    z = z - z.mean(0)
    return z / np.sqrt((z**2).sum(1).mean())


# ------------------------------------------------------------------ methods
# a harness-only row: the defaults with each block the plain mean of its modalities' estimates, as every model
# averaged them before the fitted mixing weights (``venncell.module.embed.fit_mix_weights``)
EQUAL_MIX = "equal_mix"
# a harness-only row: the defaults' training, every block from the encoders alone, the embedding of every
# earlier default (now the mean of the encoders' and the stage-1 latents, ``get_latent_representation``)
ENCODER = "encoder"


def variant_settings(variant: str) -> dict:
    """The model settings of a harness row ``venncell:<variant>``: a named preset (``fast``) or one or more
    ``field=value`` changes of the defaults joined by ``+`` (``encoder_dropout=0.2``), for rows that measure a
    candidate default on every dataset before it becomes one; a ``TrainConfig`` field is passed to ``train`` instead
    (``train_settings``)."""
    import yaml

    from venncell.module.config import PRESETS

    if variant in (EQUAL_MIX, ENCODER):
        return {}
    if "=" not in variant:
        return dict(PRESETS[variant])
    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in variant.split("+"))}


def train_settings(settings: dict) -> tuple[dict, dict]:
    """``settings`` split into the model's fields and the trainer's (``TrainConfig``, e.g. ``stage1_epochs``)."""
    from dataclasses import fields

    from venncell.train.config import TrainConfig

    trainer = {f.name for f in fields(TrainConfig)}
    return (
        {k: v for k, v in settings.items() if k not in trainer},
        {k: v for k, v in settings.items() if k in trainer},
    )


def fit_venncell(mdata, ds, seed, held, run_dir, before: bool = False, variant: str | None = None):
    """VennCell with the package defaults: no option beyond the batch key and, for images, where the pixels are.
    ``before``: the defaults of VennCell 0.1 (preset ``v0.1``, latent learning rate 0.01), for the "before" rows;
    ``variant``: a candidate change of the defaults (``variant_settings``)."""
    from venncell import VennCell

    VennCell.setup_mudata(mdata, modalities=ds.register, batch_key=ds.batch_key)
    variant = "v0.1" if before else variant
    settings, train_kw = train_settings(variant_settings(variant) if variant else {})
    model = VennCell(mdata, seed=seed, **settings)
    model.train(
        run_dir=run_dir, progress_bar="none", **({"lr_latent": 0.01} if before else train_kw)
    )
    if variant == EQUAL_MIX:
        model.module.mix_weights.copy_(model.module.equal_mix_weights())
    # the package's default latents, except in the rows of defaults that used the encoders' alone
    source = "encoder" if before or variant in (ENCODER, EQUAL_MIX) else None
    out = {
        "embedding": model.get_latent_representation(block="all", source=source),
        "shared": model.get_latent_representation(block="shared", source=source),
        "is_train": model.is_train,
    }
    for m in model.specs:
        out[f"private:{m}"] = model.get_latent_representation(block=f"private:{m}", source=source)
        out[f"shared_from:{m}"] = model.get_latent_representation(modalities=[m])
    if ds.kind == "cite":
        sub = mdata[~model.is_train].copy()
        out["protein_hat"] = model.predict_modality(
            sub, source=["rna"], target="protein", scale="counts"
        )
    return out


def _totalvi_adata(mdata, protein, batch):
    a = ad.AnnData(
        sp.csr_matrix(mdata["rna"].X, dtype=np.float32),
        obs=pd.DataFrame({"batch": pd.Categorical(batch)}, index=mdata.obs_names),
    )
    a.obsm["protein_expression"] = pd.DataFrame(
        np.asarray(protein, dtype=np.float32),
        index=mdata.obs_names,
        columns=list(mdata["protein"].var_names),
    )
    return a


def _scvi_seed(seed):
    import scvi

    scvi.settings.seed = seed
    scvi.settings.progress_bar_style = "tqdm"
    return scvi


def fit_totalvi(mdata, ds, seed, held, run_dir):
    """totalVI, defaults. Fit 1: every cell (latent). Fit 2: the held-out cells' proteins hidden (all zero, own batch:
    totalVI's protein_batch_mask treats them as unmeasured), then their proteins imputed from RNA."""
    scvi = _scvi_seed(seed)
    batch = (
        mdata.obs[ds.batch_key].astype(str).to_numpy()
        if ds.batch_key
        else np.full(mdata.n_obs, "b")
    )
    adt = mdata["protein"].X
    adt = np.asarray(adt.toarray() if sp.issparse(adt) else adt, dtype=np.float32)
    a = _totalvi_adata(mdata, adt, batch)
    scvi.model.TOTALVI.setup_anndata(
        a,
        protein_expression_obsm_key="protein_expression",
        batch_key="batch" if ds.batch_key else None,
    )
    model = scvi.model.TOTALVI(a)
    model.train(accelerator="cpu", devices=1, enable_progress_bar=False)
    out = {
        "embedding": model.get_latent_representation(),
        "epochs": len(model.history["elbo_train"]),
    }
    hidden = adt.copy()
    hidden[held] = 0.0
    hb = np.where(held, "heldout", batch)
    h = _totalvi_adata(mdata, hidden, hb)
    scvi.model.TOTALVI.setup_anndata(
        h, protein_expression_obsm_key="protein_expression", batch_key="batch"
    )
    model = scvi.model.TOTALVI(h)
    model.train(accelerator="cpu", devices=1, enable_progress_bar=False)
    # decoded as a measured batch (scvi-tools' imputation recipe); with real batches, each cell as its own batch
    measured = [b for b in np.unique(batch)]
    preds = []
    for b in measured:
        idx = np.flatnonzero(held & (batch == b))
        if len(idx):
            _, prot = model.get_normalized_expression(
                indices=idx, transform_batch=b, n_samples=25, return_mean=True, return_numpy=True
            )
            preds.append((idx, np.asarray(prot)))
    protein_hat = np.zeros((int(held.sum()), adt.shape[1]), dtype=np.float32)
    pos = {c: i for i, c in enumerate(np.flatnonzero(held))}
    for idx, prot in preds:
        protein_hat[[pos[c] for c in idx]] = prot
    out["protein_hat"] = protein_hat
    return out


def fit_multivi(mdata, ds, seed, held, run_dir):
    """MultiVI, defaults (RNA + ATAC, + protein where present)."""
    scvi = _scvi_seed(seed)
    mods = {"rna_layer": "rna", "atac_layer": "atac"}
    if "protein" in mdata.mod:
        mods["protein_layer"] = "protein"
    data = md.MuData({k: mdata[k].copy() for k in ["rna", "atac", "protein"] if k in mdata.mod})
    for k in data.mod:
        data[k].X = sp.csr_matrix(data[k].X, dtype=np.float32)
    if ds.batch_key:
        data.obs["batch"] = mdata.obs[ds.batch_key].astype(str).to_numpy()
        for k in data.mod:
            data[k].obs["batch"] = data.obs["batch"].to_numpy()
        mods["batch_key"] = "rna"
    scvi.model.MULTIVI.setup_mudata(
        data, modalities=mods, batch_key="batch" if ds.batch_key else None
    )
    model = scvi.model.MULTIVI(data, n_genes=data["rna"].n_vars, n_regions=data["atac"].n_vars)
    model.train(accelerator="cpu", devices=1, enable_progress_bar=False)
    return {
        "embedding": model.get_latent_representation(),
        "epochs": len(model.history["elbo_train"]),
    }


def fit_mofa(mdata, ds, seed, held, run_dir):
    """MOFA+ through muon, its defaults (10 factors), on each modality's standard normalisation (log-normalised RNA,
    highly variable genes; CLR proteins; TF-IDF accessibility; standardised pixels); batches as MOFA+ groups."""
    import muon as mu

    mods = {}
    for m in mdata.mod:
        kind = modality_kind(m)
        if kind == "image":
            x = pixels(mdata, m)
        elif kind == "rna":
            x = log_normalised(mdata[m].X)
        elif kind == "protein":
            x = clr(mdata[m].X)
        else:
            x = tfidf(mdata[m].X)
        a = ad.AnnData(
            sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x, dtype=np.float32),
            obs=pd.DataFrame(index=mdata.obs_names),
        )
        a.var["highly_variable"] = True
        if kind == "rna" and a.n_vars > 2000:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sc.pp.highly_variable_genes(a, n_top_genes=2000)
        mods[m] = a
    data = md.MuData(mods)
    group = None
    if ds.batch_key:
        data.obs["group"] = mdata.obs[ds.batch_key].astype(str).to_numpy()
        group = "group"
    out = tempfile.mktemp(suffix=".hdf5", dir=run_dir)
    mu.tl.mofa(
        data, groups_label=group, use_var="highly_variable", seed=seed, outfile=out, gpu_mode=False
    )
    return {"embedding": np.asarray(data.obsm["X_mofa"])}


def fit_pca(mdata, ds, seed, held, run_dir, modality=None):
    return {"embedding": pca_embedding(mdata, modality, seed)}


def fit_concat_pca(mdata, ds, seed, held, run_dir):
    """Every modality's PCA/LSI scaled to unit total variance, side by side."""
    return {"embedding": np.hstack([unit(pca_embedding(mdata, m, seed)) for m in mdata.mod])}


def knn_protein_baseline(mdata, seed, held):
    """RNA -> ADT baseline: kNN regression (k = 15) on RNA PCA, from the training cells' CLR proteins."""
    z = pca_embedding(mdata, "rna", seed)
    y = clr(mdata["protein"].X)
    reg = KNeighborsRegressor(15).fit(z[~held], y[~held])
    return reg.predict(z[held])


def methods_for(ds) -> list[str]:
    """Which methods apply to a dataset: VennCell, its peers, and the baselines."""
    peers = {"cite": ["totalvi"], "multiome": ["multivi"], "trimodal": ["multivi"]}.get(
        ds.kind, []
    )
    return [
        "venncell",
        "venncell:fast",
        "venncell_before",
        *peers,
        "mofa",
        *[f"pca:{m}" for m in ds.modalities],
        "concat_pca",
    ]


def fit(name: str, mdata, ds, seed: int, held: np.ndarray, run_dir: str) -> dict:
    if name.startswith("pca:"):
        return fit_pca(mdata, ds, seed, held, run_dir, modality=name.split(":", 1)[1])
    if name == "venncell_before":
        return fit_venncell(mdata, ds, seed, held, run_dir, before=True)
    if name.startswith("venncell:"):  # venncell:fast, venncell:encoder_dropout=0.2
        return fit_venncell(mdata, ds, seed, held, run_dir, variant=name.split(":", 1)[1])
    return {
        "venncell": fit_venncell,
        "totalvi": fit_totalvi,
        "multivi": fit_multivi,
        "mofa": fit_mofa,
        "concat_pca": fit_concat_pca,
    }[name](mdata, ds, seed, held, run_dir)
