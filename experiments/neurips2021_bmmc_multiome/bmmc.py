"""NeurIPS 2021 BMMC starter subsets (two batches): does conditioning the decoders on batch remove batch
information from the latents while keeping cell type?

Shared by experiments/neurips2021_bmmc_multiome/run.py (RNA + ATAC) and experiments/neurips2021_bmmc_cite/run.py
(RNA + ADT). Per dataset it
1. builds a MuData from ../shared/datasets/neurips2021_bmmc_<x>_starter (see its SOURCE.md) into the gitignored
   experiments/neurips2021_bmmc_<x>/data/ (the data are never committed);
2. trains twice through the CLI, `venncell-train experiment=bmmc_<x>` (batch_key=batch: decoders see a batch
   one-hot) and the same with `data.batch_key=null`;
3. scores each latent block of the stage-2 encoder latents (all cells, every modality) and a PCA / LSI baseline:
   cell-type kNN accuracy (k=15, 5-fold; higher = better), batch kNN accuracy (lower = better mixed) and the
   scib-style batch ASW (silhouette of batch within each cell type, 1 - |s|; higher = better mixed).

The two batches hold different cell-type mixes (e.g. Reticulocyte / Erythroblast mostly in s1d1), so even a
perfectly integrated embedding predicts batch above 50 % from cell type alone; the table gives that level
("batch from cell type only") as the floor to compare with.
"""

from __future__ import annotations

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
import scanpy as sc
from sklearn.metrics import silhouette_samples
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"
SEED = 0

sys.path.insert(0, str(ROOT / "experiments"))
from baselines import epochs_of, knn_accuracy, lsi_atac, pca_rna, unit, write_results_md  # noqa: E402


def build(name: str, mod2: str, kind2: str, out: Path) -> md.MuData:
    """MuData with raw counts in layers['counts'], obs 'cell_type' and 'batch' at the MuData level."""
    src = DATASETS / f"neurips2021_bmmc_{name}_starter" / f"openproblems_bmmc_{name}_starter"
    rna = ad.read_h5ad(f"{src}.output_rna.h5ad")
    other = ad.read_h5ad(f"{src}.output_mod2.h5ad")
    if not (rna.obs_names == other.obs_names).all():
        raise RuntimeError("RNA and second-modality cells differ; see the dataset's SOURCE.md")
    mods = {}
    for key, a in (("rna", rna), (mod2, other)):
        counts = a.layers["counts"].astype(np.float32)
        mods[key] = ad.AnnData(
            X=counts.copy(),
            layers={"counts": counts},
            obs=pd.DataFrame(index=a.obs_names),
            var=pd.DataFrame(index=a.var_names),
        )
    mdata = md.MuData(mods)
    mdata.obs["cell_type"] = rna.obs["cell_type"].astype(str).to_numpy()
    mdata.obs["batch"] = rna.obs["batch"].astype(str).to_numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    mdata.write(str(out))
    return mdata


# ------------------------------------------------------------------ metrics
def batch_asw(z: np.ndarray, batch: np.ndarray, cell_type: np.ndarray) -> float:
    """scib's batch ASW: per cell type, 1 - |silhouette of batch labels|, averaged over cells then types."""
    scores = []
    for ct in np.unique(cell_type):
        sel = cell_type == ct
        b = batch[sel]
        if len(np.unique(b)) < 2 or sel.sum() < 3:
            continue  # a type seen in one batch only carries no mixing information
        scores.append(np.mean(1 - np.abs(silhouette_samples(z[sel], b))))
    return float(np.mean(scores))


def batch_from_cell_type(batch: np.ndarray, cell_type: np.ndarray) -> float:
    """Cross-validated accuracy of guessing batch from cell type alone (majority batch of the type)."""
    cv = StratifiedKFold(5, shuffle=True, random_state=SEED)
    acc = []
    for tr, te in cv.split(cell_type, batch):
        tab = pd.crosstab(cell_type[tr], batch[tr])
        overall = pd.Series(batch[tr]).mode()[0]
        guess = [tab.loc[c].idxmax() if c in tab.index else overall for c in cell_type[te]]
        acc.append(np.mean(np.asarray(guess) == batch[te]))
    return float(np.mean(acc))


def scores(z: np.ndarray, cell_type: np.ndarray, batch: np.ndarray) -> dict:
    return {
        "cell_type_acc": knn_accuracy(z, cell_type),
        "batch_acc": knn_accuracy(z, batch),
        "batch_asw": batch_asw(z, batch, cell_type),
    }


# ------------------------------------------------------------------ baselines
def pca_adt(a: ad.AnnData, n: int = 30) -> np.ndarray:
    """CLR per cell, then PCA."""
    x = np.asarray(
        a.layers["counts"].todense()
        if hasattr(a.layers["counts"], "todense")
        else a.layers["counts"]
    )
    clr = np.log1p(x) - np.log1p(x).mean(1, keepdims=True)
    b = ad.AnnData(clr.astype(np.float32))
    sc.pp.pca(b, n_comps=min(n, x.shape[1] - 1), random_state=SEED)
    return b.obsm["X_pca"]


