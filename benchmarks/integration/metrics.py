"""Scores of one embedding: scib-metrics' Benchmarker (bio conservation; batch correction where there are batches;
total), kNN label accuracy, RNA -> ADT prediction of held-out cells, and the Venn recovery matrix on synthetic data."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def knn_accuracy(z: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """kNN (k = 15) label accuracy, 5-fold stratified cross-validation."""
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    with (
        warnings.catch_warnings()
    ):  # rare classes have < 5 members; StratifiedKFold warns and still splits
        warnings.simplefilter("ignore", UserWarning)
        return float(cross_val_score(KNeighborsClassifier(15), z, y, cv=cv).mean())


def scib_scores(
    embeddings: dict[str, np.ndarray],
    labels: np.ndarray,
    batch: np.ndarray | None,
    pre_integrated: np.ndarray,
) -> pd.DataFrame:
    """scib-metrics' Benchmarker on several embeddings of the same cells (its default metrics; raw scores, not
    min-max scaled, so each embedding's scores do not depend on the others). Without batches only bio conservation
    is computed, and the total is the bio conservation score."""
    import anndata as ad
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    obs = pd.DataFrame(
        {
            "label": pd.Categorical(labels.astype(str)),
            "batch": pd.Categorical(
                batch.astype(str) if batch is not None else np.zeros(len(labels))
            ),
        }
    )
    a = ad.AnnData(np.zeros((len(labels), 1), dtype=np.float32), obs=obs)
    a.obsm["pre"] = pre_integrated
    keys = []
    for name, z in embeddings.items():
        key = f"e{len(keys)}"
        a.obsm[key] = np.asarray(z, dtype=np.float32)
        keys.append(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = Benchmarker(
            a,
            "batch",
            "label",
            keys,
            bio_conservation_metrics=BioConservation(),
            batch_correction_metrics=BatchCorrection() if batch is not None else None,
            pre_integrated_embedding_obsm_key="pre",
            progress_bar=False,
            n_jobs=1,
        )
        bm.benchmark()
        res = bm.get_results(min_max_scale=False)
    res = res.drop(index="Metric Type").astype(float)
    res.index = [list(embeddings)[keys.index(k)] for k in res.index]
    if "Total" not in res.columns:
        res["Total"] = res["Bio conservation"]
    return res


def clr(x: np.ndarray) -> np.ndarray:
    x = np.log1p(np.clip(np.asarray(x, dtype=np.float64), 0, None))
    return x - x.mean(1, keepdims=True)


def protein_prediction(
    observed_counts: np.ndarray, predicted: np.ndarray, predicted_is_clr: bool = False
) -> dict:
    """RNA -> ADT on held-out cells, as openproblems' predict-modality task scores it: both sides as per-cell CLR of
    counts; RMSE over every value, and Pearson r per protein across cells (mean)."""
    obs = clr(observed_counts)
    pred = predicted if predicted_is_clr else clr(predicted)
    rmse = float(np.sqrt(((obs - pred) ** 2).mean()))
    a, b = obs - obs.mean(0), pred - pred.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return {"rmse": rmse, "pearson": float(np.nanmean(r))}


def venn_recovery(blocks: dict[str, np.ndarray], mdata) -> dict:
    """kNN-R² recovery summary of the true shared / private factors stored by the synthetic generator."""
    from venncell.analysis.recovery import evaluate_recovery

    truth = {"shared": np.asarray(mdata.obsm["true_shared"])}
    truth |= {
        f"private:{k[len('true_private_') :]}": np.asarray(v)
        for k, v in mdata.obsm.items()
        if k.startswith("true_private_")
    }
    return evaluate_recovery(blocks, truth)["knn"]["summary"]


def label_scores(
    embeddings: dict[str, np.ndarray], y: pd.Series, batch: np.ndarray | None, pre: np.ndarray
) -> dict[str, dict[str, float]]:
    """kNN accuracy and every scib-metrics score of one label, for each embedding of the same cells; cells without
    the label are left out. ``pre``: the pre-integration embedding scib's PCR comparison needs."""
    ok = y.notna().to_numpy()
    labels = y[ok].astype(str).to_numpy()
    scib = scib_scores(
        {k: v[ok] for k, v in embeddings.items()},
        labels,
        None if batch is None else batch[ok],
        pre[ok],
    )
    return {
        k: {"knn": knn_accuracy(z[ok], labels), **{c: float(v) for c, v in scib.loc[k].items()}}
        for k, z in embeddings.items()
    }


def score_ways(name: str, ways: dict[str, np.ndarray]) -> list[dict]:
    """Several embeddings of dataset ``name``'s cells scored as the harness scores a method (kNN accuracy and
    scib-metrics of the headline label); one row per way: ``way``, ``knn``, ``bio``, ``total``."""
    from datasets import DATASETS
    from methods import fit_concat_pca

    ds = DATASETS[name]
    mdata = ds.load()
    pre = fit_concat_pca(mdata, ds, 0, None, None)["embedding"]
    batch = mdata.obs[ds.batch_key].astype(str).to_numpy() if ds.batch_key else None
    scores = label_scores(ways, mdata.obs[ds.labels[0]], batch, pre)
    return [
        {"way": k, "knn": s["knn"], "bio": s["Bio conservation"], "total": s["Total"]}
        for k, s in scores.items()
    ]
