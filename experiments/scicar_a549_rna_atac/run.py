"""sci-CAR A549 (RNA + ATAC, 1,874 cells, dexamethasone 0 / 1 / 3 h): which latent block knows the time point?

Usage (from the repository root): python experiments/scicar_a549_rna_atac/run.py [--build-only] [--skip-train]
1. builds a MuData from ../shared/datasets/scicar_a549_rna_atac (see its SOURCE.md: the authors' 2,613
   differential genes and 815 differential ATAC features, raw counts) into the gitignored
   experiments/scicar_a549_rna_atac/data/;
2. trains with `venncell-train experiment=scicar_a549` (conf/experiment/scicar_a549.yaml);
3. scores each block of the stage-2 encoder latents (all cells, both modalities) — and of the stage-1 latents —
   by kNN accuracy (k = 15, 5-fold stratified CV) for the time label, next to PCA of RNA, LSI of ATAC and both.
Also scores the shared latent embedded from one modality alone: if it predicts time as well from ATAC as from
RNA, the time signal it holds is common to both modalities rather than copied from one.
Writes RESULTS.md and results.json next to this script (the discussion at the end of RESULTS.md is written by hand
and kept when the script reruns: `baselines.write_results_md`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "scicar_a549_rna_atac"
OUT = HERE / "data" / "scicar_a549.h5mu"
RUN = HERE / "runs" / "venncell"

sys.path.insert(0, str(ROOT / "experiments"))
from baselines import epochs_of, knn_accuracy, lsi_atac, pca_rna, unit, write_results_md  # noqa: E402


def build() -> md.MuData:
    cells = [line.strip() for line in open(DATA / "shared_cells.txt")]
    rna = sp.load_npz(DATA / "diff_expr_shared_cells.npz").T.tocsr().astype(np.float32)
    atac = sp.load_npz(DATA / "diff_atac_shared_cells.npz").T.tocsr().astype(np.float32)
    meta = pd.read_csv(DATA / "GSM3271040_RNA_sciCAR_A549_cell.txt", index_col=0).loc[cells]
    obs = pd.DataFrame(index=cells)
    # the ATAC features carry no names in the source
    mods = {
        "rna": ad.AnnData(
            rna.copy(),
            obs=obs.copy(),
            layers={"counts": rna},
            var=pd.DataFrame(index=[f"gene_{i:04d}" for i in range(rna.shape[1])]),
        ),
        "atac": ad.AnnData(
            atac.copy(),
            obs=obs.copy(),
            layers={"counts": atac},
            var=pd.DataFrame(index=[f"atac_{i:03d}" for i in range(atac.shape[1])]),
        ),
    }
    mdata = md.MuData(mods)
    mdata.obs["treatment_time"] = (
        meta["treatment_time"].astype(int).astype(str).add(" h").to_numpy()
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    mdata.write(str(OUT))
    return mdata


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--build-only",
        action="store_true",
        help="only write the MuData the experiment config reads",
    )
    p.add_argument(
        "--skip-train", action="store_true", help="score the existing run in runs/venncell"
    )
    p.add_argument("--overrides", nargs="*", default=[], help="extra venncell-train overrides")
    args = p.parse_args()
    torch.set_num_threads(1)
    mdata = build()
    print(f"wrote {OUT}: {mdata}")
    if args.build_only:
        return
    cmd = [
        "venncell-train",
        "experiment=scicar_a549",
        f"hydra.run.dir={RUN}",
        "logger=none",
        "trainer.progress_bar=none",
        *args.overrides,
    ]
    seconds = None
    if (
        args.skip_train and (HERE / "results.json").exists()
    ):  # keep the wall time measured when it trained
        seconds = json.loads((HERE / "results.json").read_text()).get("train_seconds")
    if not args.skip_train:
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(
            cmd,
            cwd=ROOT,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )
        seconds = time.perf_counter() - t0

    y = mdata.obs["treatment_time"].to_numpy()
    out = md.read_h5mu(str(RUN / "venn.h5mu"))
    from venncell import VennCell

    model = VennCell.load(RUN / "model", mdata=out)
    rows = {}
    # runs written before 2026-12-06 have no *_encoder keys: their X_venn_* were the encoders' latents
    enc = "_encoder" if "X_venn_shared_encoder" in out.obsm else ""
    for source, suffix in (("encoder", enc), ("stage 1", "_stage1")):
        blocks = {
            "shared": out.obsm[f"X_venn_shared{suffix}"],
            "private RNA": out.obsm[f"X_venn_private_rna{suffix}"],
            "private ATAC": out.obsm[f"X_venn_private_atac{suffix}"],
        }
        blocks["shared ⊕ privates"] = np.hstack(list(blocks.values()))
        rows[source] = {b: knn_accuracy(z, y) for b, z in blocks.items()}
    rows["encoder"]["shared, embedded from RNA only"] = knn_accuracy(
        model.get_latent_representation(out, modalities=["rna"]), y
    )
    rows["encoder"]["shared, embedded from ATAC only"] = knn_accuracy(
        model.get_latent_representation(out, modalities=["atac"]), y
    )
    pcs, lsi = pca_rna(mdata["rna"].layers["counts"]), lsi_atac(mdata["atac"].layers["counts"])
    base = {
        "PCA of RNA (30 PCs)": knn_accuracy(pcs, y),
        "LSI of ATAC (30 dims)": knn_accuracy(lsi, y),
        "both concatenated": knn_accuracy(np.hstack([unit(pcs), unit(lsi)]), y),
    }
    chance = float(pd.Series(y).value_counts(normalize=True).max())
    model_repr = json.loads((RUN / "metrics.json").read_text())["model"]
    res = {
        "knn_accuracy": rows,
        "baseline": base,
        "majority_class": chance,
        "train_seconds": seconds,
        "model": model_repr,
        "overrides": args.overrides,
    }
    (HERE / "results.json").write_text(json.dumps(res, indent=1))

    command = "python experiments/scicar_a549_rna_atac/run.py" + (
        " --overrides " + " ".join(args.overrides) if args.overrides else ""
    )
    counts = pd.Series(y).value_counts().sort_index().to_dict()
    lines = [
        "# sci-CAR A549 (RNA + ATAC), dexamethasone time course\n",
        f"Command: `{command}` (from the repository root). It builds the MuData (1,874 cells; the authors' "
        "2,613 differential genes and 815 differential ATAC features, raw counts; no further feature "
        "selection) into the gitignored `experiments/scicar_a549_rna_atac/data/` and runs "
        f"`{' '.join(['venncell-train experiment=scicar_a549', *args.overrides])}`"
        + (
            f"; training {seconds / 60:.1f} min (OMP_NUM_THREADS=1, 2 shared cores)"
            if seconds
            else ""
        )
        + ".\n",
        f"Model: `{model_repr}`; {epochs_of(RUN)}.\n",
        f"Label: `treatment_time` {counts}; majority-class accuracy {chance:.3f}. kNN classifier (k = 15), "
        "5-fold stratified CV. Encoder = stage-2 encoder latents from both modalities (what new cells get); "
        "stage 1 = the optimised per-cell latents.\n",
        "| latent block | kNN accuracy, encoder latents | kNN accuracy, stage-1 latents |",
        "|---|---|---|",
    ]
    for b, acc in rows["encoder"].items():
        s1 = rows["stage 1"].get(b)
        lines.append(f"| {b} | {acc:.3f} | {'' if s1 is None else f'{s1:.3f}'} |")
    lines += ["", "| baseline | kNN accuracy |", "|---|---|"] + [
        f"| {b} | {a:.3f} |" for b, a in base.items()
    ]
    write_results_md(HERE / "RESULTS.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
