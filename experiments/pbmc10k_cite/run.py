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
import sys
import time
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsRegressor
from totalvi import run_totalvi  # noqa: E402  (beside this script)

from venncell import VennCell
from venncell.module.config import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import baselines  # noqa: E402  (experiments/baselines.py: the kNN protocol every experiment uses)

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "datasets" / "pbmc10k_cite_totalvi"
LABELS = ("Main.RNA", "Fine.RNA")


def load() -> tuple[md.MuData, pd.DataFrame]:
    rna = pd.read_csv(DATA / "pbmc10k_harmo_rna.csv.gz", index_col=0).T
    adt = pd.read_csv(DATA / "pbmc10k_harmo_pro.csv.gz", index_col=0).T
    labels = pd.read_csv(DATA / "tagtango_labels.csv", index_col=0).reindex(rna.index)

    def adata(df, sparse):
        x = df.values.astype(np.float32)
        return ad.AnnData(
            sp.csr_matrix(x) if sparse else x,
            obs=pd.DataFrame(index=df.index.astype(str)),
            var=pd.DataFrame(index=[c.replace("_TotalSeqB", "") for c in df.columns]),
        )

    mdata = md.MuData({"rna": adata(rna, True), "protein": adata(adt, False)})
    return mdata, labels


def knn_accuracy(z: np.ndarray, y: pd.Series) -> float:
    """``baselines.knn_accuracy`` over the labelled cells."""
    ok = y.notna().to_numpy()
    return baselines.knn_accuracy(z[ok], y[ok].astype(str).to_numpy())


