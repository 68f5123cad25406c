"""Venn regions (issue #24): blocks shared by two of three modalities, on the built-in generator with pairwise
factors, next to today's shared + private model on the same data.

    python experiments/venn_regions/run.py

Data: ``make_synthetic(region_factors={"protein+rna": 2, "atac+rna": 2})`` -- the default 3,000 cells with RNA
(1000), protein (100) and ATAC (1000), 4 all-shared factors, 2 private factors per modality, and two pair
regions; the third pair (atac+protein) is empty. Models: every default, ``venn_regions="shared"`` (the default)
and ``"pairs"``. Scores: the recovery matrix (kNN R^2, 5-fold) of every true block (rows) from every learned
block of the encoder latents (columns). Then the attribution of each model (``model.attribution``) with the true
factors as ``.obs`` markers, each with the verdict it should get (``shared``, ``shared by <region>``, ``specific to
<m>``), and the size of every learned block. Writes RESULTS.md next to this file. Threads: the package's
default (``venncell.train.threads.auto_threads``: the free cores, at most 4), so it never oversubscribes a busy machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from venncell import VennCell, make_synthetic
from venncell.analysis.recovery import recovery_matrix, summarise_recovery
from venncell.train.threads import auto_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.baselines import markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
REGIONS = {"protein+rna": 2, "atac+rna": 2}


def _expected(block: str) -> str:
    if block == "shared":
        return "shared"
    kind, _, name = block.partition(":")
    return f"shared by {name}" if kind == "shared" else f"specific to {name}"


def true_markers(mdata, truth) -> dict[str, str]:
    """Every true factor as an .obs marker of ``mdata``; returns {marker: the verdict it should get}."""
    expected = {}
    for block, u in truth.blocks().items():
        for j in range(u.shape[1]):
            mdata.obs[f"true {block} {j}"] = u[:, j]
            expected[f"true {block} {j}"] = _expected(block)
    return expected


def _attribution(model, mdata, truth) -> list[str]:
    """Verdicts on the true factors (one .obs marker per factor) and the learned blocks' sizes."""
    expected = true_markers(mdata, truth)
    res = model.attribution(markers=list(expected), progress=False)
    got = res.markers.set_index("marker")
    rows = [["marker", "expected", "verdict", "best block", "best score"], ["---"] * 5]
    rows += [
        [k, v, got.loc[k, "verdict"], got.loc[k, "best_block"], f"{got.loc[k, 'best_score']:.2f}"]
        for k, v in expected.items()
    ]
    right = sum(got.loc[k, "verdict"] == v for k, v in expected.items())
    sizes = res.regions.round(3)
    size_rows = [list(sizes.columns), ["---"] * sizes.shape[1]]
    size_rows += [list(map(str, r)) for r in sizes.to_numpy()]
    return [
        f"Attribution (`model.attribution(markers=[true factors])`, defaults): {right} of {len(expected)} "
        "verdicts right.",
        "",
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
        "",
        "Learned blocks (`AttributionResult.regions`: mean EV of each member's features held by the block):",
        "",
        *("| " + " | ".join(r) + " |" for r in size_rows),
        "",
    ]


def main() -> None:
    threads = auto_threads()
    torch.set_num_threads(threads)
    lines = [
        "# Venn regions: blocks shared by some modalities but not all (issue #24)",
        "",
        "Command: `python experiments/venn_regions/run.py` (this page is written by it). Data and scores: the "
        "script's docstring. Rows: true blocks; columns: learned blocks (encoder latents); the diagonal is "
        "recovery, everything off it leakage. With region blocks the KL weight defaults to 1 (4 without): "
        "[KL_WEIGHT.md](KL_WEIGHT.md) compares the two over three seeds.",
        "",
    ]
    for rule in ("shared", "pairs"):
        mdata, truth = make_synthetic(region_factors=REGIONS)
        VennCell.setup_mudata(mdata)
        t0 = time.time()
        model = VennCell(mdata, seed=0, venn_regions=rule)
        model.train(progress_bar="none", run_dir=HERE / "runs" / rule)
        blocks = ["shared", *(f"shared:{r}" for r in model.module.regions)]
        blocks += [f"private:{m}" for m in model.specs]
        learned = {b: model.get_latent_representation(block=b, source="encoder") for b in blocks}
        mat = recovery_matrix(learned, truth.blocks())
        summary = summarise_recovery(mat)
        lines += [
            f'## `VennCell(mdata, venn_regions="{rule}")`',
            "",
            markdown_table(mat, "true \\ learned", lambda v: f"{v:.2f}"),
            "",
            ", ".join(f"{k} {v:.2f}" for k, v in summary.items()),
            "",
            f"({time.time() - t0:.0f} s to train and score, {threads} thread(s).)",
            "",
        ]
        t0 = time.time()
        lines += _attribution(model, mdata, truth)
        lines += [f"({time.time() - t0:.0f} s for the attribution.)", ""]
        print("\n".join(lines[-30:]), flush=True)
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
