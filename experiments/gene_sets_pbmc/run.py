"""Gene sets per Venn block on PBMC 10k CITE-seq RNA (issue #25): the default model's blocks and latent directions
tested against the bundled collections (GO Biological Process 2023, KEGG 2021 Human), offline.

    python experiments/gene_sets_pbmc/run.py

Model: the package defaults on ../shared/datasets/pbmc10k_cite_totalvi (skipped when absent), trained once and kept
in runs/pbmc/model (git ignores runs/); the measure-or-predict page's model (experiments/planner/runs/pbmc/model) is
reused when it exists, as it is the same default model on the same data. Enrichment: ``model.enrich_regions()``
with its defaults (over-representation of each ranking's top 100 RNA features among the model's RNA features,
Benjamini-Hochberg FDR). Writes RESULTS.md and top.csv (the terms with FDR <= 0.05) next to this file, and every
test to runs/terms.csv (large; git ignores it). Threads: 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.integration.datasets import DATASETS  # noqa: E402
from experiments.baselines import markdown_table  # noqa: E402
from venncell import VennCell  # noqa: E402

SAVED = [
    HERE / "runs" / "pbmc" / "model",
    ROOT / "experiments" / "planner" / "runs" / "pbmc" / "model",
]


def _trained(mdata) -> VennCell:
    VennCell.setup_mudata(mdata)
    for saved in SAVED:
        if saved.exists():
            return VennCell.load(saved, mdata)
    model = VennCell(mdata, seed=0)
    model.train(progress_bar="none", run_dir=HERE / "runs" / "pbmc")
    model.save(SAVED[0])
    return model


def _table(top: pd.DataFrame, n: int) -> str:
    top = top.groupby(["ranking", "collection"], sort=False).head(n)
    return markdown_table(
        pd.DataFrame(
            {
                "block / direction": top["ranking"],
                "collection": top["collection"],
                "term": top["term"],
                "overlap / size": top["overlap"].astype(str) + " / " + top["set_size"].astype(str),
                "fold": top["fold"].map("{:.1f}".format),
                "FDR": top["fdr"].map("{:.1e}".format),
                "genes (first 8)": top["genes"].map(lambda g: ", ".join(str(g).split(";")[:8])),
            }
        ).astype(str)
    )


def main() -> None:
    torch.set_num_threads(2)
    lines = [
        "# Gene sets per Venn block: PBMC 10k CITE-seq RNA (issue #25)",
        "",
        "Command: `python experiments/gene_sets_pbmc/run.py` (this page and top.csv are written by "
        "it; the script's docstring gives the model and the test). Collections: the two bundled with blitzgsea "
        "(`pip install 'venncell[genesets]'`), read from disk; nothing is downloaded.",
        "",
    ]
    ds = DATASETS["pbmc10k_cite"]
    if not ds.available():
        lines += ["Skipped: ../shared/datasets/pbmc10k_cite_totalvi is absent.", ""]
        (HERE / "RESULTS.md").write_text("\n".join(lines))
        return
    t0 = time.time()
    model = _trained(ds.load())
    res = model.enrich_regions()
    (HERE / "runs").mkdir(exist_ok=True)  # absent when the planner's model is reused
    res.terms.to_csv(HERE / "runs" / "terms.csv", index=False)
    res.top.to_csv(HERE / "top.csv", index=False)
    top = res.top
    blocks = top[~top["ranking"].str.contains(" PC")]
    directions = top[top["ranking"].str.contains(" PC")]
    n_rna = len(model.specs["rna"].features)
    lines += [
        f"RNA features tested: {n_rna} (the model's). Terms with some overlap: {len(res.terms)} "
        "(ranking, term) pairs; "
        f"{len(top)} rows pass FDR <= {res.config.fdr} (at most {res.config.n_terms} per ranking).",
        "",
        *(f"Note: {n}" for n in res.notes),
        "",
        "## Blocks: the top 100 features by explained variance held (top 5 terms per collection)",
        "",
        _table(blocks, 5) if len(blocks) else "No term passes the FDR threshold.",
        "",
        "## Latent directions: the top 100 features by correlation with each end (top 2 terms per collection)",
        "",
        _table(directions, 2) if len(directions) else "No term passes the FDR threshold.",
        "",
        f"({time.time() - t0:.0f} s, attribution included, 2 threads.)",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
