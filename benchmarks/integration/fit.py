"""Fit one method on one dataset with one seed, in this process, and save what it produced.

Usage (run.py starts it once per job): python benchmarks/integration/fit.py DATASET METHOD SEED OUT.npz [--score-only]
Writes OUT.npz (embedding and anything else the method returns), OUT.json (wall time of the whole fit, from
reading the data to the embedding in hand, and the process's peak resident memory at that point) and then, after
scoring the embedding, OUT.scores.json.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main(dataset: str, method: str, seed: int, out: Path, score_only: bool = False) -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if not score_only:
        run_fit(dataset, method, seed, out)
    from datasets import DATASETS

    scores = score(dataset, method, seed, DATASETS[dataset].load(), out)
    tmp = out.with_name(f".{out.stem}.scores.json")
    tmp.write_text(json.dumps(scores, indent=1))
    os.replace(tmp, out.with_suffix(".scores.json"))


def run_fit(dataset: str, method: str, seed: int, out: Path) -> None:
    import torch
    from datasets import DATASETS
    from methods import fit

    from venncell import validation_split

    ds = DATASETS[dataset]
    t0 = time.perf_counter()
    mdata = ds.load()
    held = ~validation_split(mdata.n_obs, 0.1, seed)
    with tempfile.TemporaryDirectory(prefix=f"{dataset}_{method}_") as run_dir:
        res = fit(method, mdata, ds, seed, held, run_dir)
    seconds = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    arrays = {k: np.asarray(v) for k, v in res.items() if not np.isscalar(v)}
    arrays["held"] = held
    tmp = out.with_name(f".{out.name}")
    np.savez_compressed(tmp, **arrays)
    meta = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "seconds": seconds,
        "peak_rss_gb": peak_gb,
        "threads": torch.get_num_threads(),
        **{k: v for k, v in res.items() if np.isscalar(v)},
    }
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def score(dataset: str, method: str, seed: int, mdata, path: Path) -> dict:
    """Every metric of the fit saved at ``path`` (see metrics.py); the pre-integration embedding that scib's PCR
    comparison needs is the concatenated PCA/LSI baseline."""
    from datasets import DATASETS
    from methods import fit_concat_pca, knn_protein_baseline
    from metrics import knn_accuracy, label_scores, protein_prediction, venn_recovery

    ds = DATASETS[dataset]
    pre = fit_concat_pca(mdata, ds, 0, None, None)["embedding"]
    fitted = np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    z = fitted["embedding"]
    out = {
        "seconds": meta["seconds"],
        "peak_rss_gb": meta["peak_rss_gb"],
        "dim": int(z.shape[1]),
        "epochs": meta.get("epochs"),
        "labels": {},
    }
    batch = mdata.obs[ds.batch_key].astype(str).to_numpy() if ds.batch_key else None
    for label in ds.labels:
        out["labels"][label] = label_scores({method: z}, mdata.obs[label], batch, pre)[method]
    if batch is not None:
        out["batch_knn"] = knn_accuracy(z, batch)
    held = fitted["held"]
    if ds.kind == "cite":
        observed = mdata["protein"].X[held]
        observed = np.asarray(observed.toarray() if hasattr(observed, "toarray") else observed)
        if "protein_hat" in fitted.files:
            out["protein"] = protein_prediction(observed, fitted["protein_hat"])
        elif method == "pca:rna":
            out["protein"] = protein_prediction(
                observed, knn_protein_baseline(mdata, seed, held), predicted_is_clr=True
            )
    if dataset == "synthetic" and "shared" in fitted.files:
        blocks = {"shared": fitted["shared"]} | {
            k: fitted[k] for k in fitted.files if k.startswith("private:")
        }
        out["recovery"] = venn_recovery(blocks, mdata)
    if (
        "shared" in fitted.files
    ):  # per block, headline label (where the cell-type information sits)
        y = mdata.obs[ds.labels[0]]
        ok = y.notna().to_numpy()
        out["blocks_knn"] = {
            k: knn_accuracy(fitted[k][ok], y[ok].astype(str).to_numpy())
            for k in fitted.files
            if k == "shared" or k.startswith(("private:", "shared_from:"))
        }
    return out


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        Path(sys.argv[4]),
        "--score-only" in sys.argv[5:],
    )
