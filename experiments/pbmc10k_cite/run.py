"""PBMC 10k CITE-seq (RNA + 14 ADT): label kNN accuracy per latent block and RNA -> ADT prediction.

Usage: python experiments/pbmc10k_cite/run.py [--stage1-epochs N] [--stage2-epochs N] [--out DIR]
Data: ../shared/datasets/pbmc10k_cite_totalvi (see its SOURCE.md); never copied into the repository.
Writes RESULTS.md and results.json next to this script.

Held-out cells are the model's own validation cells: their data never reached the decoders or encoders, so
RNA -> ADT on them is a real held-out prediction. The baseline is kNN regression (k=15) in the PCA space (50 PCs)
of log-normalised RNA, fitted on the training cells.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from venncell import VennCell

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "datasets" / "pbmc10k_cite_totalvi"


def load() -> tuple[md.MuData, pd.DataFrame]:
    rna = pd.read_csv(DATA / "pbmc10k_harmo_rna.csv.gz", index_col=0).T
    adt = pd.read_csv(DATA / "pbmc10k_harmo_pro.csv.gz", index_col=0).T
    labels = pd.read_csv(DATA / "tagtango_labels.csv", index_col=0).reindex(rna.index)

    def adata(df, sparse):
        x = df.values.astype(np.float32)
        return ad.AnnData(sp.csr_matrix(x) if sparse else x, obs=pd.DataFrame(index=df.index.astype(str)),
                          var=pd.DataFrame(index=[c.replace("_TotalSeqB", "") for c in df.columns]))

    mdata = md.MuData({"rna": adata(rna, True), "protein": adata(adt, False)})
    return mdata, labels


def knn_accuracy(z: np.ndarray, y: pd.Series) -> float:
    ok = y.notna().to_numpy()
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(15), z[ok], y[ok].astype(str), cv=cv).mean())


def pearson_per_feature(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stage1-epochs", type=int, default=100)
    p.add_argument("--stage2-epochs", type=int, default=40)
    p.add_argument("--out", default=str(HERE / "run"))
    args = p.parse_args()
    mdata, labels = load()
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, shared_dim=16, private_dim=8, seed=0)
    t0 = time.perf_counter()
    model.train(stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs, run_dir=args.out,
                progress_bar="none")
    train_s = time.perf_counter() - t0

    blocks = {"shared": model.get_latent_representation(), "private:rna": model.get_latent_representation(block="private:rna"),
              "private:protein": model.get_latent_representation(block="private:protein")}
    blocks["shared ⊕ privates"] = np.hstack(list(blocks.values()))
    acc = {b: {lab: knn_accuracy(z, labels[lab]) for lab in ("Main.RNA", "Fine.RNA")} for b, z in blocks.items()}

    held = ~model.is_train
    adt = mdata["protein"].X
    adt_prop = adt / adt.sum(1, keepdims=True)
    pred = model.predict_modality(source=["rna"], target="protein")
    r_venn = pearson_per_feature(np.log1p(pred[held] * 1e4), np.log1p(adt_prop[held] * 1e4))
    x = mdata["rna"].X
    lognorm = np.log1p(np.asarray(x.multiply(1e4 / x.sum(1)).todense()))
    pcs = PCA(50, random_state=0).fit(lognorm[~held]).transform(lognorm)
    knn = KNeighborsRegressor(15).fit(pcs[~held], np.log1p(adt_prop[~held] * 1e4))
    r_knn = pearson_per_feature(knn.predict(pcs[held]), np.log1p(adt_prop[held] * 1e4))
    proteins = list(mdata["protein"].var_names)

    res = {"knn_accuracy": acc, "pearson_venncell": dict(zip(proteins, r_venn.tolist())),
           "pearson_knn_rna_pca": dict(zip(proteins, r_knn.tolist())), "n_heldout": int(held.sum()),
           "train_seconds": train_s, "epochs": [args.stage1_epochs, args.stage2_epochs]}
    (HERE / "results.json").write_text(json.dumps(res, indent=1))
    lines = [f"# PBMC 10k CITE-seq (RNA 4,000 HVG + 14 ADT, 6,855 cells)\n",
             f"Command: `python experiments/pbmc10k_cite/run.py --stage1-epochs {args.stage1_epochs} "
             f"--stage2-epochs {args.stage2_epochs}` (2 CPU cores, training {train_s / 60:.1f} min). "
             "totalVI was not run in this environment (see the note at the end).\n",
             "## kNN label accuracy (k = 15, 5-fold CV)\n", "| latent block | Main.RNA | Fine.RNA |", "|---|---|---|"]
    lines += [f"| {b} | {a['Main.RNA']:.3f} | {a['Fine.RNA']:.3f} |" for b, a in acc.items()]
    lines += ["", f"## RNA → ADT on {int(held.sum())} held-out cells (Pearson of log-normalised values)\n",
              "| protein | VennCell (shared from RNA → shared-only decoder) | kNN regression, RNA PCA |", "|---|---|---|"]
    lines += [f"| {pname} | {a:.3f} | {b:.3f} |" for pname, a, b in zip(proteins, r_venn, r_knn)]
    lines += [f"| **mean** | **{r_venn.mean():.3f}** | **{r_knn.mean():.3f}** |", "",
              "totalVI (scvi-tools) is not installed in this project's environment, so the side-by-side totalVI "
              "column the issue asks for is still missing; the issue's reference numbers for totalVI are about "
              "0.94 (Main.RNA) / 0.86 (Fine.RNA)."]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