def train(exp: str, run_dir: Path, extra: list[str]) -> float:
    cmd = [
        "venncell-train",
        f"experiment={exp}",
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "trainer.progress_bar=none",
        *extra,
    ]
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def main(name: str, mod2: str, kind2: str, title: str) -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument(
        "--build-only",
        action="store_true",
        help="only write the MuData the experiment config reads",
    )
    p.add_argument(
        "--skip-train", action="store_true", help="score existing runs (runs/batch, runs/no_batch)"
    )
    p.add_argument(
        "--stage1-epochs", type=int, default=None, help="default: conf/experiment/bmmc_<x>.yaml"
    )
    p.add_argument("--stage2-epochs", type=int, default=None)
    args = p.parse_args()
    here = ROOT / "experiments" / f"neurips2021_bmmc_{name}"
    exp = f"bmmc_{name}"
    data_path = here / "data" / f"{exp}.h5mu"
    mdata = build(name, mod2, kind2, data_path)
    print(f"wrote {data_path}: {mdata}")
    if args.build_only:
        return
    epochs = [f"trainer.stage1_epochs={args.stage1_epochs}"] if args.stage1_epochs else []
    epochs += [f"trainer.stage2_epochs={args.stage2_epochs}"] if args.stage2_epochs else []
    runs = {
        "batch_key=batch": ("runs/batch", []),
        "no batch_key": ("runs/no_batch", ["data.batch_key=null"]),
    }
    seconds = {}
    if (
        args.skip_train and (here / "results.json").exists()
    ):  # keep the wall times measured when it trained
        seconds = json.loads((here / "results.json").read_text()).get("train_seconds", {})
    for label, (sub, extra) in runs.items():
        if not args.skip_train:
            seconds[label] = train(exp, here / sub, extra + epochs)
        elif label not in seconds:  # trained by hand: the run's own stage-1 + stage-2 wall time
            wall = json.loads((here / sub / "metrics.json").read_text())["history"]["wall_time_s"]
            seconds[label] = float(sum(wall.values()))

    ct = mdata.obs["cell_type"].to_numpy()
    batch = mdata.obs["batch"].to_numpy()
    table: dict[str, dict[str, dict]] = {}
    for label, (sub, _) in runs.items():
        out = md.read_h5mu(str(here / sub / "venn.h5mu"))
        # runs written before 2026-12-06 have no *_encoder keys: their X_venn_* were the encoders' latents
        enc = "_encoder" if "X_venn_shared_encoder" in out.obsm else ""
        blocks = {
            "shared": out.obsm[f"X_venn_shared{enc}"],
            "private rna": out.obsm[f"X_venn_private_rna{enc}"],
            f"private {mod2}": out.obsm[f"X_venn_private_{mod2}{enc}"],
        }
        blocks["shared ⊕ privates"] = np.hstack(list(blocks.values()))
        table[label] = {b: scores(z, ct, batch) for b, z in blocks.items()}
    other = lsi_atac(mdata[mod2].layers["counts"]) if kind2 == "atac" else pca_adt(mdata[mod2])
    rna_pcs = pca_rna(mdata["rna"].layers["counts"])
    base_name = "LSI" if kind2 == "atac" else "CLR + PCA"
    baseline = {
        "PCA of RNA (30 PCs)": rna_pcs,
        f"{base_name} of {mod2.upper()} (30 dims)": other,
        "both concatenated": np.hstack([unit(rna_pcs), unit(other)]),
    }
    table["baseline (no batch correction)"] = {
        b: scores(z, ct, batch) for b, z in baseline.items()
    }
    floor = batch_from_cell_type(batch, ct)

    res = {
        "table": table,
        "batch_from_cell_type": floor,
        "train_seconds": seconds,
        "n_cells": int(mdata.n_obs),
        "n_cell_types": int(len(np.unique(ct))),
        "batch_counts": pd.Series(batch).value_counts().to_dict(),
        "models": {
            lab: json.loads((here / sub / "metrics.json").read_text())["model"]
            for lab, (sub, _) in runs.items()
        },
    }
    (here / "results.json").write_text(json.dumps(res, indent=1))

    cmd = f"python experiments/neurips2021_bmmc_{name}/run.py" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in (("stage1_epochs", args.stage1_epochs), ("stage2_epochs", args.stage2_epochs))
        if v
    )
    train_min = sum(seconds.values()) / 60 if seconds else float("nan")
    lines = [
        f"# {title}\n",
        f"Command: `{cmd}` (from the repository root; {mdata.n_obs} cells, "
        f"{len(np.unique(ct))} expert cell types, batches {res['batch_counts']}). It builds the MuData into the "
        f"gitignored `experiments/neurips2021_bmmc_{name}/data/` and runs `venncell-train experiment={exp}` "
        f"(decoders conditioned on batch) and `venncell-train experiment={exp} data.batch_key=null`; "
        f"training took {train_min:.1f} min for both runs (OMP_NUM_THREADS=1, 2 shared cores).\n",
        f"Model: `{res['models']['batch_key=batch']}`; {epochs_of(here / 'runs' / 'batch')}.\n",
        "Latents: stage-2 encoder latents of all cells from every modality (`obsm['X_venn_*']` of the run's "
        "`venn.h5mu`). Cell-type and batch accuracy: kNN classifier (k = 15), 5-fold stratified CV. "
        "Batch ASW: scib-style silhouette of batch labels within each cell type, 1 − |s| (1 = fully mixed). "
        f"**Batch from cell type only** (majority batch of the cell type, 5-fold CV): **{floor:.3f}** — a "
        "latent that keeps cell type but holds no other batch information would score about this batch "
        "accuracy, not 0.5.\n",
        "| model | latent block | cell-type acc ↑ | batch acc ↓ | batch ASW ↑ |",
        "|---|---|---|---|---|",
    ]
    for label, rows in table.items():
        for b, s in rows.items():
            lines.append(
                f"| {label} | {b} | {s['cell_type_acc']:.3f} | {s['batch_acc']:.3f} | {s['batch_asw']:.3f} |"
            )
    write_results_md(here / "RESULTS.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(
        "run experiments/neurips2021_bmmc_multiome/run.py or experiments/neurips2021_bmmc_cite/run.py"
    )
