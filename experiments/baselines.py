"""Scoring, baselines and page writing shared by the experiment scripts: one implementation, so every results
table uses the same kNN protocol, the same PCA / LSI baselines and the same markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

SEED = 0


def knn_accuracy(z: np.ndarray, y: np.ndarray) -> float:
    """kNN (k = 15) accuracy, 5-fold stratified CV."""
    cv = StratifiedKFold(5, shuffle=True, random_state=SEED)
    with (
        warnings.catch_warnings()
    ):  # rare classes have < 5 members; StratifiedKFold warns and still splits
        warnings.simplefilter("ignore", UserWarning)
        return float(cross_val_score(KNeighborsClassifier(15), z, y, cv=cv).mean())


def pca_rna(counts, n: int = 30) -> np.ndarray:
    """PCA of log-normalised counts (cp10k)."""
    a = ad.AnnData(counts.copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=n, random_state=SEED)
    return a.obsm["X_pca"]


def lsi_atac(counts, n: int = 30) -> np.ndarray:
    """TF-IDF of the binarised features + truncated SVD; the first component tracks sequencing depth and is
    dropped (as in Signac)."""
    tfidf = TfidfTransformer(norm="l1").fit_transform((counts > 0).astype(np.float32))
    z = TruncatedSVD(n + 1, random_state=SEED).fit_transform(np.log1p(tfidf * 1e4))[:, 1:]
    return (z - z.mean(0)) / z.std(0)


def unit(z: np.ndarray) -> np.ndarray:
    """Unit total variance, so neither block dominates a concatenation."""
    z = z - z.mean(0)
    return z / np.sqrt((z**2).sum(1).mean())


def epochs_of(run_dir: Path) -> str:
    import yaml

    t = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())["trainer"]
    size = t["batch_size"] or "chosen from the number of cells (the default)"
    if t["stage1_epochs"] is None or t["stage2_epochs"] is None:
        return f"the default epochs for the number of cells, batch size {size}"
    return f"{t['stage1_epochs']} stage-1 + {t['stage2_epochs']} stage-2 epochs, batch size {size}"


HAND_WRITTEN = (
    "<!-- Written by hand below this line: the script keeps it when it rewrites the tables above; "
    "check its numbers against them after a rerun. -->"
)


def markdown_table(df, corner: str | None = None, fmt=str) -> str:
    """``df`` as a GitHub markdown table (pandas' ``to_markdown`` needs tabulate, which VennCell does not depend on).

    ``corner``: also the index, as the first column under this heading; ``fmt``: how each cell is written.
    """
    head = [] if corner is None else [corner]
    rows = [[*head, *df.columns], ["---"] * (len(head) + df.shape[1])]
    for i, r in zip(df.index, df.to_numpy().tolist()):
        rows.append([*([] if corner is None else [i]), *(fmt(v) for v in r)])
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


def write_results_md(path, generated: str) -> None:
    """Write a script's RESULTS.md: its generated tables, then the existing file's hand-written part (everything
    from the ``HAND_WRITTEN`` line on), so that rerunning the script does not erase the discussion."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(HAND_WRITTEN) :] if HAND_WRITTEN in old else ""
    path.write_text(generated.rstrip("\n") + "\n" + ("\n" + kept if kept else ""))


def child_result(args: list[str], tag: str, cwd=None):
    """Runs ``python <args>`` with one thread and returns the JSON it printed on the line starting with ``tag``:
    how the experiment scripts run each job in a process of its own (its imports and thread settings apart)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith(tag))[len(tag) :])