def pearson_per_feature(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


# RNA's reconstruction weighted 300 times (ModalitySpec.weight): about the genes : proteins ratio (4,000 : 14), so the
# two NLLs add up as a joint likelihood over all features, and the protein term, leakage control and prior weigh ~300
# times less against RNA than by default (latent_drift.py: by default stage 1 bends the latents towards the 14
# proteins while the RNA fit gets worse)
RNA_WEIGHT300 = dict(
    shared_dim=16, private_dim=8, modalities=dict(rna=dict(kind="rna", weight=300.0))
)
# stage 1 as an ELBO: variational latent tables (a Gaussian per cell, KL to N(0, I)) and each modality's NLL summed
# over its features, all divided by the smallest modality's width (14): RNA weight 4,000 / 14, KL weight 1 / 14. The
# per-cell variances (no longer a fixed latent noise) let stage 1 add cell-type structure.
ELBO = dict(
    shared_dim=16,
    private_dim=8,
    latent_posterior="variational",
    kl_weight=1 / 14,
    modalities=dict(rna=dict(kind="rna", weight=4000 / 14)),
    train=dict(lr_latent=0.03),
)

# VennCell settings tried (each is a row in RESULTS.md); model keywords go to VennCell(...), `train` (TrainConfig
# fields, here the stage-1 latent learning rate; default 1e-2) to model.train.
CONFIGS = {
    "package": dict(),  # the package defaults
    "default": dict(shared_dim=16, private_dim=8),
    "lr5e-2": dict(shared_dim=16, private_dim=8, train=dict(lr_latent=0.05)),
    "no_hsic_lr5e-2": dict(
        shared_dim=16, private_dim=8, independence_weight=0.0, train=dict(lr_latent=0.05)
    ),
    "lr3e-3": dict(shared_dim=16, private_dim=8, train=dict(lr_latent=0.003)),
    "noise0.2": dict(shared_dim=16, private_dim=8, latent_noise=0.2),
    "wide": dict(shared_dim=32, private_dim=8, hidden=256),
    "shared24": dict(shared_dim=24, private_dim=8),
    "private16": dict(shared_dim=16, private_dim=16),
    # APOLLO's objective (no leakage control; the shared-only decoders shape the shared latent), VennCell's start
    "apollo": dict(
        shared_dim=16,
        private_dim=8,
        independence_weight=0.0,
        consistency_weight=0.0,
        shared_only_detach=False,
    ),
    # stage-2 encoders also reconstruct the data through the frozen decoders (amortised, autoencoder-like latents)
    "stage2_recon": dict(shared_dim=16, private_dim=8, stage2_recon_weight=1.0),
    # 50x the default L2 pull of the latents towards 0 (a stronger prior on cells with little signal)
    "l2_0.05": dict(shared_dim=16, private_dim=8, latent_l2=0.05),
    # the `model=fast` preset (cheaper stage-1 steps: leakage control on part of the batches and cells)
    "fast": dict(shared_dim=16, private_dim=8, **PRESETS["fast"]),
    "rna_weight300": RNA_WEIGHT300,
    "rna_weight300_lr3e-2": {**RNA_WEIGHT300, "train": dict(lr_latent=0.03)},
    "variational": ELBO,
    # the same with dropout 0.5 in the encoders: the RNA encoder (4,000 genes in) otherwise memorises its training
    # cells' latents (RESULTS.md, encoder R^2 table)
    "variational_encdrop0.5": {**ELBO, "encoder_dropout": 0.5},
    # ... and one stage-2 encoder over both modalities for the cells that have both (joint_encoder), instead of the
    # average of the RNA and protein encoders' shared estimates
    "variational_joint": {**ELBO, "encoder_dropout": 0.5, "joint_encoder": True},
}
MODALITIES = {"rna": "rna", "protein": "protein"}


def train_or_load(
    mdata, name: str, s1: int, s2: int, out: Path, seed: int = 0
) -> tuple[VennCell, float]:
    """Trains (or reloads the model a previous run of the same settings and seed saved) so that analyses can be rerun.

    The training wall time is kept in ``train_seconds.txt`` beside the checkpoints, so a model resumed from the
    finished checkpoints of an identical earlier run still reports how long training took."""
    folder = out / (f"{name}_e{s1}_{s2}" + (f"_s{seed}" if seed else ""))
    seconds = folder / "train_seconds.txt"
    if (folder / "model" / "venncell.json").exists():
        return VennCell.load(folder / "model", mdata), float(
            seconds.read_text()
        ) if seconds.exists() else float("nan")
    kw = dict(CONFIGS[name])
    train_kw = kw.pop("train", {})
    VennCell.setup_mudata(mdata, modalities={**MODALITIES, **kw.pop("modalities", {})})
    model = VennCell(mdata, seed=seed, **kw)
    t0 = time.perf_counter()
    # resume=True: a killed run continues from its last Lightning checkpoint instead of starting over
    model.train(
        stage1_epochs=s1,
        stage2_epochs=s2,
        run_dir=folder,
        progress_bar="none",
        resume=True,
        **train_kw,
    )
    if not seconds.exists():
        seconds.write_text(f"{time.perf_counter() - t0:.1f}")
    model.history["train_seconds"] = float(seconds.read_text())
    model.save(folder / "model")
    return model, model.history["train_seconds"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stage1-epochs", type=int, default=100)
    p.add_argument("--stage2-epochs", type=int, default=40)
    p.add_argument("--config", default="default", choices=sorted(CONFIGS))
    p.add_argument("--totalvi-epochs", type=int, default=100)
    p.add_argument(
        "--refine-epochs", type=int, default=20, help="0: skip the refinement table for this row"
    )
    p.add_argument(
        "--main",
        action="store_true",
        help="this row is the main one (its kNN, RNA -> ADT and refinement "
        "tables are shown; its command heads RESULTS.md)",
    )
    p.add_argument(
        "--totalvi-fits",
        default="full,hidden",
        help="'hidden' alone: one totalVI fit serves both the latent and the RNA -> ADT prediction",
    )
    p.add_argument("--out", default=str(HERE / "run"))
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md from results.json, train nothing",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.report_only:
        res = json.loads((HERE / "results.json").read_text())
        print(write_results(res, list(res["pearson_knn_rna_pca"])))
        return
    out = Path(args.out)
    mdata, labels = load()
    VennCell.setup_mudata(mdata, modalities=MODALITIES)
    model, train_s = train_or_load(mdata, args.config, args.stage1_epochs, args.stage2_epochs, out)
    held = ~model.is_train

    blocks = {
        "shared": model.get_latent_representation(source="encoder"),
        "private:rna": model.get_latent_representation(block="private:rna", source="encoder"),
        "private:protein": model.get_latent_representation(
            block="private:protein", source="encoder"
        ),
    }
    blocks["shared ⊕ privates"] = np.hstack(list(blocks.values()))
    acc = {b: {lab: knn_accuracy(z, labels[lab]) for lab in LABELS} for b, z in blocks.items()}
    # the shared block as the RNA encoder alone gives it (the default averages both encoders' estimates)
    shared_from = {m: model.get_latent_representation(modalities=[m]) for m in MODALITIES}
    from_rna = np.hstack([shared_from["rna"], blocks["private:rna"], blocks["private:protein"]])
    acc["shared from the RNA encoder only ⊕ privates"] = {
        lab: knn_accuracy(from_rna, labels[lab]) for lab in LABELS
    }
    # the stage-1 (optimised) latents, for comparison: what the encoders were trained to reproduce
    stage1 = {
        b: model.get_latent_representation(block=b, source="stage1") for b in list(blocks)[:3]
    }
    st1 = np.hstack(list(stage1.values()))
    acc["shared ⊕ privates, stage-1 latents"] = {
        lab: knn_accuracy(st1, labels[lab]) for lab in LABELS
    }
    # where stage 1 starts: the same model untrained (spectral initialisation of the tables)
    start = VennCell(
        mdata,
        seed=0,
        **{k: v for k, v in CONFIGS[args.config].items() if k not in ("train", "modalities")},
    ).module
    z0 = np.hstack(
        [t.weight.detach().numpy() for t in [start.shared_table, *start.private_tables.values()]]
    )
    acc["shared ⊕ privates, spectral start (untrained)"] = {
        lab: knn_accuracy(z0, labels[lab]) for lab in LABELS
    }
    # how well each encoder alone reproduces the stage-1 shared latent (R^2 over its dimensions), on the cells it was
    # trained on and on the held-out cells: a gap means the encoder memorises its training cells
    target = stage1["shared"]
    encoder_r2 = {}
    # embedding: the default, from every modality (the encoders' average, or the joint encoder)
    for m, est in {**shared_from, "embedding": blocks["shared"]}.items():
        encoder_r2[m] = {
            part: float(
                1
                - ((est - target)[sel] ** 2).sum()
                / ((target[sel] - target[sel].mean(0)) ** 2).sum()
            )
            for part, sel in (("training cells", ~held), ("held-out cells", held))
        }

    adt = np.asarray(mdata["protein"].X)
    adt_prop = adt / adt.sum(1, keepdims=True)
    truth = np.log1p(adt_prop[held] * 1e4)
    pred = model.predict_modality(source=["rna"], target="protein")
    r_venn = pearson_per_feature(np.log1p(pred[held] * 1e4), truth)
    x = mdata["rna"].X
    lognorm = np.log1p(np.asarray(x.multiply(1e4 / x.sum(1)).todense()))
    pcs = PCA(50, random_state=0).fit(lognorm[~held]).transform(lognorm)
    knn = KNeighborsRegressor(15).fit(pcs[~held], np.log1p(adt_prop[~held] * 1e4))
    r_knn = pearson_per_feature(knn.predict(pcs[held]), truth)
    proteins = list(mdata["protein"].var_names)
    row = {
        "config": CONFIGS[args.config],
        "epochs": [args.stage1_epochs, args.stage2_epochs],
        "train_seconds": train_s,
        "knn_accuracy": acc,
        "encoder_r2_shared": encoder_r2,
        "pearson_venncell": dict(zip(proteins, r_venn.tolist())),
        "refinement": refinement(model, mdata, held, labels, args.refine_epochs)
        if args.refine_epochs
        else None,
    }

    res = (
        json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    )
    res.setdefault("venncell", {})[f"{args.config}_e{args.stage1_epochs}_{args.stage2_epochs}"] = (
        row
    )
    res["pearson_knn_rna_pca"] = dict(zip(proteins, r_knn.tolist()))
    res["knn_accuracy_rna_pca"] = {lab: knn_accuracy(pcs, labels[lab]) for lab in LABELS}
    # why the spectral start keeps its components' spectrum: 16 PCs as they are vs whitened (unit variance each)
    pcs16 = pcs[:, :16]
    res["knn_accuracy_rna_pca16"] = {
        "as is": {lab: knn_accuracy(pcs16, labels[lab]) for lab in LABELS},
        "whitened": {lab: knn_accuracy(pcs16 / pcs16.std(0), labels[lab]) for lab in LABELS},
    }
    res["n_heldout"] = int(held.sum())
    tv = run_totalvi(
        mdata, held, args.totalvi_epochs, out, fits=tuple(args.totalvi_fits.split(","))
    )
    fits = args.totalvi_fits.split(",")
    res["totalvi"] = {
        "epochs": args.totalvi_epochs,
        "fits": fits,
        "epochs_run": [int(tv[f"epochs_{f}"]) for f in fits],
        "train_seconds": [float(tv[f"seconds_{f}"]) for f in fits],
        "knn_accuracy": {lab: knn_accuracy(tv["latent"], labels[lab]) for lab in LABELS},
        "pearson": dict(
            zip(
                proteins,
                pearson_per_feature(
                    np.log1p(tv["protein_hat"] / tv["protein_hat"].sum(1, keepdims=True) * 1e4),
                    truth,
                ).tolist(),
            )
        ),
    }
    tag = f"{args.config}_e{args.stage1_epochs}_{args.stage2_epochs}"
    if (
        args.main or res.get("main_config", tag) == tag
    ):  # else the first configuration written stays the main one
        res["main_config"] = tag
        res["command"] = (
            f"OMP_NUM_THREADS=1 python experiments/pbmc10k_cite/run.py --config {args.config} --stage1-epochs "
            f"{args.stage1_epochs} --stage2-epochs {args.stage2_epochs} --totalvi-epochs {args.totalvi_epochs} "
            f"--refine-epochs {args.refine_epochs} --totalvi-fits {args.totalvi_fits}"
        )
    (HERE / "results.json").write_text(json.dumps(res, indent=1))
    text = write_results(res, proteins)
    print(text)


def refinement(
    model: VennCell, mdata, held: np.ndarray, labels: pd.DataFrame, epochs: int
) -> dict:
    """Held-out cells embedded as if new (a MuData of just them): encoder only vs refined against the frozen
    decoders. kNN accuracy is 5-fold CV within the held-out cells (too few for Fine.RNA's rare classes to
    mean much)."""
    from venncell.train.refine import reconstruction_nll

    new = mdata[held].copy()
    data = model._data_for(new)
    out = {}
    for name, mods in (("rna+protein", None), ("rna only", ["rna"])):
        enc = model._embed(data, mods)
        t0 = time.perf_counter()
        ref = model.refine(new, modalities=mods, epochs=epochs)
        secs = time.perf_counter() - t0
        y = labels.loc[new.obs_names]
        for kind, lat in (("encoder", enc), ("refined", ref)):
            z = np.hstack([lat["shared"], lat["private:rna"], lat["private:protein"]])
            out[f"{name} / {kind}"] = {
                "nll": reconstruction_nll(model.module, data, lat, mods),
                "knn_shared": {lab: knn_accuracy(lat["shared"], y[lab]) for lab in LABELS},
                "knn_all": {lab: knn_accuracy(z, y[lab]) for lab in LABELS},
                "seconds": secs if kind == "refined" else 0.0,
            }
    out["epochs"] = epochs
    return out


CONFIG_HEADER = [
    "| configuration | settings | epochs (stage 1 / 2) | shared ⊕ privates Main.RNA | Fine.RNA | shared Main.RNA | "
    "Fine.RNA | stage-1 latents Main.RNA | Fine.RNA | RNA → ADT mean r | training min |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def write_results(res: dict, proteins: list[str]) -> str:
    main = res["venncell"][res["main_config"]]
    tv = res["totalvi"]
    L = [
        "# PBMC 10k CITE-seq (RNA 4,000 HVG + 14 ADT, 6,855 cells): VennCell next to totalVI\n",
        f"Command: `{res['command']}` (one thread each, on a shared 2-core machine; other rows of the configuration "
        "table come from the same command with `--config`/epochs changed; trained models and totalVI fits are cached "
        "in `experiments/pbmc10k_cite/run/`, gitignored).\n",
        f"Main VennCell row: `{res['main_config']}` (settings {main['config']}, stage-1/stage-2 epochs {main['epochs']}, "
        f"training {main['train_seconds'] / 60:.1f} min). totalVI (scvi-tools 1.4.2, defaults, max_epochs "
        f"{tv['epochs']}; epochs actually run with early stopping: {tv['epochs_run']}, "
        f"{sum(tv['train_seconds']) / 60:.1f} min for its fit(s) {tv['fits']}).\n",
        "Training minutes: wall time of the run that trained the model, one thread, with another job on the "
        "machine's second core. Every row of the configuration table is the same command with `--config` (and "
        "`--refine-epochs 0`: the refinement table is for the main row only).\n",
        *(
            [
                f"totalVI ran {tv['epochs']} epochs, not the issue's 100, and only its 'hidden' fit: one fit serves both "
                "tables, so in the kNN table its latent for the held-out 10 % of cells comes from RNA alone (VennCell's "
                "uses both modalities for every cell); `--totalvi-fits full,hidden` adds the separate all-proteins fit.\n"
            ]
            if tv["fits"] == ["hidden"] or tv["epochs"] < 100
            else []
        ),
        "## kNN label accuracy (k = 15, 5-fold CV, every labelled cell)\n",
        "| latent | Main.RNA | Fine.RNA |",
        "|---|---|---|",
    ]
    L += [
        f"| VennCell {b} | {a['Main.RNA']:.3f} | {a['Fine.RNA']:.3f} |"
        for b, a in main["knn_accuracy"].items()
    ]
    pca = res.get("knn_accuracy_rna_pca")
    L += [
        f"| totalVI latent (20 dims) | {tv['knn_accuracy']['Main.RNA']:.3f} | {tv['knn_accuracy']['Fine.RNA']:.3f} |",
        *(
            [
                f"| RNA PCA, 50 PCs of log-normalised RNA (reference; the labels were derived from RNA) | "
                f"{pca['Main.RNA']:.3f} | {pca['Fine.RNA']:.3f} |"
            ]
            if pca
            else []
        ),
        *[
            f"| RNA PCA, first 16 PCs, {k} | {a['Main.RNA']:.3f} | {a['Fine.RNA']:.3f} |"
            for k, a in res.get("knn_accuracy_rna_pca16", {}).items()
        ],
        "",
        f"## RNA → ADT on the {res['n_heldout']} held-out cells (Pearson of log-normalised values)\n",
        "VennCell: held-out cells are its validation cells (their data never reached the networks), protein "
        "predicted from RNA alone (shared latent from the RNA encoder → shared-only protein decoder). totalVI: the "
        "same cells' proteins set to zero in a batch of their own, which totalVI treats as unmeasured proteins; "
        "prediction = its denoised protein expression decoded in the measured batch. kNN: 15 neighbours in the "
        "50-PC space of log-normalised RNA, fitted on the training cells.\n",
        "| protein | VennCell | totalVI | kNN regression, RNA PCA |",
        "|---|---|---|---|",
    ]
    rv, rt, rk = (
        np.array([d[p] for p in proteins])
        for d in (main["pearson_venncell"], tv["pearson"], res["pearson_knn_rna_pca"])
    )
    L += [f"| {p} | {a:.3f} | {b:.3f} | {c:.3f} |" for p, a, b, c in zip(proteins, rv, rt, rk)]
    L += [f"| **mean** | **{rv.mean():.3f}** | **{rt.mean():.3f}** | **{rk.mean():.3f}** |", ""]
    L += [
        "## VennCell configurations tried (goal: shared ⊕ privates ≥ totalVI on both labels)\n",
        f"totalVI: Main.RNA {tv['knn_accuracy']['Main.RNA']:.3f}, Fine.RNA {tv['knn_accuracy']['Fine.RNA']:.3f}.\n",
        *CONFIG_HEADER,
    ]

    def config_row(tag: str, r: dict) -> str:
        a, s = r["knn_accuracy"]["shared ⊕ privates"], r["knn_accuracy"]["shared"]
        s1 = r["knn_accuracy"]["shared ⊕ privates, stage-1 latents"]
        return (
            f"| {tag} | {r['config']} | {r['epochs'][0]} / {r['epochs'][1]} | {a['Main.RNA']:.3f} | "
            f"{a['Fine.RNA']:.3f} | {s['Main.RNA']:.3f} | {s['Fine.RNA']:.3f} | {s1['Main.RNA']:.3f} | "
            f"{s1['Fine.RNA']:.3f} | {np.mean(list(r['pearson_venncell'].values())):.3f} | "
            f"{r['train_seconds'] / 60:.1f} |"
        )

    L += [config_row(tag, r) for tag, r in res["venncell"].items()]
    r2_rows = {
        tag: r["encoder_r2_shared"]
        for tag, r in res["venncell"].items()
        if "encoder_r2_shared" in r
    }
    if r2_rows:
        mods = list(dict.fromkeys(m for r2 in r2_rows.values() for m in r2))
        L += [
            "",
            "### How well each encoder alone reproduces the stage-1 shared latent\n",
            "R² over the shared dimensions of one modality's encoder estimate (`embedding`: the default embedding "
            "from every modality, the average of the encoders' estimates or the joint encoder's) against the "
            "stage-1 latents, on the cells stage 2 trained on and on the held-out cells. A large gap: the encoder "
            "memorises its training cells.\n",
            "| configuration | "
            + " | ".join(f"{m}: training cells | {m}: held-out cells" for m in mods)
            + " |",
            "|---|" + "---|---|" * len(mods),
        ]
        L += [
            f"| {tag} | "
            + " | ".join(
                f"{r2[m]['training cells']:.3f} | {r2[m]['held-out cells']:.3f}"
                if m in r2
                else "– | –"
                for m in mods
            )
            + " |"
            for tag, r2 in r2_rows.items()
        ]
    earlier = res.get("whitened_start")
    if earlier:
        start = (
            earlier.get("default_e100_40", {})
            .get("knn_accuracy", {})
            .get("shared ⊕ privates, spectral start (untrained)")
        )
        L += [
            "",
            "### With the earlier, whitened spectral start (commit d41f116)\n",
            "The same configurations with the earlier spectral start, every component whitened to unit variance. "
            "Whitening gives weak trailing components as much weight in every "
            "distance as the leading ones (see the kNN table's 16-PC rows), and training "
            "barely moves the latents from where they start"
            + (
                f" (this start alone scored {start['Main.RNA']:.3f} / {start['Fine.RNA']:.3f})"
                if start
                else ""
            )
            + ". Kept as measured.\n",
            *CONFIG_HEADER,
        ]
        L += [config_row(tag, r) for tag, r in earlier.items()]
    before = res.get("before_row_adam")
    if before:
        L += [
            "",
            "### Before the latent-optimiser fix (same data, 40 + 20 epochs)\n",
            "Run with torch's `SparseAdam` for the latent tables (commit 2f380da), which bias-corrects every row with the "
            "table's step count: a cell's row, updated once per epoch, then takes steps several times its learning "
            "rate and the latents drift out of their clusters (compare the kNN table's spectral-start row). "
            "`RowAdam` (per-row step counts) replaced it; these rows cannot be rerun with the current code and are "
            "kept as measured.\n",
            "| settings | latent lr | shared ⊕ privates Main.RNA | Fine.RNA | stage-1 latents Main.RNA | Fine.RNA | "
            "RNA → ADT mean r |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in before:
            a, s1 = r["acc"]["all"], r["acc"]["all_stage1"]
            L.append(
                f"| {r['kw']} | {r.get('train', {}).get('lr_latent', 0.05)} | {a['Main.RNA']:.3f} | {a['Fine.RNA']:.3f} | "
                f"{s1['Main.RNA']:.3f} | {s1['Fine.RNA']:.3f} | {r['rna_adt']:.3f} |"
            )
    ref = main.get("refinement")
    if ref:
        L += [
            "",
            f"## Test-time refinement of the held-out cells ({ref['epochs']} epochs, `model.refine`)\n",
            f"The {res['n_heldout']} held-out cells as a new MuData: encoder latents, then refined against the frozen "
            "decoders (stage-1 objective, networks frozen). NLL = mean per-feature negative log-likelihood of the full "
            "decoders without latent noise (lower is better) over the modalities that drive the refinement. kNN "
            "accuracy: 5-fold CV among the held-out cells only.\n",
            "| input / embedding | NLL rna | NLL protein | kNN shared Main | kNN shared Fine | kNN shared ⊕ privates Main | "
            "Fine | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, v in ref.items():
            if k == "epochs":
                continue
            n = v["nll"]
            L.append(
                f"| {k} | {n.get('rna', float('nan')):.4f} | {n.get('protein', float('nan')):.4f} | "
                f"{v['knn_shared']['Main.RNA']:.3f} | {v['knn_shared']['Fine.RNA']:.3f} | "
                f"{v['knn_all']['Main.RNA']:.3f} | {v['knn_all']['Fine.RNA']:.3f} | {v['seconds']:.0f} |"
            )
    text = "\n".join(L) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
