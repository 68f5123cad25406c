"""Partial pairing on real data: PBMC 10k CITE-seq with the proteins of half of the cells removed.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python experiments/partial_pairing/run.py [--fraction 0.5] [--seed 0] [--tag now]

The MuData keeps RNA for every cell and proteins for a random half (``--fraction`` = the share of cells that lose
them). VennCell trains on what each cell has (the package defaults), next to the same model on the fully paired
data. Scored on the cells that lost their proteins ("RNA-only cells") and on the others:
- kNN label accuracy (k = 15, 5-fold stratified CV within each group) of shared ⊕ RNA-private, the blocks every
  cell has;
- the RNA-only cells' removed proteins predicted from their RNA (Pearson per protein of log-normalised values,
  mean over the 14 proteins), against the values that were removed.

``--tag`` names the row; results accumulate in ``results.json`` (one row per tag), so the same script run with an
older package on ``PYTHONPATH`` adds a "before" row. Data: ../shared/datasets/pbmc10k_cite_totalvi, read by
path through experiments/pbmc10k_cite/run.py's loader, never copied here. Runs go to the gitignored ``run/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mudata as md
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
EXP = HERE.parent
sys.path.insert(0, str(EXP / "pbmc10k_cite"))
sys.path.insert(0, str(EXP))
import run as pbmc  # noqa: E402  (experiments/pbmc10k_cite/run.py: loader and kNN protocol)
from baselines import write_results_md  # noqa: E402

LABELS = pbmc.LABELS


def _train(mdata, seed: int, folder: Path):
    from venncell import VennCell

    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    model = VennCell(mdata, seed=seed)
    model.train(run_dir=folder, progress_bar="none")
    return model


def _knn(model, labels, groups: dict[str, np.ndarray]) -> dict:
    z = np.hstack(
        [
            model.get_latent_representation(source="encoder"),
            model.get_latent_representation(block="private:rna", source="encoder"),
        ]
    )
    return {
        g: {lab: pbmc.knn_accuracy(z[cells], labels[lab].iloc[cells]) for lab in LABELS}
        for g, cells in groups.items()
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="now")
    p.add_argument(
        "--skip-paired",
        action="store_true",
        help="reuse the fully paired row already in results.json",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md from results.json, train nothing",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.report_only:
        write_results_md(
            HERE / "RESULTS.md", _markdown(json.loads((HERE / "results.json").read_text()))
        )
        return
    import venncell

    full, labels = pbmc.load()
    n = full.n_obs
    rng = np.random.default_rng(args.seed)
    lost = np.zeros(n, bool)
    lost[rng.permutation(n)[: int(round(args.fraction * n))]] = True
    partial = md.MuData({"rna": full["rna"].copy(), "protein": full["protein"][~lost].copy()})
    assert (partial.obs_names == full.obs_names).all()  # same cell order: the groups index both
    groups = {"RNA-only cells": np.flatnonzero(lost), "paired cells": np.flatnonzero(~lost)}

    out = HERE / "results.json"
    res = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    t0 = time.perf_counter()
    model = _train(partial, args.seed, HERE / "run" / f"{args.tag}_s{args.seed}")
    seconds = time.perf_counter() - t0
    adt = np.asarray(full["protein"].X)
    truth = np.log1p(adt / adt.sum(1, keepdims=True) * 1e4)[lost]

    def protein_r(m) -> float:
        """Mean Pearson of the RNA-only cells' removed proteins, predicted from their RNA."""
        pred = m.predict_modality(source=["rna"], target="protein")[lost]
        return float(np.mean(pbmc.pearson_per_feature(np.log1p(pred * 1e4), truth)))

    res["rows"][args.tag] = {
        "package": venncell.__file__,
        "knn": _knn(model, labels, groups),
        "rna_only_protein_r": protein_r(model),
        "seconds": seconds,
    }
    if not args.skip_paired or "fully paired" not in res["rows"]:
        paired = _train(full.copy(), args.seed, HERE / "run" / f"paired_s{args.seed}")
        # in-sample for this model (it was trained on these proteins): kept in results.json, not in the table
        res["rows"]["fully paired"] = {
            "knn": _knn(paired, labels, groups),
            "rna_only_protein_r": protein_r(paired),
        }
    res.update(fraction=args.fraction, seed=args.seed, n_lost=int(lost.sum()), n_cells=n)
    out.write_text(json.dumps(res, indent=1))
    write_results_md(HERE / "RESULTS.md", _markdown(res))
    print((HERE / "RESULTS.md").read_text())


def _markdown(res: dict) -> str:
    lines = [
        "# Partial pairing on real data: PBMC 10k CITE-seq with half of the cells' proteins removed\n",
        f"Command: `OMP_NUM_THREADS=1 python experiments/partial_pairing/run.py --fraction {res['fraction']} "
        f"--seed {res['seed']} --tag now` (from the repository root). {res['n_lost']:,} of {res['n_cells']:,} "
        "cells keep only their RNA; the model trains on what each cell has (the package defaults). The fully "
        "paired row is the same model trained with every cell's proteins, scored on the same cells. Rows of "
        "earlier runs are kept as they were measured (their settings in the row's name).\n",
        "kNN label accuracy (k = 15, 5-fold stratified CV within each group) of shared ⊕ RNA-private (encoder "
        "latents); RNA → protein: the RNA-only cells' removed proteins predicted from their RNA, mean Pearson "
        "over the 14 proteins (log-normalised).\n",
        "| model | RNA-only cells: Main.RNA | Fine.RNA | paired cells: Main.RNA | Fine.RNA | RNA-only cells: RNA → "
        "protein r |",
        "|---|---|---|---|---|---|",
    ]
    current = [t for t in ("now", "fully paired") if t in res["rows"]]  # this run's rows first
    for tag in current + [t for t in res["rows"] if t not in current]:
        row = res["rows"][tag]
        k = row["knn"]
        lines.append(
            f"| {tag} | {k['RNA-only cells']['Main.RNA']:.3f} | {k['RNA-only cells']['Fine.RNA']:.3f} | "
            f"{k['paired cells']['Main.RNA']:.3f} | {k['paired cells']['Fine.RNA']:.3f} | "
            + (
                f"{row['rna_only_protein_r']:.3f}"
                if not tag.startswith("fully paired")
                else "– (it was trained on these proteins)"
            )
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
