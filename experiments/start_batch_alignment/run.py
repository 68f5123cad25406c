"""How the spectral start removes batches: each batch's mean (the default) against its covariance as well.

    python experiments/start_batch_alignment/run.py [--seeds 0,1] [--jobs 2]

The built-in generator, 3,000 cells (each run: one seed of the generator and of the model), in four settings:
- ``balanced 1 SD`` / ``balanced 2 SD``: three batches with the same cell types in the same proportions, every
  feature of every modality shifted per batch by 1 or 2 SD (``make_synthetic(batch_effect=...)``);
- ``unbalanced 0 SD`` / ``unbalanced 2 SD``: two batches that hold the same cell types in other proportions (of 4,000
  cells, those of half the clusters kept in batch b0 and 15 % of them in b1, the other half the other way round),
  without a batch effect and with one of 2 SD.

Each is trained with the package defaults and ``batch_key``, once with ``start_batch_alignment="mean"`` and once
with ``"covariance"``. Scores of the default embedding:
- mixing: the share of other batches among each cell's 15 nearest neighbours (shared block) over the share of
  other batches among the cells of its own cluster (1 = as mixed as the clusters' composition allows, 0 = apart);
- shared R²: a kNN regressor (k = 15, 5-fold CV) from the shared block to the true shared factors;
- kNN accuracy: a kNN classifier (k = 15, 5-fold CV) of the cluster from the whole embedding (shared ⊕ privates).

Each (setting, alignment, seed) runs in its own process with one thread, ``--jobs`` at a time; finished ones are kept
in results.json, so an interrupted run resumes. Writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from child import emit, run_child  # noqa: E402

RESULTS = HERE / "results.json"
PAGE = HERE / "RESULTS.md"
SETTINGS = {
    "balanced 1 SD": (False, 1.0),
    "balanced 2 SD": (False, 2.0),
    "unbalanced 0 SD": (True, 0.0),
    "unbalanced 2 SD": (True, 2.0),
}
ALIGNMENTS = ("mean", "covariance")
K = 15


def _data(setting: str, seed: int):
    import numpy as np

    from venncell import make_synthetic

    unbalanced, effect = SETTINGS[setting]
    if not unbalanced:
        mdata, truth = make_synthetic(n_batches=3, batch_effect=effect, seed=seed)
        return mdata, truth.shared
    mdata, truth = make_synthetic(n_cells=4000, n_batches=2, batch_effect=effect, seed=seed)
    cluster = mdata.obs["cluster"].astype(str).to_numpy()
    batch = mdata.obs["batch"].astype(str).to_numpy()
    names = sorted(set(cluster))
    first = np.isin(cluster, names[: len(names) // 2])
    rng = np.random.default_rng(seed)
    keep = (first == (batch == "b0")) | (rng.random(len(batch)) < 0.15)
    return mdata[keep].copy(), truth.shared[keep]


def fit(setting: str, alignment: str, seed: int) -> dict:
    import tempfile

    import numpy as np
    import torch
    from sklearn.metrics import r2_score
    from sklearn.model_selection import cross_val_predict, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors

    from venncell import VennCell

    torch.set_num_threads(1)
    mdata, shared_truth = _data(setting, seed)
    VennCell.setup_mudata(mdata, batch_key="batch")
    model = VennCell(mdata, seed=seed, start_batch_alignment=alignment)
    with tempfile.TemporaryDirectory() as d:
        model.train(run_dir=d, progress_bar="none", num_threads=1)
    batch = mdata.obs["batch"].astype(str).to_numpy()
    cluster = mdata.obs["cluster"].astype(str).to_numpy()
    shared = model.get_latent_representation(block="shared")
    whole = model.get_latent_representation(block="all")
    _, nn = NearestNeighbors(n_neighbors=K + 1).fit(shared).kneighbors(shared)
    other = (batch[nn[:, 1:]] != batch[:, None]).mean(1)
    allowed = np.array(
        [(batch[cluster == c] != b).mean() for b, c in zip(batch, cluster)]
    )  # the other batches' share of the cell's own cluster
    pred = cross_val_predict(KNeighborsRegressor(K), shared, shared_truth, cv=5)
    return {
        "setting": setting,
        "alignment": alignment,
        "seed": seed,
        "cells": int(mdata.n_obs),
        "mixing": float(other.mean() / allowed.mean()),
        "shared_r2": float(r2_score(shared_truth, pred)),
        "knn": float(cross_val_score(KNeighborsClassifier(K), whole, cluster, cv=5).mean()),
    }


def write_page(results: list[dict]) -> None:
    import numpy as np

    lines = [
        "# Batches in the spectral start: each batch's mean, or its covariance as well",
        "",
        "Command (from the repository root): `python experiments/start_batch_alignment/run.py` (this page is "
        "written by it; what it measures is in its docstring). The package defaults with `batch_key`, "
        "`start_batch_alignment` as in the row. Mean ± sd over seeds.",
        "",
        "| setting | start_batch_alignment | mixing | shared R² | kNN accuracy | cells | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        for alignment in ALIGNMENTS:
            rows = [r for r in results if r["setting"] == setting and r["alignment"] == alignment]
            if not rows:
                continue
            cells = [
                f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"
                for k in ("mixing", "shared_r2", "knn")
            ]
            sizes = sorted({r["cells"] for r in rows})
            size = f"{sizes[0]:,}" + (f"–{sizes[-1]:,}" if len(sizes) > 1 else "")
            lines.append(
                f"| {setting} | `{alignment}` | {' | '.join(cells)} | {size} | {len(rows)} |"
            )
    lines.append("")
    old = PAGE.read_text() if PAGE.exists() else ""
    marker = "<!-- Written by hand below this line"
    kept = old[old.index(marker) :] if marker in old else ""
    PAGE.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def _job(args: tuple[str, str, int]) -> dict:
    setting, alignment, seed = args
    return run_child([__file__, "--child", setting, alignment, str(seed)], threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--page-only", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        emit(fit(args.child[0], args.child[1], int(args.child[2])))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    done = {(r["setting"], r["alignment"], r["seed"]) for r in results}
    todo = [
        (setting, alignment, int(s))
        for s in args.seeds.split(",")
        for setting in SETTINGS
        for alignment in ALIGNMENTS
        if (setting, alignment, int(s)) not in done and not args.page_only
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(_job, todo):
            results.append(record)
            RESULTS.write_text(json.dumps(results, indent=1))
            print(record, flush=True)
    write_page(results)


if __name__ == "__main__":
    main()
