"""Attribution on PBMC 10k CITE-seq: which block (shared / private RNA / private protein) carries each protein
and each cell-type label. The model is run.py's `package` configuration (the package defaults; its cache is
reused), trained for the package's default epochs unless given.

Usage: python experiments/pbmc10k_cite/attribution.py [--stage1-epochs 100 --stage2-epochs 40]
Writes report.html + CSVs into experiments/pbmc10k_cite/run_attribution/ (not committed) and ATTRIBUTION.md here.
"""

from __future__ import annotations

import argparse

from run import HERE, load, train_or_load  # same folder

from venncell import VennCell
from venncell.cli.report import write_run_report
from venncell.train.config import default_epochs

MARKERS = [
    "protein:CD3",
    "protein:CD4",
    "protein:CD8a",
    "protein:CD14",
    "protein:CD16",
    "protein:CD19",
    "protein:CD56",
    "protein:CD45RA",
    "protein:CD45RO",
    "protein:CD127",
    "protein:CD25",
    "protein:PD-1",
    "protein:TIGIT",
    "protein:CD15",
    "Main.RNA",
    "Fine.RNA",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--stage1-epochs", type=int, default=None, help="default: the package's for these cells"
    )
    p.add_argument(
        "--stage2-epochs", type=int, default=None, help="default: the package's for these cells"
    )
    args = p.parse_args()
    mdata, labels = load()
    epochs = default_epochs(mdata.n_obs)
    args.stage1_epochs = args.stage1_epochs or epochs[0]
    args.stage2_epochs = args.stage2_epochs or epochs[1]
    for col in ("Main.RNA", "Fine.RNA"):
        mdata.obs[col] = labels[col].astype("category")
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    # run.py's `package` model for these epochs (trained there, or here if it is not cached yet)
    model, _ = train_or_load(
        mdata, "package", args.stage1_epochs, args.stage2_epochs, HERE / "run"
    )
    out = HERE / "run_attribution"
    res = write_run_report(model, out, markers=MARKERS, umap=False)
    m = res.markers
    cols = [
        c
        for c in m.columns
        if c not in ("marker", "kind", "n_cells", "note") and not c.endswith(("_lo", "_hi"))
    ]
    lines = [
        "# PBMC 10k CITE-seq: which block carries each protein and label\n",
        f"Command: `python experiments/pbmc10k_cite/attribution.py --stage1-epochs {args.stage1_epochs} "
        f"--stage2-epochs {args.stage2_epochs}`. A protein marker is probed from a shared latent embedded from "
        "RNA only (so its own ADT value cannot leak in); see `venncell.analysis.attribution`. The model: the "
        "package defaults, seed 0.\n",
        "| marker | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for i, row in m.iterrows():
        lines.append(
            f"| {row.get('marker', i)} | " + " | ".join(_fmt(row[c]) for c in cols) + " |"
        )
    mods = res.modalities.set_index("modality") if "modality" in res.modalities else res.modalities
    lines += [
        "",
        "## Explained variance per modality\n",
        "| modality | " + " | ".join(map(str, mods.columns)) + " |",
        "|---|" + "---|" * len(mods.columns),
    ]
    for name, row in mods.iterrows():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in row) + " |")
    (HERE / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.3f}"
    return str(v)


if __name__ == "__main__":
    main()
