"""totalVI (scvi-tools) on exactly the cells and split that ``run.py`` gives VennCell. Experiments only:
scvi-tools is never a VennCell dependency.

Two fits, because the two questions need different inputs:
- ``full``: every cell with its RNA and proteins (the usual totalVI use) -> latent for label kNN accuracy,
  the same information VennCell's encoders get for every cell.
- ``hidden``: the held-out cells' proteins set to zero and the cells put in their own batch; totalVI treats
  a batch whose proteins are all zero as "proteins not measured" (``protein_batch_mask``), so those proteins never
  reach the model and its imputed proteins for them are a real RNA -> ADT prediction. Proteins are decoded with
  ``transform_batch`` = the training batch (the measured one), as scvi-tools' imputation tutorials do.
Results are cached as .npz in the run folder, so rerunning ``run.py`` with other VennCell settings reuses them.
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd


def _adata(mdata: md.MuData, protein: np.ndarray, batch: np.ndarray) -> ad.AnnData:
    a = ad.AnnData(
        mdata["rna"].X.copy(),
        obs=pd.DataFrame({"batch": pd.Categorical(batch)}, index=mdata.obs_names),
    )
    a.obsm["protein_expression"] = pd.DataFrame(
        protein, index=mdata.obs_names, columns=list(mdata["protein"].var_names)
    )
    return a


def _fit(a: ad.AnnData, epochs: int, seed: int, batch_key: str | None):
    import scvi

    scvi.settings.seed = seed
    scvi.model.TOTALVI.setup_anndata(
        a, protein_expression_obsm_key="protein_expression", batch_key=batch_key
    )
    model = scvi.model.TOTALVI(a)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
    return model, time.perf_counter() - t0


def run_totalvi(
    mdata: md.MuData,
    held: np.ndarray,
    epochs: int,
    out: Path,
    seed: int = 0,
    fits: tuple[str, ...] = ("full", "hidden"),
) -> dict:
    """``latent`` (cells x 20, fit 'full'), ``protein_hat`` (held-out cells x proteins, normalised protein
    expression of fit 'hidden') and each fit's wall time; each fit is cached on its own."""
    res: dict = {}
    for fit in fits:
        cache = Path(out) / f"totalvi_{fit}_e{epochs}_s{seed}.npz"
        lock = cache.with_suffix(".running")
        while (
            lock.exists() and not cache.exists()
        ):  # another process is fitting it: wait instead of refitting
            time.sleep(10)
        if not cache.exists():
            part = (
                _full(mdata, epochs, seed) if fit == "full" else _hidden(mdata, held, epochs, seed)
            )
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, **part)
        z = np.load(cache)
        res |= {k: z[k] for k in z.files}
    if (
        "latent" not in res
    ):  # only the 'hidden' fit: its latent (held-out cells from RNA alone) stands in
        res["latent"] = res["latent_hidden"]
    return res


def _full(mdata, epochs, seed) -> dict:
    adt = np.asarray(mdata["protein"].X, dtype=np.float32)
    model, secs = _fit(
        _adata(mdata, adt, np.zeros(len(adt), dtype=int).astype(str)), epochs, seed, None
    )
    return {
        "latent": model.get_latent_representation(),
        "seconds_full": np.array(secs),
        "epochs_full": np.array(model.history["elbo_train"].shape[0]),
    }


def _hidden(mdata, held, epochs, seed) -> dict:
    adt = np.asarray(mdata["protein"].X, dtype=np.float32).copy()
    adt[held] = 0.0
    model, secs = _fit(
        _adata(mdata, adt, np.where(held, "heldout", "train")), epochs, seed, "batch"
    )
    _, prot = model.get_normalized_expression(
        indices=np.flatnonzero(held),
        transform_batch="train",
        n_samples=25,
        return_mean=True,
        return_numpy=True,
    )
    return {
        "protein_hat": np.asarray(prot),
        "latent_hidden": model.get_latent_representation(),
        "seconds_hidden": np.array(secs),
        "epochs_hidden": np.array(model.history["elbo_train"].shape[0]),
    }
