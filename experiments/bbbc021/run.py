"""BBBC021 single-cell crops: DAPI vs tubulin/actin as two image modalities; which latent separates DMSO from
protein-synthesis inhibitors?

Usage: python experiments/bbbc021/run.py [--stage1-epochs N] [--stage2-epochs N] [--pool K] [--cache DIR]
(the model and training settings not given are the package defaults)
Data: ../shared/datasets/bbbc021_singlecell_crops_dmso_vs_protsynth (see its SOURCE.md); never copied into the
repository. The loader pools the 68 x 68 x 3 uint16 crops K x K (default 2 -> 34 x 34), takes log1p, and writes
one cells x 3 x H x W float32 store to --cache (outside the repo); the two modalities read channels of it lazily:
``dapi`` = channel 0 (DNA), ``cyto`` = channels 1-2 (tubulin, actin).

Probe: logistic regression on each standardised latent block, 5-fold GroupKFold with groups = source field (cells
of one image never sit on both sides of a split), accuracy and ROC AUC. Baseline: the same probe on PCA of the
same pooled log pixels. Writes RESULTS.md and results.json next to this script.
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
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from venncell import VennCell

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from baselines import write_results_md  # noqa: E402

DATA = HERE.parents[2] / "shared" / "datasets" / "bbbc021_singlecell_crops_dmso_vs_protsynth"
CHANNELS = {"dapi": [0], "cyto": [1, 2]}


def build_store(pool: int, cache: Path) -> tuple[Path, pd.DataFrame]:
    man = pd.read_csv(DATA / "manifest.csv")
    store = cache / f"bbbc021_log1p_pool{pool}.npy"
    if not store.exists():
        cache.mkdir(parents=True, exist_ok=True)
        x = np.stack([np.load(DATA / p) for p in man.path]).astype(np.float32)  # (n, 68, 68, 3)
        n, h, w, c = x.shape
        x = (
            x[:, : h // pool * pool, : w // pool * pool]
            .reshape(n, h // pool, pool, w // pool, pool, c)
            .mean((2, 4))
        )
        tmp = store.with_suffix(".tmp.npy")
        np.save(tmp, np.log1p(x).transpose(0, 3, 1, 2).astype(np.float32))
        tmp.rename(store)
    return store, man


def load(pool: int, cache: Path) -> tuple[md.MuData, pd.DataFrame, Path]:
    store, man = build_store(pool, cache)
    obs = pd.DataFrame(
        {"moa": man.moa.values, "field": man.field_id.values},
        index=[f"cell{i}" for i in range(len(man))],
    )
    mods = {
        m: ad.AnnData(np.zeros((len(obs), 0), dtype=np.float32), obs=obs.copy()) for m in CHANNELS
    }
    mdata = md.MuData(mods)
    mdata.obs = obs.copy()
    return mdata, man, store


def probe(z: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    res = cross_validate(
        clf, z, y, groups=groups, cv=GroupKFold(5), scoring=("accuracy", "roc_auc")
    )
    return {
        "accuracy": float(res["test_accuracy"].mean()),
        "accuracy_sd": float(res["test_accuracy"].std()),
        "auc": float(res["test_roc_auc"].mean()),
        "auc_sd": float(res["test_roc_auc"].std()),
    }


def main():
    p = argparse.ArgumentParser()
    # None: the package default
    p.add_argument("--stage1-epochs", type=int, default=None)
    p.add_argument("--stage2-epochs", type=int, default=None)
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--shared-dim", type=int, default=None)
    p.add_argument("--private-dim", type=int, default=None)
    p.add_argument("--cnn-channels", default=None, help="e.g. 8,16,32")
    p.add_argument(
        "--cache", default=str(HERE / "data"), help="where the pooled pixel store is built"
    )
    p.add_argument("--out", default=str(HERE / "run"))
    p.add_argument(
        "--build-only",
        action="store_true",
        help="only build the store and <cache>/bbbc021.h5mu (for `venncell-train experiment=bbbc021`)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    t_load = time.perf_counter()
    mdata, man, store = load(args.pool, Path(args.cache))
    VennCell.setup_mudata(
        mdata,
        modalities={
            m: {"kind": "image", "store": str(store), "channels": ch} for m, ch in CHANNELS.items()
        },
    )
    if (
        args.build_only
    ):  # the h5mu holds only obs and the store path; the pixels stay in the .npy store
        mdata.write(str(Path(args.cache) / "bbbc021.h5mu"))
        return
    given = {
        "shared_dim": args.shared_dim,
        "private_dim": args.private_dim,
        "cnn_channels": args.cnn_channels and [int(c) for c in args.cnn_channels.split(",")],
    }
    model = VennCell(mdata, seed=0, **{k: v for k, v in given.items() if v is not None})
    load_s = time.perf_counter() - t_load
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.train(
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs,
        run_dir=args.out,
        progress_bar="none",
    )
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0

    y = (man.moa.values != "DMSO").astype(int)
    groups = man.field_id.values
    blocks = {
        "shared": model.get_latent_representation(source="encoder"),
        "private: dapi": model.get_latent_representation(block="private:dapi", source="encoder"),
        "private: cyto (tubulin+actin)": model.get_latent_representation(
            block="private:cyto", source="encoder"
        ),
        "all (shared + privates)": model.get_latent_representation(block="all", source="encoder"),
        "shared, encoded from dapi alone": model.get_latent_representation(modalities=["dapi"]),
        "shared, encoded from cyto alone": model.get_latent_representation(modalities=["cyto"]),
    }
    rows = {name: probe(z, y, groups) | {"dim": z.shape[1]} for name, z in blocks.items()}
    pix = np.load(store, mmap_mode="r")
    for name, ch in {"all channels": [0, 1, 2], "dapi": [0], "cyto": [1, 2]}.items():
        x = np.asarray(pix[:, ch]).reshape(len(pix), -1)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        for k in (blocks["all (shared + privates)"].shape[1], 50):
            z = PCA(k, random_state=0).fit_transform(x)
            rows[f"baseline: PCA({k}) of pixels, {name}"] = probe(z, y, groups) | {"dim": k}

    results = {
        "args": vars(args),
        "n_cells": int(len(y)),
        "n_fields": int(len(set(groups))),
        "image_shape": {m: s.image_shape for m, s in model.specs.items()},
        "load_s": load_s,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "probe": rows,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    cmd = " ".join(
        ["python experiments/bbbc021/run.py"]
        + [
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("cache", "out", "build_only") and v is not None and (k, v) != ("pool", 2)
        ]
    )
    lines = [
        "# BBBC021: DMSO vs protein-synthesis inhibitors from DAPI vs tubulin/actin image latents",
        "",
        f"Command (2 CPU cores shared with other jobs, `OMP_NUM_THREADS=1`): `OMP_NUM_THREADS=1 {cmd}`",
        "",
        f"{len(y)} cells (1000 DMSO, 1000 protein-synthesis inhibitors) from {len(set(groups))} fields; crops pooled "
        f"{args.pool}x{args.pool} to {model.specs['dapi'].image_shape[1]}x{model.specs['dapi'].image_shape[2]} px, "
        "log1p, standardised per channel. Modalities: `dapi` (channel 0) and `cyto` (tubulin + actin, channels 1-2), "
        f"read lazily from one .npy store. VennCell (package defaults unless the command says otherwise): `{model!r}`, "
        f"{train_s / 60:.1f} min training wall time "
        f"({train_cpu_s / 60:.1f} min CPU time) "
        f"(+ {load_s:.0f} s loading and spectral init).",
        "",
        "Probe: logistic regression on standardised latents (stage-2 encoder latents of every cell), 5-fold "
        "GroupKFold with groups = source field; mean ± sd over folds. The model and the PCA baselines are "
        "unsupervised and fitted on all 2,000 cells (labels are used only by the probe).",
        "",
        "| latent | dim | accuracy | ROC AUC |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['dim']} | {r['accuracy']:.3f} ± {r['accuracy_sd']:.3f} | "
            f"{r['auc']:.3f} ± {r['auc_sd']:.3f} |"
        )
    write_results_md(HERE / "RESULTS.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
