"""Recovery matrix: how well each learned latent block predicts each true factor block.

Entry (true block T, learned block L) is the cross-validated R^2 of predicting T from L. The diagonal
(shared from shared, private_m from private_m) is recovery; everything off it is leakage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from venncell.analysis.probes import cv_r2


def recovery_matrix(
    learned: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    probe: str = "knn",
    n_folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows: true blocks; columns: learned blocks; values: CV R^2, each over the cells that have the learned block
    (a private block is NaN where a cell lacks its modality: those cells know nothing of it to score)."""
    rows = {}
    for t_name, t in truth.items():
        rows[t_name] = {}
        known = np.isfinite(np.asarray(t, dtype=float).reshape(len(t), -1)).all(1)
        for name, z in learned.items():
            have = np.isfinite(z).all(1) & known
            rows[t_name][name] = (
                cv_r2(z[have], t[have], probe, n_folds, seed)
                if have.sum() > n_folds
                else float("nan")
            )
    return pd.DataFrame(rows).T.loc[list(truth), list(learned)]


def summarise_recovery(mat: pd.DataFrame) -> dict[str, float]:
    """Headline numbers: shared/private recovery and the worst leakage in each direction."""
    # a learned private block with no true one (or the reverse) has no recovery to report
    privs = [c for c in mat.columns if c.startswith("private:") and c in mat.index]
    out = {"shared_recovery": float(mat.loc["shared", "shared"])}
    for p in privs:
        out[f"{p}_recovery"] = float(mat.loc[p, p])
    out["min_private_recovery"] = (
        min(out[f"{p}_recovery"] for p in privs) if privs else float("nan")
    )
    # private factors leaking into shared, and shared factors leaking into privates
    out["leak_private_into_shared"] = (
        float(max(mat.loc[p, "shared"] for p in privs)) if privs else float("nan")
    )
    out["leak_shared_into_private"] = (
        float(max(mat.loc["shared", p] for p in privs)) if privs else float("nan")
    )
    cross = [mat.loc[p, q] for p in privs for q in privs if p != q]
    out["leak_private_into_other_private"] = float(max(cross)) if cross else float("nan")
    # Venn regions (true blocks "shared:<region>"): each by its own learned block, and the worst true block read
    # from any other learned block
    regions = [r for r in mat.index if r.startswith("shared:")]
    for r in regions:
        out[f"{r}_recovery"] = float(mat.loc[r, r]) if r in mat.columns else float("nan")
    if regions:
        out["min_region_recovery"] = min(out[f"{r}_recovery"] for r in regions)
        out["leak_max"] = float(
            max(mat.loc[t, c] for t in mat.index for c in mat.columns if c != t)
        )
    return out


def evaluate_recovery(
    learned: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    n_folds: int = 5,
    seed: int = 0,
    max_cells: int | None = None,
) -> dict:
    """Both probes, matrices and summaries, JSON-ready. ``max_cells``: score a random subset of that many cells
    (drawn by ``seed``) when there are more; the kNN probe's cost grows faster than the cells."""
    n = len(next(iter(truth.values())))
    if max_cells is not None and n > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
        learned = {k: v[keep] for k, v in learned.items()}
        truth = {k: v[keep] for k, v in truth.items()}
    out = {}
    for probe in ("knn", "linear"):
        mat = recovery_matrix(learned, truth, probe, n_folds, seed)
        out[probe] = {"matrix": mat.round(4).to_dict(), "summary": summarise_recovery(mat)}
    return out
