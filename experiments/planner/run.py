"""Measure or predict (issue #25): the planner's verdicts against synthetic ground truth, and PBMC 10k CITE-seq's
per-protein table (which of the 14 proteins RNA predicts), both with the package defaults.

    python experiments/planner/run.py                 # synthetic default, then PBMC if ../shared has it
    python experiments/planner/run.py --only synthetic

Writes RESULTS.md next to this file, plus the summary CSVs and PBMC's protein table (the synthetic per-feature
tables go to runs/, which git ignores). Trained models are kept in runs/<name>/model and reused.
Threads: the package's default (``auto_threads``).

Ground truth on synthetic data: ``var["true_driver"]`` says which features read only shared factors (their
answer is "predict") and which only the modality's private factors ("measure"). The other features read both;
for them an oracle gives the answer: the cross-validated kNN R^2 of the feature from the *true* shared factors
over that from all true factors the modality sees, "predict" when >= 0.5 (the planner's threshold).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.integration.datasets import DATASETS  # noqa: E402
from experiments.baselines import markdown_table  # noqa: E402
from venncell import VennCell, make_synthetic  # noqa: E402
from venncell.analysis.plan_report import ci_text, summary_frame  # noqa: E402
from venncell.analysis.probes import cv_r2  # noqa: E402
from venncell.train.threads import auto_threads  # noqa: E402

# the package's default: the free cores (at most 4), so a busy machine is not oversubscribed
THREADS = auto_threads()


def _normalised(mdata, m) -> np.ndarray:
    x = mdata[m].X
    x = np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float64)
    return x if m == "atac" else x / x.sum(1, keepdims=True)


def oracle_verdicts(mdata, truth, m, cells) -> pd.Series:
    """The answer for every feature from the true factors: kNN R^2 from shared over kNN R^2 from all."""
    y = _normalised(mdata, m)[cells]
    shared = truth.shared[cells]
    every = np.hstack([shared, truth.private[m][cells]])
    out = {}
    for j, f in enumerate(mdata[m].var_names):
        r_all = cv_r2(every, y[:, j], probe="knn")
        r_shared = cv_r2(shared, y[:, j], probe="knn")
        out[f] = "predict" if r_all > 0 and r_shared / r_all >= 0.5 else "measure"
    return pd.Series(out)


def synthetic(lines: list[str]) -> None:
    t0 = time.time()
    mdata, truth = (
        make_synthetic()
    )  # the built-in default: 3,000 cells, RNA 1000 / protein 100 / ATAC 1000
    model = _trained(mdata, "synthetic")
    plan = model.plan_measurements()
    plan.summary.to_csv(HERE / "synthetic_summary.csv", index=False)
    cells = np.flatnonzero(~model.is_train)
    rows = []
    for m, df in plan.features.items():
        df.to_csv(HERE / "runs" / f"synthetic_features_{m}.csv")  # large: kept out of git
        driver = mdata[m].var.loc[df.index, "true_driver"].astype(str)
        oracle = oracle_verdicts(mdata, truth, m, cells).loc[df.index]
        pure = driver.isin(["shared", "private"])
        truth_pure = np.where(driver[pure] == "shared", "predict", "measure")
        both = driver == "both"
        rows.append(
            {
                "modality": m,
                "features": len(df),
                "pure-driver features": int(pure.sum()),
                "right (pure)": f"{(df.loc[pure, 'verdict'].to_numpy() == truth_pure).mean():.3f}",
                "right vs oracle (mixed)": f"{(df.loc[both, 'verdict'] == oracle[both]).mean():.3f}",
                "right vs oracle (all)": f"{(df['verdict'] == oracle).mean():.3f}",
                "median recoverable: shared / mixed / private": " / ".join(
                    f"{df.loc[driver == d, 'recoverable'].median():.2f}"
                    for d in ("shared", "both", "private")
                ),
            }
        )
    lines += [
        "## Synthetic default: verdicts against the ground truth",
        "",
        "`make_synthetic()` (3,000 cells; RNA 1000, protein 100, ATAC 1000 features), `VennCell(mdata, seed=0)` "
        f"with every default, then `model.plan_measurements()` on the {plan.n_cells} {plan.cells} cells. A fifth "
        "of each modality's features read only shared factors (answer: predict), a fifth only the private ones "
        "(answer: measure); the rest read both, and for them the oracle of the script's docstring gives the answer.",
        "",
        markdown_table(pd.DataFrame(rows).astype(str)),
        "",
        "Per modality, from each subset of the others (recoverable: mean R² predicted / mean of the better of R² "
        "measured and R² predicted, over the features the model explains; lost = 1 - recoverable):",
        "",
        *_section_end(plan, t0),
    ]


def pbmc(lines: list[str]) -> None:
    ds = DATASETS["pbmc10k_cite"]
    if not ds.available():
        lines += [
            "## PBMC 10k CITE-seq",
            "",
            "Skipped: ../shared/datasets/pbmc10k_cite_totalvi is absent.",
            "",
        ]
        return
    t0 = time.time()
    mdata = ds.load()
    model = _trained(mdata, "pbmc")
    plan = model.plan_measurements(targets="protein")
    df = plan.features["protein"]
    df.to_csv(HERE / "pbmc_features_protein.csv")
    plan.summary.to_csv(HERE / "pbmc_summary.csv", index=False)
    show = pd.DataFrame(
        {
            "rank": df["rank"],
            "verdict": df["verdict"],
            "R² from RNA [95% CI]": ci_text(df, "r2_predicted", 3),
            "Pearson r from RNA": df["pearson_from_rna"].map("{:.3f}".format),
            "R² measured": df["r2_measured"].map("{:.3f}".format),
            "recoverable [95% CI]": ci_text(df, "recoverable"),
        },
        index=df.index,
    )
    lines += [
        "## PBMC 10k CITE-seq: which of the 14 proteins RNA predicts",
        "",
        f"`VennCell(mdata, seed=0)` with every default on the harness's PBMC MuData (6,855 cells, 4,000 genes, 14 "
        f'proteins), then `model.plan_measurements(targets="protein")` on the {plan.n_cells} {plan.cells} cells. '
        "Scale: protein proportions of the cell's total ADT counts.",
        "",
        markdown_table(show.reset_index().astype(str)),
        "",
        *_section_end(plan, t0),
    ]


def _section_end(plan, t0: float) -> list[str]:
    """A section's last lines: the per-modality summary and the section's time."""
    return [
        _summary_md(plan.summary),
        "",
        f"({time.time() - t0:.0f} s for this section with {THREADS} thread(s); training is skipped when "
        "runs/<name>/model holds the trained model.)",
        "",
    ]


def _trained(mdata, name: str) -> VennCell:
    """The default model on ``mdata``, trained once and kept in runs/<name>/model for reruns of the page."""
    VennCell.setup_mudata(mdata)
    saved = HERE / "runs" / name / "model"
    if saved.exists():
        return VennCell.load(saved, mdata)
    model = VennCell(mdata, seed=0)
    model.train(progress_bar="none", run_dir=HERE / "runs" / name)
    model.save(saved)
    return model


def _summary_md(s: pd.DataFrame) -> str:
    return markdown_table(summary_frame(s).astype(str))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["synthetic", "pbmc"])
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    lines = [
        "# Measure or predict: the planner against ground truth (issue #25)",
        "",
        "Command: `python experiments/planner/run.py` (written by it; the rule behind the verdicts is in "
        "`venncell/analysis/planner.py`).",
        "",
    ]
    if args.only in (None, "synthetic"):
        synthetic(lines)
    if args.only in (None, "pbmc"):
        pbmc(lines)
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
